"""In-process tests of the session manager and the streaming event table.

No browser, no subprocess, no network: ``tests/fakes.py`` stands in for Chromium (FakeBrowsers
hands out FakeBrowser leases and attaches FakePages) and for a client's socket (FakeTransport).
Everything here runs in well under a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fakes import FakeBrowsers, FakePage, FakeTransport, settings

from jiomosa.core import validation as v
from jiomosa.core.errors import INTERNAL_ERROR, BadRequest, ClientError, SessionError, status_of
from jiomosa.core.settings import Settings
from jiomosa.core.types import BrowserEndpoint, BrowserStartError, SessionState, Viewport
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected
from jiomosa.frames.pacer import Subscriber
from jiomosa.sessions.manager import SessionManager
from jiomosa.sessions.session import LocalSession, Page, Session, Share
from jiomosa.transports import events

PUBLIC_URL = "http://93.184.216.34/"  # an IP literal: the policy decides without DNS
OTHER_PUBLIC_URL = "http://93.184.216.35/next"
VIEWPORT = Viewport(320, 240)


# ======================================================================= helpers
async def eventually(predicate: Callable[[], bool], timeout: float = 2.0,
                     what: str = "condition") -> None:
    """Wait until ``predicate()`` holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.002)


class FakeChannel:
    """``events.ClientChannel`` for tests: sends are recorded, frames go to a FakeTransport,
    ``subscribe`` may name any session (like Socket.IO)."""

    def __init__(self, manager: SessionManager, encoding: str = "binary",
                 extra: dict[str, Any] | None = None) -> None:
        self.id = "ch-" + secrets.token_hex(4)
        self.settings: Settings = manager.settings
        self.default_encoding = encoding
        self.subscribe_extra: dict[str, Any] = dict(extra or {})
        self.sub: Subscriber | None = None
        self.subscribed_to: Session | None = None
        self.grant: Share | None = None
        self.sent: list[tuple[str, Any, bool]] = []
        self.manager = manager
        self._transport = FakeTransport()
        # A send of this event waits for ``gate`` (to open a race window); ``blocked`` is set
        # once it waits.
        self.block_on: str | None = None
        self.gate = asyncio.Event()
        self.blocked = asyncio.Event()

    @property
    def transport(self) -> FakeTransport:
        return self._transport

    async def send(self, event: str, data: Any, reply: bool = True) -> None:
        if event == self.block_on:
            self.blocked.set()
            await self.gate.wait()
        self.sent.append((event, data, reply))

    async def target(self, payload: dict[str, Any]) -> tuple[Session, Share | None]:
        return await self.manager.lookup(v.string(payload, "session_id", 128)), None

    async def input_session(self) -> Session:
        if self.sub is None or self.subscribed_to is None:
            raise SessionError("not subscribed to a session (send subscribe first)")
        return await self.manager.lookup(self.subscribed_to.id)

    # --------------------------------------------------------------- reading what was sent
    def names(self) -> list[str]:
        return [event for event, _, _ in self.sent]

    def of(self, event: str) -> list[Any]:
        return [data for name, data, _ in self.sent if name == event]

    def last(self, event: str) -> Any:
        found = self.of(event)
        assert found, f"no {event!r} sent; sent: {self.names()}"
        return found[-1]

    def clear(self) -> None:
        self.sent.clear()


class Rig:
    """A started manager over FakeBrowsers, a record of close notifications and the channels
    that close notifications are fanned out to (as ``sio.StreamServer`` does)."""

    def __init__(self, manager: SessionManager, browsers: FakeBrowsers) -> None:
        self.m = manager
        self.fb = browsers
        self.channels: list[FakeChannel] = []
        self.closed: list[dict[str, Any]] = []
        manager.on_closed(self._record)
        manager.on_closed(self._fan_out)

    async def _record(self, session: Session, reason: str) -> None:
        self.closed.append({"id": session.id, "reason": reason, "state": session.state,
                            "subscribers": len(session.hub.subscribers)})

    async def _fan_out(self, session: Session, reason: str) -> None:
        for ch in list(self.channels):
            await events.session_closed(ch, session, reason)

    def channel(self, **kwargs: Any) -> FakeChannel:
        ch = FakeChannel(self.m, **kwargs)
        self.channels.append(ch)
        return ch

    async def create(self, session_id: str | None = None, url: str | None = None
                     ) -> LocalSession:
        return await self.m.create(session_id, VIEWPORT, url)

    def page(self, session: Session) -> FakePage:
        return self.fb.page_of(session)

    def running_browsers(self) -> list[str]:
        return [url for url, b in self.fb.by_url.items() if not b.quit]


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[RigFactory]:
    """Build started rigs (settings overrides as keywords); every one is stopped afterwards."""
    made: list[Rig] = []

    async def make(browsers: FakeBrowsers | None = None, **overrides: Any) -> Rig:
        fb = browsers or FakeBrowsers()
        manager = SessionManager(settings(**{"max_sessions": 2, **overrides}), fb,
                                 UrlPolicy.from_allow_list([]), fb.attach, "s1")
        await manager.start()
        rig = Rig(manager, fb)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.m.stop()
    for rig in made:
        for ch in rig.channels:
            await events.unsubscribe(ch)


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()


