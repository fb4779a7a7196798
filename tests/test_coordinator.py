"""The fleet's logic in one process: two or three ``FleetManager``s sharing one ``MemoryStore``,
one ``LocalBus.Network`` and one set of ``FakeBrowsers`` (no Redis, no browser, no subprocess).

The managers' own once-a-second tick is switched off (``TICK`` patched to an hour): every test
runs ``_fleet_tick``/``_tick`` itself, so what a tick does is decided by the test, not by timing.
``tests/test_fleet.py`` proves the same behaviour end to end with real processes.
"""

from __future__ import annotations

import ast
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBrowser, FakeBrowsers, FakePage, FakeTransport, LocalBus, settings

from jiomosa.core.errors import ClientError, SessionError
from jiomosa.core.types import BrowserEndpoint, SessionState, Viewport
from jiomosa.core.urlpolicy import UrlPolicy
from jiomosa.fleet.coordinator import SEQ_GAP, FleetManager
from jiomosa.fleet.mirrors import MIRROR_LINGER
from jiomosa.fleet.relay import RelayError
from jiomosa.fleet.remote import RemoteSession
from jiomosa.fleet.store import MemoryStore
from jiomosa.frames.hub import Frame, FrameHub
from jiomosa.frames.pacer import Subscriber
from jiomosa.sessions import manager as manager_module
from jiomosa.sessions.manager import PageAttacher, SessionManager
from jiomosa.sessions.session import LocalSession, Page, Session

SID = "fleet-s1"
VIEWPORT = Viewport(320, 240)
PUBLIC_URL = "http://8.8.8.8/"  # a literal public address: the URL policy needs no DNS
OTHER_URL = "http://8.8.4.4/"
SESSIONS_DIR = Path(__file__).resolve().parent.parent / "streamer" / "jiomosa" / "sessions"


class Fleet:
    """Streamers sharing one registry, one bus and one set of browsers."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.net = LocalBus.Network()
        self.browsers = FakeBrowsers("grid")
        self.managers: list[FleetManager] = []
        self.closed: dict[str, list[tuple[str, str]]] = {}
        """Per streamer, the ``(session_id, reason)`` its clients were told (``on_closed``)."""

    async def start(self, name: str, attach: PageAttacher | None = None,
                    **overrides: Any) -> FleetManager:
        options: dict[str, Any] = {"backend": "grid", "lease_ttl": 30.0, "warm_browsers": 0,
                                   **overrides}
        manager = FleetManager(settings(**options), self.browsers, UrlPolicy.from_allow_list([]),
                               attach or self.browsers.attach, self.store,
                               LocalBus(self.net, name), name)
        await manager.start()
        told: list[tuple[str, str]] = []
        self.closed[name] = told

        async def note(session: Session, reason: str) -> None:
            told.append((session.id, reason))

        manager.on_closed(note)
        self.managers.append(manager)
        return manager

    async def stop(self) -> None:
        for manager in self.managers:
            for hub in manager.mirrors.hubs():  # mirrors' clients (pacers) end with the test
                await hub.close()
            await manager.stop()


@pytest.fixture
async def fleet(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fleet]:
    monkeypatch.setattr(manager_module, "TICK", 3600.0)  # ticks only when a test says so
    fleet = Fleet()
    yield fleet
    await fleet.stop()


# ------------------------------------------------------------------------------- helpers
async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def wait_until_async(condition: Callable[[], Awaitable[bool]],
                           timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def settle() -> None:
    """Let spawned work (relay publishing, mirror tasks) run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def lease_expired(fleet: Fleet, session_id: str = SID) -> None:
    async def gone() -> bool:
        return await fleet.store.lease_owner(session_id) is None
    await wait_until_async(gone)


def page_of(session: LocalSession) -> FakePage:
    page = session.page
    assert isinstance(page, FakePage)
    return page


def browser_of(session: LocalSession) -> FakeBrowser:
    return page_of(session).browser


def latest(hub: FrameHub) -> Frame:
    assert hub.latest is not None
    return hub.latest


def watch(hub: FrameHub, client: str = "client") -> FakeTransport:
    """A client streaming from ``hub`` through its own pacer."""
    transport = FakeTransport()
    hub.add(Subscriber(client, hub, transport, fps=60, quality=80))
    return transport


