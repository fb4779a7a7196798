"""DNS lookups cannot starve anyone: a real DNS server on loopback that never answers some
names, a real streamer that asks it (through its /etc/resolv.conf, as in production, or through
JIOMOSA_DNS_SERVERS), and creates of good hosts and IP literals that must not notice."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from fakedns import FakeDns
from helpers import PAGE_HOST, Api, PageServer, StreamerProcess

from jiomosa.browser.fetchguard import MAX_LOOKUPS, RequestGuard
from jiomosa.core import dns, executors
from jiomosa.core.tasks import TaskSet
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected

GOOD = "good.test"
BLACK_HOLE = "black.test"  # every name under it goes unanswered
STREAMER_DNS = ("127.0.0.153", 53)  # a resolv.conf nameserver has no port: 53 it is


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    server = FakeDns({GOOD: [PAGE_HOST], "private.test": ["10.0.0.1", PAGE_HOST]},
                     silent={BLACK_HOLE}).start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- the resolver
@pytest.fixture
async def resolver(fake_dns: FakeDns) -> AsyncIterator[dns.Resolver]:
    res = dns.Resolver(dns.DnsConfig(servers=(fake_dns.address,), timeout=1.0,
                                     max_lookups=4, max_ttl=30.0, negative_ttl=2.0))
    yield res
    await res.close()


async def test_black_holed_names_do_not_hold_up_a_good_one(fake_dns: FakeDns) -> None:
    """Twelve never-answered lookups in flight (the review's twelve creates): a good name is
    answered at once; no thread waits on the black holes."""
    resolver = dns.Resolver(dns.DnsConfig(servers=(fake_dns.address,), timeout=3.0))
    try:
        holes = [asyncio.create_task(resolver.resolve(f"h{i}.{BLACK_HOLE}"))
                 for i in range(12)]
        deadline = time.monotonic() + 5
        while len(fake_dns.queries) < 12:
            assert time.monotonic() < deadline, fake_dns.queries
            await asyncio.sleep(0.01)
        start = time.monotonic()
        good = await resolver.resolve(GOOD)
        assert [str(ip) for ip in good] == [PAGE_HOST]
        assert time.monotonic() - start < 1.0
        assert not any(h.done() for h in holes)
        assert await asyncio.gather(*holes) == [[]] * 12
    finally:
        await resolver.close()


async def test_a_timed_out_lookup_frees_its_slot(
        resolver: dns.Resolver, fake_dns: FakeDns) -> None:
    """Every slot held by a black hole: once their timeout passes the slots are free, though
    c-ares may still be retrying (a thread in getaddrinfo stayed busy for glibc's 10 s)."""
    slots = resolver.config.max_lookups
    holes = [asyncio.create_task(resolver.resolve(f"s{i}.{BLACK_HOLE}")) for i in range(slots)]
    assert await asyncio.gather(*holes) == [[]] * slots
    start = time.monotonic()
    assert [str(ip) for ip in await resolver.resolve(GOOD)] == [PAGE_HOST]
    assert time.monotonic() - start < 0.5


async def test_answers_are_cached_by_ttl_and_lookups_coalesced(
        resolver: dns.Resolver, fake_dns: FakeDns) -> None:
    results = await asyncio.gather(*(resolver.resolve(GOOD) for _ in range(20)))
    assert all([str(ip) for ip in r] == [PAGE_HOST] for r in results)
    await resolver.resolve(GOOD)
    await resolver.resolve("missing.test")
    await resolver.resolve("missing.test")
    # getaddrinfo asks A and AAAA: one lookup is two queries.
    assert fake_dns.queries[GOOD] == 2
    assert fake_dns.queries["missing.test"] == 2


async def test_a_timed_out_lookup_is_remembered_briefly(
        resolver: dns.Resolver, fake_dns: FakeDns) -> None:
    name = f"once.{BLACK_HOLE}"
    start = time.monotonic()
    assert await resolver.resolve(name) == []
    assert time.monotonic() - start < resolver.config.timeout + 1.0
    asked = fake_dns.queries[name]
    start = time.monotonic()
    assert await resolver.resolve(name) == []  # from the negative cache
    assert time.monotonic() - start < 0.2 and fake_dns.queries[name] == asked


async def test_hosts_file_names_still_resolve(resolver: dns.Resolver) -> None:
    assert "127.0.0.1" in [str(ip) for ip in await resolver.resolve("localhost")]


async def test_the_policy_uses_the_configured_servers(fake_dns: FakeDns) -> None:
    dns.configure(dns.DnsConfig(servers=(fake_dns.address,), timeout=1.0))
    try:
        policy = UrlPolicy.from_allow_list([PAGE_HOST])
        await policy.check(f"http://{GOOD}/")
        with pytest.raises(UrlRejected, match="private"):
            await policy.check("http://private.test/")
        with pytest.raises(UrlRejected, match="does not resolve"):
            await policy.check(f"http://x.{BLACK_HOLE}/")
    finally:
        await dns.shutdown()
        dns.configure(dns.DnsConfig())


async def test_one_browser_has_few_lookups_in_flight(fake_dns: FakeDns) -> None:
    """A page asking for many never-answered names waits behind its own lookups (the guard's
    bound), leaving the shared lookup slots to the other sessions."""
    dns.configure(dns.DnsConfig(servers=(fake_dns.address,), timeout=2.0))
    guard = RequestGuard(None, UrlPolicy(), TaskSet("test"), lambda _url: None)  # type: ignore[arg-type]
    try:
        checks = [asyncio.ensure_future(guard.allowed(f"http://p{i}.{BLACK_HOLE}/"))
                  for i in range(3 * MAX_LOOKUPS)]
        deadline = time.monotonic() + 5
        while len(fake_dns.queries) < MAX_LOOKUPS:
            assert time.monotonic() < deadline, fake_dns.queries
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the first lookups are still waiting for their answer
        assert len(fake_dns.queries) == MAX_LOOKUPS
        assert await asyncio.gather(*checks) == [False] * (3 * MAX_LOOKUPS)
    finally:
        await dns.shutdown()
        dns.configure(dns.DnsConfig())


def test_dns_servers_setting() -> None:
    from jiomosa.core.settings import Settings, SettingsError

    s = Settings.from_env({"JIOMOSA_DNS_SERVERS": "127.0.0.1:5353, [::1]:53,10.0.0.2"})
    assert s.dns_servers == ("127.0.0.1:5353", "[::1]:53", "10.0.0.2")
    with pytest.raises(SettingsError, match="JIOMOSA_DNS_SERVERS"):
        Settings.from_env({"JIOMOSA_DNS_SERVERS": "dns.example"})
    with pytest.raises(SettingsError, match="JIOMOSA_DNS_TIMEOUT"):
        Settings.from_env({"JIOMOSA_DNS_TIMEOUT": "0"})


# --------------------------------------------------------------------------- executors
async def test_one_kind_of_blocking_work_cannot_starve_another() -> None:
    pools = executors.Executors({"jpeg": 1, "browser": 1})
    gate = threading.Event()
    try:
        stuck = [asyncio.ensure_future(pools.run("jpeg", gate.wait, 30)) for _ in range(4)]
        start = time.monotonic()
        assert await asyncio.wait_for(pools.run("browser", lambda: "started"), 5) == "started"
        assert time.monotonic() - start < 2.0
    finally:
        gate.set()
        await asyncio.gather(*stuck)
        pools.shutdown()


async def test_executors_refuse_work_after_shutdown() -> None:
    pools = executors.Executors({"jpeg": 1})
    pools.shutdown()
    with pytest.raises(RuntimeError):
        await pools.run("jpeg", lambda: None)


# --------------------------------------------------------------------------- end to end
class NamespacedStreamer(StreamerProcess):
    """The streamer with its own /etc/resolv.conf (a private mount namespace), so that the
    system resolver path is what is tested: the default, and the one today's code uses."""

    resolv_conf: Path

    def command(self) -> list[str]:
        return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                str(self.resolv_conf), *super().command()]


@pytest.fixture
def streamer_dns() -> Iterator[FakeDns]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root (port 53, a mount namespace)")
    server = FakeDns({GOOD: [PAGE_HOST]}, silent={BLACK_HOLE}, host=STREAMER_DNS[0],
                     port=STREAMER_DNS[1]).start()
    yield server
    server.stop()


@pytest.mark.browser
async def test_creates_of_black_holed_hosts_starve_nobody(
        tmp_path: Path, pages: PageServer, streamer_dns: FakeDns) -> None:
    """The review: twelve creates with never-answering hosts made a good host's create fail
    with "does not resolve" and an IP-literal create go from 0.17 s to 1.97 s."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {STREAMER_DNS[0]}\n")
    proc = NamespacedStreamer({"JIOMOSA_WARM_BROWSERS": "2", "JIOMOSA_MAX_SESSIONS": "4"},
                              log_dir=tmp_path)
    proc.resolv_conf = resolv
    proc.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, proc.base)
            literal = pages.url("/static")

            async def warm_pool_full() -> None:
                """Creates are timed with a warm browser waiting, as in production: what is
                measured is the policy and the proxy, not a browser's boot."""
                deadline = time.monotonic() + 30
                while True:
                    async with http.get(proc.base + "/health") as r:
                        if (await r.json())["warm_browsers"] >= 2:
                            return
                    assert time.monotonic() < deadline, "the warm pool did not refill"
                    await asyncio.sleep(0.1)

            async def timed_create(url: str) -> tuple[int, dict[str, object], float]:
                start = time.monotonic()
                status, data = await api.call("POST", "/api/session/create", {"url": url})
                return status, data, time.monotonic() - start

            await warm_pool_full()
            status, data, baseline = await timed_create(literal)
            assert status == 201, data
            await api.close(str(data["session_id"]))

            # Twelve creates with never-answered names in flight all along (a new name each
            # time one gives up), while a good name and an IP literal are created.
            stop = asyncio.Event()
            flooded: list[tuple[int, dict[str, object], float]] = []

            async def flood(slot: int) -> None:
                n = 0
                while not stop.is_set():
                    flooded.append(await timed_create(f"http://h{slot}-{n}.{BLACK_HOLE}/"))
                    n += 1

            holes = [asyncio.create_task(flood(i)) for i in range(12)]
            deadline = time.monotonic() + 10
            while len([n for n in streamer_dns.queries if n.endswith(BLACK_HOLE)]) < 6:
                assert time.monotonic() < deadline, streamer_dns.queries
                await asyncio.sleep(0.05)

            status, data, good = await timed_create(f"http://{GOOD}:{pages.port}/static")
            assert status == 201, data
            assert await api.title(str(data["session_id"])) == "static"
            await api.close(str(data["session_id"]))

            await warm_pool_full()
            status, data, during = await timed_create(literal)
            assert status == 201, data
            await api.close(str(data["session_id"]))
            print(f"IP-literal create: {baseline:.2f} s alone, {during:.2f} s among holes; "
                  f"good name: {good:.2f} s", file=sys.stderr)
            # Loose on purpose (a shared 2-core machine): the review saw +1.8 s.
            assert during < baseline + 1.0, (baseline, during)

            stop.set()
            await asyncio.gather(*holes)
            assert len(flooded) >= 12
            for status, data, _ in flooded:
                assert status == 400 and "does not resolve" in str(data), data
    finally:
        proc.stop()