class FailingAttach(FakeBrowsers):
    """Every browser it hands out cannot be attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def attach(self, endpoint: BrowserEndpoint, policy: UrlPolicy,
                     viewport: Viewport) -> Page:
        self.attempts += 1
        raise ConnectionError(f"cannot reach {endpoint.cdp_url}")


class GatedAttach(FakeBrowsers):
    """Attach waits for ``gate`` (``attaching`` is set once it waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.attaching = asyncio.Event()

    async def attach(self, endpoint: BrowserEndpoint, policy: UrlPolicy,
                     viewport: Viewport) -> Page:
        self.attaching.set()
        await self.gate.wait()
        return await super().attach(endpoint, policy, viewport)


# ======================================================================= manager: create
async def test_create_gives_a_random_192_bit_id_and_a_ready_session_with_a_frame(
        rig: Rig) -> None:
    a = await rig.create()
    b = await rig.create()
    for s in (a, b):
        assert len(s.id) == 32
        assert len(base64.urlsafe_b64decode(s.id)) == 24  # 192 bits of token_urlsafe(24)
        assert s.state == SessionState.READY and s.error is None
        assert s.owner == "s1"
        assert rig.m.sessions[s.id] is s
        frame = s.hub.latest
        assert frame is not None and frame.seq == 1
        assert frame.jpeg[:2] == b"\xff\xd8" and (frame.width, frame.height) == (320, 240)
        assert rig.page(s).quality == rig.m.settings.default_quality  # screencast started
    assert a.id != b.id
    assert rig.m.live_count() == 2


async def test_create_keeps_a_client_proposed_id(rig: Rig) -> None:
    s = await rig.create("my-session_1.a:b")
    assert s.id == "my-session_1.a:b"
    assert await rig.m.lookup("my-session_1.a:b") is s


async def test_create_with_a_url_navigates_first(rig: Rig) -> None:
    s = await rig.create(url=PUBLIC_URL)
    assert s.page_info == {"title": f"title of {PUBLIC_URL}", "url": PUBLIC_URL}
    assert rig.page(s).browser.url == PUBLIC_URL


async def test_duplicate_id_is_400_and_changes_nothing(rig: Rig) -> None:
    first = await rig.create("dup")
    with pytest.raises(SessionError) as caught:
        await rig.create("dup")
    assert caught.value.status == 400
    assert caught.value.message == "Session already exists"
    assert caught.value.extra == {"session_id": "dup"}
    assert rig.m.sessions == {"dup": first} and first.state == SessionState.READY
    assert len(rig.fb.by_url) == 1  # no second browser was even acquired


@pytest.mark.parametrize("bad", ["", "has space", "slash/id", "..", ".", "a" * 129, "é",
                                 "new\nline"])
async def test_invalid_id_is_400_before_any_browser(rig: Rig, bad: str) -> None:
    with pytest.raises(SessionError) as caught:
        await rig.create(bad)
    assert caught.value.status == 400
    assert "session_id must be" in caught.value.message
    assert rig.m.sessions == {} and rig.fb.by_url == {}


async def test_rejected_url_is_400_before_any_browser(rig: Rig) -> None:
    for url in ("http://127.0.0.1/", "http://169.254.169.254/latest", "file:///etc/passwd",
                "http://localhost/"):
        with pytest.raises(UrlRejected) as caught:
            await rig.create(url=url)
        assert status_of(caught.value)[0] == 400
    assert rig.m.sessions == {} and rig.fb.by_url == {}


async def test_capacity_reached_is_503_with_max_sessions(rig: Rig) -> None:
    a = await rig.create()
    await rig.create()
    with pytest.raises(SessionError) as caught:
        await rig.create()
    assert caught.value.status == 503
    assert caught.value.extra == {"max_sessions": 2}
    assert status_of(caught.value) == (503, caught.value.message, {"max_sessions": 2})
    assert len(rig.m.sessions) == 2 and len(rig.fb.by_url) == 2
    # Closing one frees its place.
    await rig.m.close(a.id)
    assert (await rig.create()).state == SessionState.READY


async def test_failed_attach_is_rolled_back(make_rig: RigFactory) -> None:
    fb = FailingAttach()
    rig = await make_rig(fb)
    with pytest.raises(BrowserStartError) as caught:
        await rig.create("doomed")
    assert caught.value.status == 503
    assert fb.attempts == 2  # one retry with a fresh browser
    assert rig.m.sessions == {} and rig.m.live_count() == 0
    assert len(fb.by_url) == 2 and rig.running_browsers() == []  # every lease released
    with pytest.raises(SessionError) as missing:
        await rig.m.lookup("doomed")
    assert missing.value.status == 404
    assert rig.closed == []  # nobody was subscribed to a session that never was


async def test_failed_navigation_during_create_is_rolled_back(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(self: FakePage, url: str, timeout: float) -> dict[str, Any]:
        raise SessionError("navigation failed: net::ERR_CONNECTION_REFUSED", 502)

    monkeypatch.setattr(FakePage, "navigate", refuse)
    with pytest.raises(SessionError, match="navigation failed"):
        await rig.create("nav", url=PUBLIC_URL)
    assert rig.m.sessions == {}
    [browser] = rig.fb.by_url.values()
    assert browser.quit and all(p.closed for p in browser.pages)
    # The id and the capacity are free again.
    monkeypatch.undo()
    assert (await rig.create("nav")).state == SessionState.READY


# ======================================================================= manager: lookup
@pytest.mark.parametrize("bad", [None, 42, ["x"], {"id": "x"}, "", "no such id", "a" * 200,
                                 "unknown-but-well-formed"])
async def test_lookup_of_unknown_or_malformed_ids_is_404(rig: Rig, bad: Any) -> None:
    await rig.create("known")
    with pytest.raises(SessionError) as caught:
        await rig.m.lookup(bad)
    assert caught.value.status == 404 and caught.value.message == "Session not found"


# ======================================================================= manager: input
async def test_input_is_dispatched_in_order_and_acked_with_its_fields(
        rig: Rig) -> None:
    s = await rig.create()
    page = rig.page(s)
    # The first click takes longest at the page: without the session's input lock the later
    # events would overtake it.
    delays = iter([0.03, 0.0, 0.0, 0.0, 0.0])
    original_click = page.click

    async def slow_click(x: float, y: float) -> None:
        await asyncio.sleep(next(delays))
        await original_click(x, y)

    page.click = slow_click  # type: ignore[method-assign]
    acks = await asyncio.gather(
        s.input("click", {"x": 10, "y": 20}),
        s.input("click", {"x": 11.5, "y": 21}),
        s.input("scroll", {"deltaX": -5, "deltaY": 120, "x": 3, "y": 4}),
        s.input("key", {"key": "Enter"}),
        s.input("text", {"text": "héllo"}),
        s.input("click", {"x": 0, "y": 100_000}),
    )
    assert page.browser.inputs == [
        ("click", (10.0, 20.0)), ("click", (11.5, 21.0)), ("scroll", (-5.0, 120.0)),
        ("key", ("Enter",)), ("text", ("héllo",)), ("click", (0.0, 100_000.0))]
    expected: list[dict[str, Any]] = [
        {"type": "click", "x": 10.0, "y": 20.0},
        {"type": "click", "x": 11.5, "y": 21.0},
        {"type": "scroll", "deltaX": -5.0, "deltaY": 120.0},
        {"type": "key", "key": "Enter"},
        {"type": "text", "length": 5},
        {"type": "click", "x": 0.0, "y": 100_000.0},
    ]
    for ack, want in zip(acks, expected, strict=True):
        latency = ack.pop("latency_ms")
        assert isinstance(latency, float) and latency >= 0
        assert ack == {**want, "session_id": s.id}


@pytest.mark.parametrize(("kind", "payload"), [
    ("click", {"x": "10", "y": 5}),
    ("click", {"x": True, "y": 5}),
    ("click", {"x": None, "y": 5}),
    ("click", {"y": 5}),
    ("click", {"x": float("nan"), "y": 5}),
    ("click", {"x": float("inf"), "y": 5}),
    ("click", {"x": 1e12, "y": 5}),
    ("click", {"x": -1, "y": 5}),
    pytest.param("click", {"x": 10**400, "y": 5}, id="click-401-digit-int"),  # json.loads of
    # a 401-digit number is a Python int too large for a float
    ("click", [10, 20]),
    ("click", "x=10&y=20"),
    ("scroll", {"deltaX": 1e300}),
    ("scroll", {"deltaY": "down"}),
    pytest.param("scroll", {"deltaY": -(10**400)}, id="scroll-401-digit-int"),
    ("scroll", {"deltaY": 1, "x": float("nan"), "y": 3}),
    ("key", {"key": "NotAKey"}),
    ("key", {"key": 13}),
    ("key", {"key": "\x00"}),
    ("key", {}),
    ("text", {"text": ""}),
    ("text", {"text": 42}),
    ("text", {"text": "a" * 4097}),
    ("swipe", {"x": 1, "y": 1}),
])
async def test_bad_input_is_400_and_nothing_is_dispatched(
        rig: Rig, kind: str, payload: Any) -> None:
    s = await rig.create()
    before = s.last_activity
    with pytest.raises(ClientError) as caught:
        await s.input(kind, payload)
    assert isinstance(caught.value, BadRequest)
    assert status_of(caught.value)[0] == 400
    assert rig.page(s).browser.inputs == []
    assert s.last_activity == before  # a rejected event is not activity


# ======================================================================= manager: load
async def test_load_navigates_and_returns_page_info(rig: Rig) -> None:
    s = await rig.create(url=PUBLIC_URL)
    s.last_activity = time.time() - 100
    info = await s.load(OTHER_PUBLIC_URL)
    assert info == {"title": f"title of {OTHER_PUBLIC_URL}", "url": OTHER_PUBLIC_URL,
                    "session_id": s.id, "window_size": {"width": 320, "height": 240}}
    assert rig.page(s).browser.url == OTHER_PUBLIC_URL
    assert s.page_info["url"] == OTHER_PUBLIC_URL
    assert time.time() - s.last_activity < 5  # a load is activity
    summary = s.summary()
    assert summary["current_page"] == OTHER_PUBLIC_URL and summary["status"] == "ready"


# ======================================================================= manager: close
async def test_close_notifies_before_dropping_subscribers_and_releases_the_browser(
        rig: Rig) -> None:
    s = await rig.create()
    page = rig.page(s)
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    sub = ch.sub
    assert sub is not None and s.hub.subscribers == {ch.id: sub}
    refills = rig.fb.refills

    assert await rig.m.close(s.id, "closed by client") is True

    assert rig.closed == [{"id": s.id, "reason": "closed by client",
                           "state": SessionState.CLOSING, "subscribers": 1}]
    assert s.state == SessionState.CLOSED
    assert s.hub.subscribers == {} and s.hub.closed
    assert page.closed and page.browser.quit and rig.running_browsers() == []
    assert s.page is None and s.lease is None
    assert rig.fb.refills == refills + 1
    with pytest.raises(SessionError) as caught:
        await rig.m.lookup(s.id)
    assert caught.value.status == 404
    assert await rig.m.close(s.id) is False  # nothing left to close
    assert len(rig.closed) == 1


async def test_a_failing_close_notifier_does_not_stop_the_close(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    later: list[str] = []

    async def broken(session: Session, reason: str) -> None:
        raise RuntimeError("notifier bug")

    async def after(session: Session, reason: str) -> None:
        later.append(reason)

    rig.m.on_closed(broken)
    rig.m.on_closed(after)
    s = await rig.create()
    with caplog.at_level(logging.ERROR):
        assert await rig.m.close(s.id, "closed by client")
    assert later == ["closed by client"]
    assert s.id not in rig.m.sessions and rig.running_browsers() == []
    assert "close notifier failed" in caplog.text


async def test_stop_closes_every_session(make_rig: RigFactory) -> None:
    rig = await make_rig()
    a, b = await rig.create(), await rig.create()
    await rig.m.stop()
    assert rig.m.sessions == {} and rig.running_browsers() == []
    assert sorted((c["id"], c["reason"]) for c in rig.closed) == sorted(
        [(a.id, "server shutdown"), (b.id, "server shutdown")])


async def test_a_close_during_create_leaves_no_browser_running(make_rig: RigFactory) -> None:
    """A client that proposed its id may close the session while it is still starting (the
    id is already registered, so lookup finds it). Whatever the outcome, no browser may be
    left running that no registered session owns, and create must not hand out a ready
    session the manager no longer tracks."""
    fb = GatedAttach()
    rig = await make_rig(fb)
    creating = asyncio.create_task(rig.m.create("racy", VIEWPORT, None))
    await asyncio.wait_for(fb.attaching.wait(), 2)
    assert (await rig.m.lookup("racy")).state == SessionState.STARTING
    await rig.m.close("racy")
    fb.gate.set()
    [outcome] = await asyncio.gather(creating, return_exceptions=True)
    registered = rig.m.sessions.get("racy")
    owned = {registered.lease.endpoint.cdp_url} if registered and registered.lease else set()
    assert set(rig.running_browsers()) <= owned, (
        f"browsers left running without a session: {rig.running_browsers()}")
    if isinstance(outcome, LocalSession) and outcome.state == SessionState.READY:
        assert rig.m.sessions.get("racy") is outcome, (
            "create returned a ready session the manager no longer tracks")


# ======================================================================= manager: failures
async def test_a_page_crash_fails_the_session_and_keeps_it_visible(
        make_rig: RigFactory) -> None:
    # Without restarts (JIOMOSA_CRASH_RESTARTS=0): the behaviour before crash recovery.
    rig = await make_rig(crash_restarts=0)
    s = await rig.create()
    page = rig.page(s)
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    ch.clear()

    page.crash("crashed")

    assert s.state == SessionState.FAILED and s.error == "browser crashed"
    await eventually(lambda: bool(rig.closed) and page.browser.quit, what="failure handled")
    assert rig.closed == [{"id": s.id, "reason": "failed", "state": SessionState.FAILED,
                           "subscribers": 1}]
    assert ch.sent == [("session:closed", {"session_id": s.id, "reason": "failed"}, False)]
    assert ch.sub is None and s.hub.subscribers == {}
    assert page.closed and s.page is None
    # Still visible, so that clients learn what happened...
    assert await rig.m.lookup(s.id) is s
    assert (await s.info())["error"] == "browser crashed"
    assert s.summary()["status"] == "failed"
    # ...but unusable.
    for attempt in (s.input("click", {"x": 1, "y": 1}), s.load(PUBLIC_URL), s.keepalive()):
        with pytest.raises(SessionError) as caught:
            await attempt
        assert caught.value.status == 409
        assert caught.value.message == "session failed: browser crashed"
    # A failed session does not count against capacity (max_sessions=2).
    assert rig.m.live_count() == 0
    await rig.create()
    await rig.create()
    # A second "gone" (the page closing as it is released) changes nothing.
    page.crash("disconnected")
    assert s.error == "browser crashed" and len(rig.closed) == 1
    # Closing a failed session forgets it.
    assert await rig.m.close(s.id)
    with pytest.raises(SessionError) as gone:
        await rig.m.lookup(s.id)
    assert gone.value.status == 404


async def test_subscribe_to_a_failed_session_is_an_error_event(make_rig: RigFactory) -> None:
    rig = await make_rig(crash_restarts=0)
    s = await rig.create()
    rig.page(s).crash("crashed")
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    assert ch.sent == [("error", {"message": "session failed: browser crashed",
                                  "event": "subscribe"}, True)]
    assert ch.sub is None


# ======================================================================= manager: reaping
async def test_the_reaper_closes_an_idle_session(make_rig: RigFactory) -> None:
    rig = await make_rig(idle_timeout=0.05)
    s = await rig.create()
    s.last_activity = time.time() - 10
    rig.m._reap()
    await eventually(lambda: s.id not in rig.m.sessions, what="idle session reaped")
    assert rig.closed == [{"id": s.id, "reason": "idle timeout",
                           "state": SessionState.CLOSING, "subscribers": 0}]
    assert s.page is None and rig.running_browsers() == []


async def test_the_reaper_spares_watched_and_active_sessions(make_rig: RigFactory) -> None:
    rig = await make_rig(idle_timeout=0.05)
    watched, active = await rig.create(), await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": watched.id})
    watched.last_activity = time.time() - 10
    rig.m._reap()
    await asyncio.sleep(0)  # let anything the sweep spawned start
    assert time.time() - watched.last_activity < 5  # a watched session is touched
    assert watched.state == SessionState.READY and active.state == SessionState.READY
    assert set(rig.m.sessions) == {watched.id, active.id} and rig.closed == []
    # Once its last subscriber leaves, the idle clock starts again from then.
    await events.dispatch(ch, "unsubscribe", None)
    assert ch.last("unsubscribed") == {"message": "Unsubscribed"}
    watched.last_activity = time.time() - 10
    rig.m._reap()
    await eventually(lambda: watched.id not in rig.m.sessions, what="unwatched session reaped")


async def test_the_reaper_ends_a_session_at_max_duration_even_if_watched(
        make_rig: RigFactory) -> None:
    rig = await make_rig(max_duration=60.0)
    s = await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    s._created_at -= 120  # created two minutes ago
    rig.m._reap()
    await eventually(lambda: s.id not in rig.m.sessions, what="session ended at max duration")
    assert [c["reason"] for c in rig.closed] == ["max duration reached"]
    assert ch.last("session:closed") == {"session_id": s.id, "reason": "max duration reached"}


# ======================================================================= the event table
def test_the_event_table_names_exactly_the_documented_events() -> None:
    assert set(events.EVENTS) == {
        "subscribe", "unsubscribe", "input:click", "input:scroll", "input:key", "input:text",
        "quality:set", "fps:set", "adaptive:toggle", "ping", "frame:key"}


async def test_subscribe_answers_and_streams_the_current_frame(rig: Rig) -> None:
    s = await rig.create()
    ch = rig.channel(extra={"frame_header": {"magic": "JMSA"}})
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    assert ch.sent == [
        ("subscribe:response", {"session_id": s.id, "fps": 60, "quality": 80,
                                "adaptive_mode": True, "encoding": "binary", "delta": False,
                                "frame_header": {"magic": "JMSA"}}, True),
        ("subscribed", {"session_id": s.id, "message": f"Subscribed to session {s.id}"}, True),
    ]
    assert ch.sub is not None and ch.subscribed_to is s
    assert s.hub.subscribers == {ch.id: ch.sub}
    await eventually(lambda: bool(ch.transport.sent), what="first frame sent")
    frame, image = ch.transport.sent[0]
    assert s.hub.latest is not None
    assert frame.seq == s.hub.latest.seq and image == s.hub.latest.jpeg
    # A newer frame follows.
    rig.page(s).paint()
    await eventually(lambda: len(ch.transport.sent) == 2, what="second frame sent")
    assert ch.transport.sent[1][0].seq == frame.seq + 1


async def test_subscribe_with_options_and_base64(rig: Rig) -> None:
    s = await rig.create()
    ch = rig.channel(encoding="base64")
    await events.dispatch(ch, "subscribe", {"session_id": s.id, "fps": 10, "quality": 50})
    assert ch.last("subscribe:response") == {
        "session_id": s.id, "fps": 10, "quality": 50, "adaptive_mode": False,
        "encoding": "base64", "delta": False}
    await eventually(lambda: bool(ch.transport.sent), what="first frame sent")
    assert ch.transport.sent[0][1].startswith(b"data:image/jpeg;base64,")
    # Subscribing again replaces the subscription (one subscriber per channel).
    old = ch.sub
    await events.dispatch(ch, "subscribe", {"session_id": s.id, "encoding": "binary"})
    assert ch.sub is not old and list(s.hub.subscribers.values()) == [ch.sub]


@pytest.mark.parametrize(("payload", "message"), [
    ({"session_id": "nope"}, "Session not found"),
    ({"session_id": "bad id!"}, "Session not found"),
    ({}, "session_id is required"),
    ({"session_id": 12}, "session_id must be a string"),
    ("a-session-id", "payload must be a JSON object"),
    ({"session_id": "SID", "fps": 0}, "fps must be between 1 and 60"),
    ({"session_id": "SID", "fps": "fast"}, "fps must be a whole number"),
    ({"session_id": "SID", "quality": 95}, "quality must be between 10 and 90"),
    ({"session_id": "SID", "quality": 50.5}, "quality must be a whole number"),
    ({"session_id": "SID", "encoding": "hex"}, "encoding must be binary or base64"),
])
async def test_bad_subscribe_is_an_error_event_never_an_exception(
        rig: Rig, payload: Any, message: str) -> None:
    s = await rig.create()
    if isinstance(payload, dict) and payload.get("session_id") == "SID":
        payload = {**payload, "session_id": s.id}
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", payload)
    assert ch.sent == [("error", {"message": message, "event": "subscribe"}, True)]
    assert ch.sub is None and s.hub.subscribers == {}


async def test_input_before_subscribe_is_an_error(rig: Rig) -> None:
    s = await rig.create()
    ch = rig.channel()
    for event in ("input:click", "input:scroll", "input:key", "input:text", "quality:set",
                  "fps:set", "adaptive:toggle"):
        ch.clear()
        await events.dispatch(ch, event, {"x": 1, "y": 1})
        [(name, data, _)] = ch.sent
        assert name == "error" and data["event"] == event
        assert data["message"].startswith("not subscribed to a session")
    assert rig.page(s).browser.inputs == []


async def test_input_after_subscribe_is_acknowledged(rig: Rig) -> None:
    s = await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    ch.clear()
    await events.dispatch(ch, "input:click", {"x": 100, "y": 50})
    await events.dispatch(ch, "input:scroll", {"deltaY": 300})
    await events.dispatch(ch, "input:key", {"key": "Tab"})
    await events.dispatch(ch, "input:text", {"text": "hi"})
    await events.dispatch(ch, "input:click", {"x": -1, "y": 50})
    acks = ch.of("input:acknowledged")
    assert [(a["type"], a["session_id"]) for a in acks] == [
        ("click", s.id), ("scroll", s.id), ("key", s.id), ("text", s.id)]
    assert acks[0]["x"] == 100.0 and acks[0]["y"] == 50.0
    assert acks[1]["deltaY"] == 300.0 and acks[2]["key"] == "Tab" and acks[3]["length"] == 2
    assert ch.last("error") == {"message": "x must be between 0 and 100000",
                                "event": "input:click"}
    assert rig.page(s).browser.inputs == [
        ("click", (100.0, 50.0)), ("scroll", (0.0, 300.0)), ("key", ("Tab",)),
        ("text", ("hi",))]


async def test_quality_fps_and_adaptive_settings(rig: Rig) -> None:
    s = await rig.create()
    page = rig.page(s)
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    sub = ch.sub
    assert sub is not None and sub.adaptive
    ch.clear()

    await events.dispatch(ch, "quality:set", {"quality": 40})
    assert ch.sent == [("quality:updated", {"quality": 40, "adaptive_mode": False}, True)]
    assert sub.quality == 40 and sub.manual_quality == 40 and not sub.adaptive
    assert page.quality == 80  # Chrome keeps the default: the client gets re-encodes

    await events.dispatch(ch, "quality:set", {"quality": 90})
    assert page.quality == 90 and s.hub.source_quality == 90  # Chrome encodes at the best

    await events.dispatch(ch, "fps:set", {"fps": 15})
    assert ch.last("fps:updated") == {"fps": 15, "adaptive_mode": False} and sub.fps == 15

    await events.dispatch(ch, "adaptive:toggle", {"enabled": True})
    assert ch.last("adaptive:updated") == {"enabled": True, "adaptive_mode": True}
    assert sub.adaptive
    await events.dispatch(ch, "adaptive:toggle", {"enabled": False})
    assert ch.last("adaptive:updated") == {"enabled": False, "adaptive_mode": False}
    assert not sub.adaptive
    assert "error" not in ch.names()


@pytest.mark.parametrize(("event", "payload", "message"), [
    ("quality:set", {"quality": 5}, "quality must be between 10 and 90"),
    ("quality:set", {"quality": 91}, "quality must be between 10 and 90"),
    ("quality:set", {"quality": "high"}, "quality must be a whole number"),
    ("quality:set", {"quality": True}, "quality must be a whole number"),
    ("quality:set", {"quality": 55.5}, "quality must be a whole number"),
    ("quality:set", {}, "quality is required"),
    ("quality:set", [50], "payload must be a JSON object"),
    ("fps:set", {"fps": 0}, "fps must be between 1 and 60"),
    ("fps:set", {"fps": 61}, "fps must be between 1 and 60"),
    ("fps:set", {"fps": 10**400}, "fps must be between 1 and 60"),
    ("fps:set", {"fps": "30"}, "fps must be a whole number"),
    ("fps:set", None, "fps is required"),
    ("adaptive:toggle", {"enabled": "yes"}, "enabled must be true or false"),
    ("adaptive:toggle", {"enabled": 1}, "enabled must be true or false"),
    ("adaptive:toggle", {}, "enabled must be true or false"),
])
async def test_setting_validation_errors(rig: Rig, event: str, payload: Any,
                                         message: str) -> None:
    s = await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    sub = ch.sub
    assert sub is not None
    before = (sub.quality, sub.fps, sub.adaptive)
    ch.clear()
    await events.dispatch(ch, event, payload)
    assert ch.sent == [("error", {"message": message, "event": event}, True)]
    assert (sub.quality, sub.fps, sub.adaptive) == before


async def test_source_quality_is_the_best_any_client_set_by_hand(rig: Rig) -> None:
    """Chrome encodes at the best quality any client of the session asked for; a second
    client that subscribes with a lower fixed quality must not lower it for the first."""
    s = await rig.create()
    page = rig.page(s)
    high, low = rig.channel(), rig.channel()
    await events.dispatch(high, "subscribe", {"session_id": s.id, "quality": 90})
    assert page.quality == 90 and s.hub.source_quality == 90
    await events.dispatch(low, "subscribe", {"session_id": s.id, "quality": 50})
    assert high.sub is not None and high.sub.manual_quality == 90
    assert s.hub.source_quality == 90 and page.quality == 90, (
        "a client subscribing at quality 50 lowered Chrome's encoding below the 90 another "
        f"client asked for (now {s.hub.source_quality})")


async def test_unknown_event_lists_the_known_ones(rig: Rig) -> None:
    ch = rig.channel()
    await events.dispatch(ch, "input:swipe", {})
    [(name, data, reply)] = ch.sent
    assert name == "error" and reply and data["event"] == "input:swipe"
    assert data["message"].startswith("unknown event 'input:swipe'; known: ")
    for known in events.EVENTS:
        assert known in data["message"]
    ch.clear()
    await events.dispatch(ch, "x" * 10_000, {})
    [(_, data, _)] = ch.sent
    assert data["event"] == "x" * 64 and len(data["message"]) < 400


async def test_an_unexpected_exception_is_an_internal_error_event(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    s = await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    ch.clear()

    async def broken(kind: str, payload: Any, via: str | None = None) -> dict[str, Any]:
        raise RuntimeError("secret internals at 0xdeadbeef")

    monkeypatch.setattr(s, "input", broken)
    with caplog.at_level(logging.ERROR, logger="jiomosa.transports.events"):
        await events.dispatch(ch, "input:click", {"x": 1, "y": 2})
    assert ch.sent == [("error", {"message": INTERNAL_ERROR, "event": "input:click"}, True)]
    assert "deadbeef" not in repr(ch.sent)
    assert "event input:click failed" in caplog.text and "deadbeef" in caplog.text
    # The channel still works.
    monkeypatch.undo()
    await events.dispatch(ch, "input:click", {"x": 1, "y": 2})
    assert ch.last("input:acknowledged")["type"] == "click"


async def test_session_close_tells_the_subscriber_and_stops_its_stream(rig: Rig) -> None:
    s, other = await rig.create(), await rig.create()
    ch, bystander = rig.channel(), rig.channel()
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    await events.dispatch(bystander, "subscribe", {"session_id": other.id})
    await eventually(lambda: bool(ch.transport.sent), what="first frame sent")
    sub = ch.sub
    assert sub is not None
    ch.clear()
    bystander.clear()

    await rig.m.close(s.id, "closed by client")

    assert ch.sent == [("session:closed", {"session_id": s.id, "reason": "closed by client"},
                        False)]
    assert ch.sub is None and sub._task is None  # the pacer is stopped
    assert s.hub.subscribers == {}
    assert bystander.sent == [] and bystander.sub is not None
    # Input now says so instead of reaching a dead session.
    await events.dispatch(ch, "input:click", {"x": 1, "y": 1})
    assert ch.last("error")["message"].startswith("not subscribed to a session")


async def test_a_close_while_subscribing_leaves_no_stream_running(rig: Rig) -> None:
    """The session closes while its subscribe is being answered (the transport's send is
    waiting on the socket). The client must learn the session is gone, and no pacer may be
    left running for a session whose hub is closed."""
    s = await rig.create()
    ch = rig.channel()
    ch.block_on = "subscribe:response"
    subscribing = asyncio.create_task(events.dispatch(ch, "subscribe", {"session_id": s.id}))
    await asyncio.wait_for(ch.blocked.wait(), 2)
    await rig.m.close(s.id, "closed by client")
    ch.gate.set()
    await asyncio.wait_for(subscribing, 2)
    assert s.hub.closed
    running = {sub.id for sub in s.hub.subscribers.values()}
    if ch.sub is not None and ch.sub._task is not None:
        running.add(ch.sub.id)
    assert running == set(), f"pacers left running on the closed session: {running}"
    assert "session:closed" in ch.names() or "error" in ch.names(), ch.names()


# ======================================================================= ping / pong
async def test_pong_echoes_small_payloads_only(rig: Rig) -> None:
    ch = rig.channel()
    small: list[Any] = [None, True, 7, 2.5, "t=123", "x" * 64,
                        {"t": 1, "id": "abc", "ok": True, "n": None}]
    for data in small:
        answer = events.pong(ch, data)
        assert answer["echo"] == data
        assert abs(answer["server_time"] - time.time()) < 5 and answer["stats"] is None
    large: list[Any] = ["x" * 65, "x" * 10_000, {"blob": "y" * 10_000},
                        {f"k{i}": i for i in range(9)}, {"nested": {"a": 1}}, [1, 2, 3]]
    for data in large:
        assert events.pong(ch, data)["echo"] is None


async def test_ping_event_answers_pong_with_stats_once_subscribed(rig: Rig) -> None:
    s = await rig.create()
    ch = rig.channel()
    await events.dispatch(ch, "ping", {"t": 42})
    assert ch.last("pong")["echo"] == {"t": 42} and ch.last("pong")["stats"] is None
    await events.dispatch(ch, "subscribe", {"session_id": s.id})
    await events.dispatch(ch, "ping", "z" * 10_000)
    pong = ch.last("pong")
    assert pong["echo"] is None
    assert pong["stats"]["fps"] == 60 and pong["stats"]["adaptive"] is True