async def remote(manager: FleetManager, session_id: str = SID) -> RemoteSession:
    found = await manager.lookup(session_id)
    assert isinstance(found, RemoteSession)
    return found


async def assert_not_found(manager: SessionManager, session_id: str = SID) -> None:
    with pytest.raises(SessionError) as caught:
        await manager.lookup(session_id)
    assert caught.value.status == 404


# ------------------------------------------------------------------------------- tests
async def test_any_streamer_finds_the_session_and_ids_stay_unique(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)

    assert await a.lookup(SID) is local
    on_b = await remote(b)
    assert on_b.owner == "a" and on_b.state == SessionState.READY
    assert on_b.viewport_dict["width"] == VIEWPORT.width
    listed = {s["session_id"]: s for s in await b.summaries()}
    assert listed[SID]["status"] == "ready"

    with pytest.raises(SessionError) as caught:
        await b.create(SID, VIEWPORT, None)
    assert caught.value.status == 400
    # The refused create took no browser, registered nothing and left a's ownership alone.
    assert SID not in b.sessions and len(fleet.browsers.by_url) == 1
    assert await fleet.store.lease_owner(SID) == "a"
    record = await fleet.store.get(SID)
    assert record is not None and record.owner == "a"


async def test_input_load_and_info_through_another_streamer(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)
    browser = browser_of(local)
    served: list[str] = []  # every request that reached a
    serve = fleet.net.servers["a"]

    async def counting(op: str, session_id: str, args: dict[str, Any]) -> dict[str, Any]:
        served.append(op)
        answer: dict[str, Any] = await serve(op, session_id, args)
        return answer

    fleet.net.servers["a"] = counting
    on_b = await remote(b)

    ack = await on_b.input("click", {"x": 10, "y": 20})
    assert ack["type"] == "click" and ack["session_id"] == SID and ack["x"] == 10
    assert browser.inputs == [("click", (10.0, 20.0))]
    view = await on_b.load(PUBLIC_URL)
    assert view["url"] == PUBLIC_URL and view["title"] == f"title of {PUBLIC_URL}"
    assert browser.url == PUBLIC_URL and local.page_info["url"] == PUBLIC_URL
    assert served == ["input", "load"]

    # Bad requests are refused on b: they never travel to a.
    for kind, payload in [("click", {"x": -1, "y": 5}), ("click", {"x": 1}),
                          ("zap", {}), ("click", "not an object"),
                          ("text", {"text": "x" * 10_000})]:
        with pytest.raises(ClientError) as caught:
            await on_b.input(kind, payload)
        assert caught.value.status == 400, (kind, payload)
    with pytest.raises(ClientError) as caught:
        await on_b.load("http://127.0.0.1/admin")
    assert caught.value.status == 400
    assert served == ["input", "load"]
    assert browser.inputs == [("click", (10.0, 20.0))] and browser.url == PUBLIC_URL

    # info() through b shows the owner's live page (it changed without a load).
    browser.url = OTHER_URL
    info = await (await remote(b)).info()
    assert info["owner"] == "a" and info["status"] == "ready"
    assert info["page_info"]["url"] == OTHER_URL
    assert info["page_info"]["title"] == f"title of {OTHER_URL}"
    assert served[-1] == "info"


async def test_activity_on_another_streamer_keeps_the_session_alive(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)
    before = local.last_activity
    await asyncio.sleep(0.01)
    when = await (await remote(b)).keepalive()  # a REST keepalive that landed on b
    assert when > before
    await a._fleet_tick()  # a learns the fleet's activity at its tick
    assert local.last_activity == when


