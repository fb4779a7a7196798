"""Pure logic of the abuse limits (issue #13): token buckets on a fake clock, buckets per key in
bounded memory, message limits and strikes, live connections, distinct re-encode qualities,
client addresses behind trusted proxies, API keys, the settings, and the session manager's
quotas (over tests/fakes.py browsers, in-process). The same limits against a real streamer:
tests/test_ratelimits.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBrowsers, settings

from jiomosa.core import apikeys
from jiomosa.core.apikeys import KeySource, Unauthorized, load_api_keys, offered_key
from jiomosa.core.errors import SessionError, status_of
from jiomosa.core.guard import Guard
from jiomosa.core.limits import (
    ConnectionCounter,
    KeyedLimiter,
    MessageLimit,
    Quota,
    RateLimited,
    RecentQualities,
    TokenBucket,
    client_address,
    parse_networks,
    retry_after,
)
from jiomosa.core.settings import Settings, SettingsError
from jiomosa.core.types import Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.sessions.manager import SessionManager

KEY_A = "a" * 16 + "-secret-key-of-alpha-0123456789"
KEY_B = "b" * 40


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- buckets
def test_token_bucket_burst_rate_and_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token grows back in 1/rate s
    assert bucket.take(0.25) == pytest.approx(0.25)  # a refused take takes nothing
    assert bucket.take(0.5) == 0.0
    assert not bucket.full(0.5)
    assert bucket.full(10.0)  # never more than the burst saved up
    assert [bucket.take(10.0) for _ in range(4)][-1] > 0
    empty = TokenBucket(0.0, 1, 0.0)
    assert empty.take(0.0) == 0.0  # a new bucket starts full
    assert empty.take(100.0) == float("inf")  # rate 0: never refills


@pytest.mark.parametrize("wait,header", [(0.001, 1), (0.99, 1), (1.0, 1), (1.01, 2),
                                         (29.5, 30), (120.0, 120)])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header
    assert RateLimited("x", wait).retry_after == header
    assert status_of(RateLimited("slow down", wait)) == (429, "slow down",
                                                        {"retry_after": header})


def test_keyed_limiter_keeps_keys_apart_and_memory_bounded() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=2, max_keys=100)
    assert limiter.take("a", 0.0) == 0.0 and limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == pytest.approx(1.0)
    assert limiter.take("b", 0.0) == 0.0  # another client has its own bucket
    # A flood of distinct addresses: memory stays at the cap...
    for n in range(50_000):
        limiter.take(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1.0)
        assert len(limiter) <= 100
    # ... and once they are quiet their buckets (full again) go as new keys come.
    for n in range(300):
        limiter.take(f"later-{n}", 100.0 + n)
    assert len(limiter) <= 3


def test_keyed_limiter_evicting_forgives_never_refuses() -> None:
    """Past the cap the least recently used bucket goes: its key starts afresh (allowed);
    nobody is refused because of other keys."""
    limiter = KeyedLimiter(rate=0.01, burst=1, max_keys=10)
    assert limiter.take("victim", 0.0) == 0.0
    for n in range(100):
        assert limiter.take(f"flood-{n}", 0.0) == 0.0
    assert limiter.take("victim", 0.0) == 0.0


def test_keyed_limiter_disabled() -> None:
    limiter = KeyedLimiter(rate=0.0, burst=1, max_keys=10)
    assert not limiter.enabled
    assert all(limiter.take("a", 0.0) == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_message_limit_tells_then_closes_a_flooder() -> None:
    limit = MessageLimit(rate=10.0, burst=5, strikes=3, now=0.0)
    assert [limit.check(0.0) for _ in range(5)] == [(0.0, False)] * 5
    told = [limit.check(0.0) for _ in range(3)]
    assert all(wait > 0 and not close for wait, close in told)
    wait, close = limit.check(0.0)
    assert wait > 0 and close  # the fourth refusal: flooding
    # One message too many each second is told each time, never closed: strikes grow back
    # one a second.
    fresh = MessageLimit(rate=5.0, burst=5, strikes=3, now=0.0)
    for t in range(60):
        assert [fresh.check(float(t))[0] for _ in range(5)] == [0.0] * 5
        wait, close = fresh.check(float(t))
        assert wait > 0 and not close
    never = MessageLimit(rate=1.0, burst=1, strikes=0, now=0.0)
    assert all(not never.check(0.0)[1] for _ in range(1000))


def test_connection_counter() -> None:
    counter = ConnectionCounter(max_per_key=2)
    counter.open("1.2.3.4", "c1")
    assert not counter.full("1.2.3.4")
    counter.open("1.2.3.4", "c2")
    assert counter.full("1.2.3.4") and not counter.full("1.2.3.5")
    counter.close("c1")
    counter.close("c1")  # twice: nothing more
    counter.close("unknown")
    assert counter.count("1.2.3.4") == 1
    counter.close("c2")
    assert len(counter) == 0 and counter._keys == {}  # nothing kept for idle addresses
    assert not ConnectionCounter(0).full("x")


# ----------------------------------------------------------------------------- qualities
def test_recent_qualities_snap_a_cycling_client() -> None:
    window = RecentQualities(max_distinct=2)
    free = {80}
    served = [window.choose(q, 0.0, free) for q in range(10, 90)]
    assert served[:2] == [10, 11]
    assert set(served) == {10, 11, 80}  # 78 requests, 2 re-encodes
    assert window.choose(40, 0.5, free) == 11  # nearest in use
    assert window.choose(70, 0.5, free) == 80  # nearest is the source: no encode at all
    assert window.choose(45, 0.5, free) == 11 and window.choose(46, 0.5, free) == 80
    assert window.choose(60, 0.5, {80, 60}) == 60  # already encoded: free to serve
    assert window.choose(10, 0.9, free) == 10  # in use: refreshed
    # A second later the unused quality is forgotten: another may take its place.
    assert window.choose(50, 1.5, free) == 50  # 11 was last asked 1.5 s ago
    assert window.choose(51, 1.5, free) == 50  # 10 is still in use (asked at 0.9)
    assert not window.idle(2.0) and window.idle(3.0)


def test_recent_qualities_ties_go_to_the_smaller_image() -> None:
    window = RecentQualities(max_distinct=2)
    window.choose(20, 0.0, {80})
    window.choose(40, 0.0, {80})
    assert window.choose(30, 0.0, {80}) == 20


def test_guard_frame_quality_counts_per_session() -> None:
    clock = Clock()
    guard = Guard(settings(frame_qualities=1), clock)
    assert guard.frame_quality("s1", 30, {80}) == 30
    assert guard.frame_quality("s1", 50, {80, 30}) == 30  # nearest of in-use/encoded
    assert guard.frame_quality("s2", 50, {80}) == 50  # another session
    assert guard.frame_quality("s1", 80, {80}) == 80
    clock.now += 1.5
    assert guard.frame_quality("s1", 50, {80}) == 50
    # A quality in use keeps its place while it is asked for, also when it is already encoded
    # (else a client cycling qualities would take it from a steady poller every second).
    clock.now += 0.9
    assert guard.frame_quality("s1", 50, {80, 50}) == 50
    clock.now += 0.9
    assert guard.frame_quality("s1", 60, {80}) == 50
    off = Guard(settings(frame_qualities=0), clock)
    assert [off.frame_quality("s", q, {80}) for q in range(10, 80)] == list(range(10, 80))


# ----------------------------------------------------------------------------- addresses
TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.4/32"])


@pytest.mark.parametrize("peer,xff,client", [
    ("203.0.113.7", None, "203.0.113.7"),
    ("203.0.113.7", "198.51.100.1", "203.0.113.7"),  # an untrusted peer claims nothing
    ("10.1.2.3", "198.51.100.1", "198.51.100.1"),  # the ingress says who it is
    ("10.1.2.3", None, "10.1.2.3"),
    ("10.1.2.3", "1.1.1.1, 198.51.100.1", "198.51.100.1"),  # the client's own entry ignored
    ("10.1.2.3", "198.51.100.1, 10.9.9.9", "198.51.100.1"),  # two trusted proxies
    ("10.1.2.3", "10.5.5.5, 10.9.9.9", "10.5.5.5"),  # only proxies: the farthest
    ("10.1.2.3", "198.51.100.1, not-an-ip", "10.1.2.3"),  # garbage from a proxy: stop
    ("10.1.2.3", "[2001:db8::1]:443", "2001:db8::/64"),
    ("10.1.2.3", "198.51.100.1:5555", "198.51.100.1"),
    ("2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),  # IPv6: one /64, one client
    ("2001:db8:1:2:bbbb::9", None, "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.9", None, "203.0.113.9"),
    (None, "198.51.100.1", "unknown"),
])
def test_client_address(peer: str | None, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, TRUSTED) == client


def test_client_address_without_trusted_proxies_is_the_peer() -> None:
    assert client_address("10.1.2.3", "198.51.100.1", ()) == "10.1.2.3"
    guard = Guard(settings(trusted_proxies=("127.0.0.4/32",)))
    assert guard.address("127.0.0.4", ["198.51.100.1", "198.51.100.2"]) == "198.51.100.2"


# ----------------------------------------------------------------------------- API keys
def keys_json(*entries: dict[str, Any]) -> str:
    return json.dumps(list(entries))


def test_api_keys_parse_and_match_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    sha_b = hashlib.sha256(KEY_B.encode()).hexdigest()
    keys = load_api_keys(keys_json(
        {"name": "alpha", "key": KEY_A, "max_sessions": 2, "creates_per_minute": 6,
         "create_burst": 3},
        {"name": "beta", "sha256": sha_b.upper()}), "")
    alpha, beta = keys
    assert (alpha.max_sessions, alpha.creates_per_minute, alpha.create_burst) == (2, 6.0, 3)
    assert (beta.max_sessions, beta.creates_per_minute, beta.create_burst) == (0, 0.0, 5)
    assert KEY_A not in repr(keys) and alpha.digest.hex() not in repr(keys)
    ring = apikeys.KeyRing(keys)
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", counting)
    assert ring.match(KEY_A) is alpha
    assert ring.match(KEY_B) is beta
    assert ring.match(KEY_A + "x") is None and ring.match(None) is None
    assert ring.match("\udcff" * 40) is None  # a header that is not UTF-8
    assert len(compared) == 2 * 4  # every digest compared, whichever key (if any) matched


@pytest.mark.parametrize("entries,fragment", [
    ("not json", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('{"name": "x"}', "non-empty JSON list"),
    (keys_json({"name": "x", "key": "short"}), "key must be 32-512"),
    (keys_json({"name": "x"}), "either key or sha256"),
    (keys_json({"name": "x", "key": KEY_A, "sha256": "0" * 64}), "either key or sha256"),
    (keys_json({"name": "x", "sha256": "xyz"}), "sha256 must be 64 hex"),
    (keys_json({"name": "bad name!", "key": KEY_A}), "name must be"),
    (keys_json({"name": "x", "key": KEY_A, "max_session": 1}), "unknown field 'max_session'"),
    (keys_json({"name": "x", "key": KEY_A, "max_sessions": -1}), "max_sessions"),
    (keys_json({"name": "x", "key": KEY_A, "max_sessions": 1.5}), "max_sessions"),
    (keys_json({"name": "x", "key": KEY_A, "creates_per_minute": "6"}), "creates_per_minute"),
    (keys_json({"name": "x", "key": KEY_A}, {"name": "x", "key": KEY_B}), "used twice"),
    (keys_json({"name": "x", "key": KEY_A}, {"name": "y", "key": KEY_A}), "same key"),
])
def test_bad_api_keys_stop_the_service_at_start(entries: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment) as caught:
        Settings.from_env({"JIOMOSA_API_KEYS": entries})
    assert "JIOMOSA_API_KEYS" in str(caught.value)
    assert KEY_A not in str(caught.value) and KEY_B not in str(caught.value)


def test_offered_key() -> None:
    assert offered_key(f"Bearer {KEY_A}", None) == KEY_A
    assert offered_key(f"bearer   {KEY_A} ", None) == KEY_A
    assert offered_key(None, f" {KEY_B} ") == KEY_B
    assert offered_key(f"Bearer {KEY_A}", KEY_B) == KEY_B  # X-API-Key wins (admin may be set)
    assert offered_key(f"Basic {KEY_A}", None) is None
    assert offered_key("Bearer ", "") is None and offered_key(None, None) is None


def test_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(keys_json({"name": "alpha", "key": KEY_A}))
    source = KeySource("", str(path), now=0.0)
    assert source.enabled and source.ring(0.0).match(KEY_A) is not None
    path.write_text(keys_json({"name": "beta", "key": KEY_B}))
    os.utime(path, ns=(1, 10**18))
    assert source.ring(1.0).match(KEY_A) is not None  # not looked at again before RECHECK
    ring = source.ring(apikeys.RECHECK + 1)
    assert ring.match(KEY_A) is None and ring.match(KEY_B) is not None
    # A broken or emptied file keeps the keys that were good: never opens creates.
    path.write_text("[")
    os.utime(path, ns=(1, 2 * 10**18))
    assert source.ring(2 * apikeys.RECHECK + 2).match(KEY_B) is not None
    path.write_text("[]")
    os.utime(path, ns=(1, 3 * 10**18))
    assert source.ring(3 * apikeys.RECHECK + 3).match(KEY_B) is not None
    path.unlink()
    assert source.ring(4 * apikeys.RECHECK + 4).match(KEY_B) is not None
    assert not KeySource("", "", 0.0).enabled


def test_inline_and_file_keys_together(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(keys_json({"name": "beta", "key": KEY_B}))
    s = Settings.from_env({"JIOMOSA_API_KEYS": keys_json({"name": "alpha", "key": KEY_A}),
                           "JIOMOSA_API_KEYS_FILE": str(path)})
    assert KEY_A not in repr(s)  # the inline keys never show in a repr (or a log of it)
    ring = KeySource(s.api_keys, s.api_keys_file, 0.0).ring(0.0)
    alpha, beta = ring.match(KEY_A), ring.match(KEY_B)
    assert alpha is not None and alpha.name == "alpha"
    assert beta is not None and beta.name == "beta"
    path.write_text(keys_json({"name": "alpha", "key": KEY_B}))
    with pytest.raises(SettingsError, match="used twice"):
        Settings.from_env({"JIOMOSA_API_KEYS": keys_json({"name": "alpha", "key": KEY_A}),
                           "JIOMOSA_API_KEYS_FILE": str(path)})


# ----------------------------------------------------------------------------- the guard
def test_guard_creates_with_keys() -> None:
    clock = Clock()
    guard = Guard(settings(api_keys=keys_json(
        {"name": "alpha", "key": KEY_A, "max_sessions": 2, "creates_per_minute": 60,
         "create_burst": 2},
        {"name": "beta", "key": KEY_B})), clock)
    with pytest.raises(Unauthorized, match="API key is required") as no_key:
        guard.admit_create("1.2.3.4", None, None)
    assert no_key.value.status == 401
    with pytest.raises(Unauthorized, match="not valid"):
        guard.admit_create("1.2.3.4", "Bearer " + KEY_A[:-1], None)
    quota = guard.admit_create("1.2.3.4", "Bearer " + KEY_A, None)
    assert quota == Quota("key:alpha", 2, "API key 'alpha'")
    guard.admit_create("5.6.7.8", None, KEY_A)  # a key's limits follow it, not an address
    with pytest.raises(RateLimited, match="API key 'alpha' may create 60") as limited:
        guard.admit_create("1.2.3.4", "Bearer " + KEY_A, None)
    assert limited.value.retry_after == 1
    clock.now += 1.0
    guard.admit_create("1.2.3.4", "Bearer " + KEY_A, None)
    # beta: no rate, no quota; anonymous limits do not apply to keyed creates
    for _ in range(100):
        assert guard.admit_create("1.2.3.4", None, KEY_B).max_sessions == 0


def test_guard_anonymous_creates_per_address() -> None:
    clock = Clock()
    guard = Guard(settings(creates_per_minute=2, create_burst=2, sessions_per_address=3), clock)
    assert guard.admit_create("1.2.3.4", None, None) == Quota("address:1.2.3.4", 3,
                                                             "address 1.2.3.4")
    guard.admit_create("1.2.3.4", f"Bearer {KEY_A}", None)  # no keys configured: ignored
    with pytest.raises(RateLimited) as limited:
        guard.admit_create("1.2.3.4", None, None)
    assert limited.value.retry_after == 30 and limited.value.status == 429
    guard.admit_create("1.2.3.5", None, None)  # another address
    clock.now += 30
    guard.admit_create("1.2.3.4", None, None)


def test_guard_connections_and_messages() -> None:
    clock = Clock()
    guard = Guard(settings(connections_per_address=2, connects_per_minute=60, connect_burst=3,
                           messages_per_second=2, message_burst=2, flood_strikes=1), clock)
    for n in range(2):
        guard.check_connection("a")
        guard.connection_opened("a", f"c{n}")
    with pytest.raises(Exception) as full:
        guard.check_connection("a")
    assert status_of(full.value)[0] == 429 and "retry_after" not in status_of(full.value)[2]
    guard.connection_closed("c0")
    guard.check_connection("a")  # the third of the burst
    with pytest.raises(RateLimited):
        guard.check_connection("a")
    limit = guard.message_limit()
    assert [guard.check_message(limit)[0] for _ in range(2)] == [0.0, 0.0]
    assert guard.check_message(limit)[0] > 0
    assert guard.check_message(limit)[1] is True
    assert guard.message_refused(0.2) == {
        "message": "too many messages: at most 2 a second; retry in 1 s", "retry_after": 1}
    assert Guard(settings(messages_per_second=0)).message_limit() is None


def test_guard_input_per_session() -> None:
    clock = Clock()
    guard = Guard(settings(input_per_second=10, input_burst=3), clock)
    for _ in range(3):
        guard.admit_input("s1")
    with pytest.raises(RateLimited, match="at most 10 a second"):
        guard.admit_input("s1")
    guard.admit_input("s2")
    clock.now += 0.1
    guard.admit_input("s1")


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("var,value", [
    ("JIOMOSA_CREATES_PER_MINUTE", "-1"), ("JIOMOSA_CREATES_PER_MINUTE", "nan"),
    ("JIOMOSA_CREATE_BURST", "0"), ("JIOMOSA_SESSIONS_PER_ADDRESS", "-1"),
    ("JIOMOSA_INPUT_PER_SECOND", "inf"), ("JIOMOSA_INPUT_BURST", "0"),
    ("JIOMOSA_FRAME_QUALITIES", "82"), ("JIOMOSA_CONNECTIONS_PER_ADDRESS", "-2"),
    ("JIOMOSA_CONNECTS_PER_MINUTE", "-0.5"), ("JIOMOSA_CONNECT_BURST", "0"),
    ("JIOMOSA_MESSAGES_PER_SECOND", "1e9"), ("JIOMOSA_MESSAGE_BURST", "0"),
    ("JIOMOSA_FLOOD_STRIKES", "-1"), ("JIOMOSA_RATE_LIMIT_KEYS", "10"),
    ("JIOMOSA_TRUSTED_PROXIES", "10.0.0.0/8,ingress"), ("JIOMOSA_API_KEYS_FILE", "/nonexistent"),
    ("JIOMOSA_INPUT_BURST", "many"),
])
def test_bad_limit_settings_name_their_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_limit_settings_defaults_and_off() -> None:
    s = Settings()
    assert (s.creates_per_minute, s.create_burst, s.sessions_per_address) == (10.0, 5, 3)
    assert (s.input_per_second, s.input_burst, s.frame_qualities) == (60.0, 120, 4)
    assert (s.connections_per_address, s.connects_per_minute, s.connect_burst) == (32, 60.0, 20)
    assert (s.messages_per_second, s.message_burst, s.flood_strikes) == (100.0, 200, 50)
    off = Settings.from_env({v: "0" for v in (
        "JIOMOSA_CREATES_PER_MINUTE", "JIOMOSA_SESSIONS_PER_ADDRESS", "JIOMOSA_INPUT_PER_SECOND",
        "JIOMOSA_FRAME_QUALITIES", "JIOMOSA_CONNECTIONS_PER_ADDRESS",
        "JIOMOSA_CONNECTS_PER_MINUTE", "JIOMOSA_MESSAGES_PER_SECOND", "JIOMOSA_FLOOD_STRIKES")})
    guard = Guard(off)
    for _ in range(500):
        guard.admit_create("a", None, None)
        guard.admit_input("s")
        guard.check_connection("a")
    assert Settings.from_env({"JIOMOSA_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8"}
                             ).trusted_proxies == ("10.0.0.0/8", "fd00::/8")


# ----------------------------------------------------------------------------- quotas
async def _manager(**overrides: Any) -> SessionManager:
    fb = FakeBrowsers()
    manager = SessionManager(settings(**{"max_sessions": 5, **overrides}), fb,
                             UrlPolicy.from_allow_list([]), fb.attach, "s1")
    await manager.start()
    return manager


async def test_quota_counts_live_sessions_of_its_tag() -> None:
    manager = await _manager()
    try:
        alpha = Quota("key:alpha", 2, "API key 'alpha'")
        other = Quota("address:1.2.3.4", 1, "address 1.2.3.4")
        vp = Viewport(320, 240)
        a1 = await manager.create(None, vp, None, alpha)
        await manager.create(None, vp, None, alpha)
        with pytest.raises(SessionError) as over:
            await manager.create(None, vp, None, alpha)
        assert over.value.status == 429
        assert "API key 'alpha' already holds 2 live sessions" in over.value.message
        assert over.value.extra == {"max_sessions": 2}
        await manager.create(None, vp, None, other)  # another creator: its own count
        await manager.create(None, vp, None, Quota("key:none", 0, "API key 'none'"))
        await manager.create(None, vp, None)  # no quota at all
        assert manager.quota_used("key:alpha") == 2
        await manager.close(a1.id)
        assert manager.quota_used("key:alpha") == 1
        assert a1.id not in manager.quota_tags
        await manager.create(None, vp, None, alpha)
    finally:
        await manager.stop()


async def test_concurrent_creates_cannot_pass_a_quota_together() -> None:
    manager = await _manager(max_sessions=10)
    try:
        quota = Quota("address:1.2.3.4", 3, "address 1.2.3.4")
        results = await asyncio.gather(
            *(manager.create(None, Viewport(320, 240), None, quota) for _ in range(8)),
            return_exceptions=True)
        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, SessionError) and r.status == 429]
        assert (len(made), len(refused)) == (3, 5)
        assert manager.quota_used(quota.tag) == 3
    finally:
        await manager.stop()