async def test_frames_reach_mirrors_with_the_owners_numbers(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)
    page = page_of(local)

    # Nobody elsewhere listens: painting and ticking cost the bus nothing.
    for _ in range(5):
        page.paint()
    await a._fleet_tick()
    page.paint()
    await settle()
    assert fleet.net.published == 0

    # A client on b: the mirror asks a for its current picture at once.
    mirror = (await remote(b)).hub
    assert b.existing_mirror(SID) is mirror
    sent = watch(mirror)
    frame = await mirror.wait_newer(0, 2.0)
    assert frame is not None
    assert frame.seq == latest(local.hub).seq and frame.jpeg == latest(local.hub).jpeg
    await wait_until(lambda: bool(sent.sent) and sent.sent[-1][0].seq == frame.seq)

    page.paint()
    newer = await mirror.wait_newer(frame.seq, 2.0)
    assert newer is not None and newer.seq == latest(local.hub).seq == frame.seq + 1
    await wait_until(lambda: sent.sent[-1][0].seq == newer.seq)

    # Without the snapshot request, a's tick sees the listener and relays again.
    a.mirrors.stop_relay(SID)
    page.paint()
    await settle()
    assert latest(mirror).seq == newer.seq  # not relayed
    await a._fleet_tick()
    page.paint()
    newest = await mirror.wait_newer(newer.seq, 2.0)
    assert newest is not None and newest.seq == latest(local.hub).seq == newer.seq + 2
    assert [f.seq for f, _ in sent.sent] == sorted({f.seq for f, _ in sent.sent})

    # The client leaves and nobody polls: b drops the mirror, a stops relaying.
    await mirror.remove("client")
    mirror.last_used -= MIRROR_LINGER + 1
    await b._fleet_tick()
    assert b.existing_mirror(SID) is None and mirror.closed
    await a._fleet_tick()
    published = fleet.net.published
    for _ in range(3):
        page.paint()
    await settle()
    assert fleet.net.published == published


async def test_close_through_another_streamer(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)
    browser = browser_of(local)
    mirror = (await remote(b)).hub
    watch(mirror)
    assert await mirror.wait_newer(0, 2.0) is not None  # b's client is streaming

    assert await b.close(SID, "bye")
    assert browser.quit and local.state == SessionState.CLOSED and SID not in a.sessions
    assert (SID, "bye") in fleet.closed["a"]
    await wait_until(lambda: (SID, "bye") in fleet.closed["b"])
    await wait_until(lambda: b.existing_mirror(SID) is None)
    assert mirror.closed and not mirror.subscribers
    assert await fleet.store.get(SID) is None
    await assert_not_found(a)
    await assert_not_found(b)


async def test_failover_one_streamer_adopts_the_same_browser(fleet: Fleet) -> None:
    a = await fleet.start("a", lease_ttl=0.2)
    b = await fleet.start("b")
    c = await fleet.start("c")
    local = await a.create(SID, VIEWPORT, PUBLIC_URL)
    browser = browser_of(local)
    page_of(local).paint()
    await a._fleet_tick()  # the renewal records a's latest frame number
    record = await fleet.store.get(SID)
    assert record is not None
    recorded = record.seq
    assert recorded == latest(local.hub).seq
    page_of(local).paint()  # a frame after the last renewal
    stale = await remote(c)  # looked up while a still owned it

    fleet.net.down.add("a")  # a is killed: it neither answers nor renews
    await lease_expired(fleet)
    await asyncio.gather(b._fleet_tick(), c._fleet_tick())

    owners = [m for m in (b, c) if SID in m.sessions]
    assert len(owners) == 1
    new = owners[0]
    other = c if new is b else b
    adopted = new.sessions[SID]
    assert adopted.state == SessionState.READY and adopted.owner == new.streamer_id
    assert not browser.quit and browser.url == PUBLIC_URL  # the browser and its page live on
    assert len(browser.pages) == 2 and browser.pages[-1] is adopted.page
    assert adopted.page_info["url"] == PUBLIC_URL
    assert latest(adopted.hub).seq == recorded + SEQ_GAP > latest(local.hub).seq
    assert await fleet.store.lease_owner(SID) == new.streamer_id
    record = await fleet.store.get(SID)
    assert record is not None and record.owner == new.streamer_id

    await other._fleet_tick()  # the loser stays a mirror
    assert SID not in other.sessions
    assert (await remote(other)).owner == new.streamer_id
    # A session looked up before the failover follows the new owner.
    await stale.input("click", {"x": 1, "y": 2})
    assert browser.inputs[-1] == ("click", (1.0, 2.0))

    # a comes back (it was only cut off): its first tick lets go without touching the browser.
    fleet.net.down.discard("a")
    await a._tick()
    assert SID not in a.sessions and (SID, "moved") in fleet.closed["a"]
    assert not browser.quit and SID in new.sessions
    assert await fleet.store.lease_owner(SID) == new.streamer_id


async def test_adopted_frames_continue_above_the_record_with_a_fresh_mirror(
        fleet: Fleet) -> None:
    """After a failover the clients of the dead owner reconnect to another streamer and
    subscribe, which makes a mirror there before that streamer adopts the session; other
    streamers' mirrors still show the old owner's numbers."""
    a = await fleet.start("a", lease_ttl=0.2)
    b = await fleet.start("b")
    c = await fleet.start("c")
    local = await a.create(SID, VIEWPORT, None)
    for _ in range(3):
        page_of(local).paint()
    on_c = (await remote(c)).hub
    c_sent = watch(on_c, "on-c")
    assert await on_c.wait_newer(latest(local.hub).seq - 1, 2.0) is not None
    await a._fleet_tick()
    record = await fleet.store.get(SID)
    assert record is not None
    recorded = record.seq
    assert recorded == latest(on_c).seq == latest(local.hub).seq

    fleet.net.down.add("a")
    await lease_expired(fleet)
    on_b = (await remote(b)).hub  # a reconnected client subscribes on b
    watch(on_b, "on-b")
    await wait_until(lambda: "b" in fleet.net.watchers[SID])
    await b._fleet_tick()

    adopted = b.sessions[SID]
    assert adopted.hub is on_b  # b's client keeps its hub
    assert latest(adopted.hub).seq > recorded, (
        f"frame numbers restarted at {latest(adopted.hub).seq} after {recorded}")
    page_of(adopted).paint()
    frame = await on_c.wait_newer(recorded, 2.0)
    assert frame is not None and frame.seq == latest(adopted.hub).seq
    await wait_until(lambda: c_sent.sent[-1][0].seq == frame.seq)


async def test_shutdown_hands_grid_sessions_to_the_fleet(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, PUBLIC_URL)
    page = page_of(local)
    seq = latest(local.hub).seq

    await a.shutdown()
    browser = page.browser
    assert SID not in a.sessions and not browser.quit
    assert page.closed and local.page is None  # a detached from the page only
    assert await fleet.store.lease_owner(SID) is None  # no wait for the TTL
    await b._fleet_tick()
    adopted = b.sessions[SID]
    assert adopted.state == SessionState.READY and adopted.page is browser.pages[-1]
    assert browser.url == PUBLIC_URL and not browser.quit
    assert latest(adopted.hub).seq > seq
    assert await fleet.store.lease_owner(SID) == "b"


async def test_shutdown_closes_sessions_with_the_local_backend(fleet: Fleet) -> None:
    a = await fleet.start("a", backend="local")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, None)
    browser = browser_of(local)

    await a.shutdown()
    assert browser.quit and SID not in a.sessions
    assert (SID, "server shutdown") in fleet.closed["a"]
    assert await fleet.store.get(SID) is None
    await b._fleet_tick()
    assert SID not in b.sessions
    await assert_not_found(b)


async def test_ownership_follows_the_clients(fleet: Fleet) -> None:
    a = await fleet.start("a")
    b = await fleet.start("b")
    local = await a.create(SID, VIEWPORT, PUBLIC_URL)
    browser = browser_of(local)
    mirror = (await remote(b)).hub
    sent = watch(mirror)
    first = await mirror.wait_newer(0, 2.0)
    assert first is not None and first.seq == latest(local.hub).seq
    # Nobody watches or polls the session on a (its creation counts as a use for a while).
    assert not local.hub.subscribers
    local.hub.last_used -= MIRROR_LINGER + 1

    await b._fleet_tick()
    assert SID in b.sessions and SID not in a.sessions
    adopted = b.sessions[SID]
    assert adopted.hub is mirror  # b's client keeps streaming from the same hub
    assert latest(mirror).seq == first.seq + 1  # the numbers continue
    await wait_until(lambda: sent.sent[-1][0].seq == first.seq + 1)
    assert not browser.quit and browser.url == PUBLIC_URL and adopted.page is browser.pages[-1]
    assert await fleet.store.lease_owner(SID) == "b"
    assert (await remote(a)).owner == "b"
    assert "b" not in fleet.net.watchers[SID]  # b no longer listens to a relay

    # The clients' streamer drives the session now: its frames are free of the bus.
    await b._fleet_tick()
    published = fleet.net.published
    for _ in range(3):
        page_of(adopted).paint()
    await wait_until(lambda: sent.sent[-1][0].seq == latest(mirror).seq)
    assert fleet.net.published == published
    assert SID in b.sessions and SID not in a.sessions


async def test_a_session_with_a_local_browser_never_moves(fleet: Fleet) -> None:
    fleet.browsers.kind = "local"  # the browser is a child process of its streamer
    a = await fleet.start("a", backend="local")
    b = await fleet.start("b", backend="local")
    local = await a.create(SID, VIEWPORT, None)
    mirror = (await remote(b)).hub
    watch(mirror)
    assert await mirror.wait_newer(0, 2.0) is not None
    local.hub.last_used -= MIRROR_LINGER + 1

    for manager in (b, a, b):
        await manager._fleet_tick()
    assert SID in a.sessions and SID not in b.sessions
    assert await fleet.store.lease_owner(SID) == "a"
    assert await a._handle_rpc("handoff", SID, {"to": "b"}) == {"moved": False}
    assert a.sessions[SID].state == SessionState.READY


async def test_a_lost_lease_makes_the_owner_let_go(fleet: Fleet) -> None:
    a = await fleet.start("a")
    await fleet.start("b")
    local = await a.create(SID, VIEWPORT, PUBLIC_URL)
    browser = browser_of(local)
    page = page_of(local)
    fleet.store._leases[SID] = ("b", time.monotonic() + 30.0)  # b holds the lease now

    await a._fleet_tick()
    assert SID not in a.sessions and local.state == SessionState.CLOSED
    assert (SID, "moved") in fleet.closed["a"]
    assert page.closed and not browser.quit  # the browser is b's now
    assert await fleet.store.lease_owner(SID) == "b"


async def test_an_orphan_that_never_became_ready_is_forgotten(fleet: Fleet) -> None:
    """The owner died while the browser was starting: once its lease expired, the id must not
    stay registered (listed, taken, unclosable) forever."""
    gate = asyncio.Event()

    async def slow_attach(endpoint: BrowserEndpoint, policy: UrlPolicy,
                          viewport: Viewport) -> Page:
        await gate.wait()
        return await fleet.browsers.attach(endpoint, policy, viewport)

    a = await fleet.start("a", attach=slow_attach, lease_ttl=0.2)
    b = await fleet.start("b")
    creating = asyncio.create_task(a.create(SID, VIEWPORT, None))
    try:
        await wait_until(lambda: SID in a.sessions)
        fleet.net.down.add("a")  # killed before the browser came up
        await lease_expired(fleet)
        await b._fleet_tick()
        await b._fleet_tick()
        listed = [s["session_id"] for s in await b.summaries()]
        assert SID not in listed, "a dead streamer's starting session stays registered"
        await assert_not_found(b)
    finally:
        creating.cancel()
        with pytest.raises((asyncio.CancelledError, SessionError, RelayError)):
            await creating


async def test_the_single_host_manager_carries_no_fleet_state() -> None:
    browsers = FakeBrowsers("local")
    manager = SessionManager(settings(), browsers, UrlPolicy.from_allow_list([]),
                             browsers.attach, "solo")
    for name in ("store", "bus", "mirrors", "_remote_activity", "_handoff_asked", "_store_ok"):
        assert not hasattr(manager, name), name
    for name in ("call_owner", "mirror_hub", "_fleet_tick", "_adopt_orphans", "_hand_off"):
        assert not hasattr(SessionManager, name), name
    await manager.start()
    try:
        session = await manager.create(SID, VIEWPORT, None)
        assert list(manager.hubs()) == [session.hub]
        assert [s["session_id"] for s in await manager.summaries()] == [SID]
        await assert_not_found(manager, "elsewhere")
        assert not await manager.close("elsewhere")
    finally:
        await manager.stop()
    assert all(browser.quit for browser in browsers.by_url.values())
    # Nothing under sessions/ imports the fleet.
    for path in SESSIONS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("jiomosa.fleet"), path.name
            elif isinstance(node, ast.Import):
                assert not any(n.name.startswith("jiomosa.fleet") for n in node.names), path.name
