"""Scale-out: three streamer processes, one redis-server, browsers on a WebDriver endpoint that
outlives the streamers (a standalone chromedriver, as a Grid would hold them)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import Api, Grid, PageServer, RedisServer, SioProbe, StreamerProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fleet(redis_server: RedisServer, start_streamer: type[StreamerProcess]
          ) -> Iterator[list[StreamerProcess]]:
    grid = Grid()
    env = {"JIOMOSA_STORE": "redis", "JIOMOSA_REDIS_URL": redis_server.url,
           "JIOMOSA_BACKEND": "grid", "JIOMOSA_GRID_URL": grid.url,
           "JIOMOSA_WARM_BROWSERS": "0", "JIOMOSA_LEASE_TTL": "2"}
    streamers = [start_streamer({**env, "JIOMOSA_STREAMER_ID": name}) for name in "abc"]
    for proc in streamers:
        proc.start()
    yield streamers
    for proc in streamers:
        proc.stop()
    grid.stop()


@pytest.fixture
async def apis(fleet: list[StreamerProcess]) -> AsyncIterator[list[Api]]:
    async with aiohttp.ClientSession() as http:
        yield [Api(http, proc.base) for proc in fleet]


async def _owner(api: Api, sid: str) -> str | None:
    status, info = await api.call("GET", f"/api/session/{sid}/info")
    if status != 200:
        return None
    return str(info.get("owner", "self"))


async def test_any_replica_serves_any_session(apis: list[Api], pages: PageServer,
                                              redis_server: RedisServer) -> None:
    a, b, c = apis
    sid = (await a.create(url=pages.url("/app")))["session_id"]
    # REST on every replica.
    for api in (b, c):
        status, info = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 200 and info["owner"] == "a" and info["page_info"]["title"] == "app"
        status, listing = await api.call("GET", "/api/sessions")
        assert sid in [s["session_id"] for s in listing["sessions"]]
        status, _ = await api.call("POST", f"/api/session/{sid}/keepalive")
        assert status == 200
    status, data = await b.call("POST", "/api/session/create", {"session_id": sid})
    assert status == 400 and data["error"] == "Session already exists"
    # HTTP polling on a replica that does not own the session gets the owner's picture.
    async with c.http.get(f"{c.base}/api/session/{sid}/frame") as r:
        assert r.status == 200 and (await r.read())[:2] == b"\xff\xd8"
        seq = int(r.headers["X-Frame-Seq"])
    # Subscribe on B and C, click on C: frames and input work.
    async with SioProbe(b.base, f"session_id={sid}") as on_b, \
            SioProbe(c.base, f"session_id={sid}") as on_c:
        await on_b.subscribe(sid)
        await on_c.subscribe(sid)
        start = len(on_b.events["frame"])
        await on_c.emit("input:click", {"x": 200, "y": 150})
        ack = await on_c.wait_for("input:acknowledged")
        assert ack["type"] == "click"
        await b.wait_title(sid, lambda t: t == "count:1")
        # The change reaches the mirror on B as a new frame.
        await on_b.wait_for("frame", start=start)
        async with c.http.get(f"{c.base}/api/session/{sid}/frame",
                              params={"after": str(seq), "timeout": "10"}) as r:
            assert r.status == 200 and int(r.headers["X-Frame-Seq"]) > seq
    status, data = await c.call("POST", f"/api/session/{sid}/input/key", {"key": "F99"})
    assert status == 400  # checked where it arrived, never relayed
    status, data = await b.call("POST", f"/api/session/{sid}/load", {"url": pages.url("/static")})
    assert status == 200 and data["page_info"]["title"] == "static"
    status, data = await c.call("POST", f"/api/session/{sid}/load", {"url": "http://10.0.0.1/"})
    assert status == 400
    async with SioProbe(a.base) as on_a:
        await on_a.subscribe(sid)
        status, _ = await b.call("POST", f"/api/session/{sid}/close")
        assert status == 200
        assert (await on_a.wait_for("session:closed"))["reason"] == "closed by client"
    for api in apis:
        status, _ = await api.call("GET", f"/api/session/{sid}/info")
        assert status == 404


async def test_preferred_path_costs_redis_nothing_per_frame(
        apis: list[Api], pages: PageServer, redis_server: RedisServer) -> None:
    a, b, _ = apis
    sid = (await a.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(a.base) as on_a:
        await on_a.subscribe(sid)
        await asyncio.sleep(1.5)
        publishes = redis_server.calls("publish")
        frames = len(on_a.events["frame"])
        await asyncio.sleep(3.0)
        direct_frames = len(on_a.events["frame"]) - frames
        assert direct_frames > 10
        assert redis_server.calls("publish") - publishes == 0
        # A client on another replica turns the relay on.
        async with SioProbe(b.base) as on_b:
            await on_b.subscribe(sid)
            await asyncio.sleep(2.0)
            relayed = redis_server.calls("publish") - publishes
            assert relayed > 5
            assert len(on_b.events["frame"]) > 5
        # ... and off again once it has left (its mirror lingers a few seconds for pollers).
        deadline = time.monotonic() + 15
        while True:
            publishes = redis_server.calls("publish")
            await asyncio.sleep(1.5)
            if redis_server.calls("publish") - publishes == 0:
                break
            assert time.monotonic() < deadline, "the relay never stopped"
    await a.close(sid)


async def test_owner_killed_session_resumes_with_its_page(
        apis: list[Api], fleet: list[StreamerProcess], pages: PageServer) -> None:
    a, b, c = apis
    sid = (await a.create(url=pages.url("/app")))["session_id"]
    for _ in range(3):
        status, _ = await a.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 150})
        assert status == 200
    await a.wait_title(sid, lambda t: t == "count:3")
    on_a = SioProbe(a.base)
    await on_a.__aenter__()
    await on_a.subscribe(sid)  # a client on A keeps the session there until A dies
    async with SioProbe(c.base) as on_c:
        await on_c.subscribe(sid)
        await asyncio.sleep(1.5)  # time for C to ask for the session (A refuses)
        assert await _owner(b, sid) == "a"
        assert fleet[0].proc is not None
        fleet[0].proc.kill()  # SIGKILL: no hand-off, the lease must expire
        killed = time.monotonic()
        while (owner := await _owner(b, sid)) in (None, "a"):
            assert time.monotonic() - killed < 5.0, "no survivor took the session in 5 s"
            await asyncio.sleep(0.1)
        resumed = time.monotonic() - killed
        assert owner in ("b", "c")
        # Same page, same state: the counter survived.
        assert await b.title(sid) == "count:3"
        start = len(on_c.events["frame"])
        status, _ = await c.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 150})
        assert status == 200
        await b.wait_title(sid, lambda t: t == "count:4")
        await on_c.wait_for("frame", start=start)
    await on_a.__aexit__(None, None, None)
    print(f"session resumed {resumed:.2f}s after SIGKILL of its owner")
    await b.close(sid)


async def test_sigterm_hands_sessions_off(apis: list[Api], fleet: list[StreamerProcess],
                                          pages: PageServer) -> None:
    a, b, _ = apis
    sid = (await a.create(url=pages.url("/app")))["session_id"]
    await a.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 150})
    await a.wait_title(sid, lambda t: t == "count:1")
    assert fleet[0].proc is not None
    fleet[0].proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    assert await asyncio.to_thread(fleet[0].proc.wait, 20) == 0
    while (owner := await _owner(b, sid)) in (None, "a"):
        assert time.monotonic() - stopped < 5.0, "the session was not taken over"
        await asyncio.sleep(0.1)
    assert owner in ("b", "c")
    assert await b.title(sid) == "count:1"
    await b.close(sid)


async def test_redis_restart_mid_stream(apis: list[Api], pages: PageServer,
                                        redis_server: RedisServer) -> None:
    a, b, c = apis
    sid = (await a.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(a.base) as on_a, SioProbe(b.base) as on_b:
        await on_a.subscribe(sid)
        await on_b.subscribe(sid)
        redis_server.stop()
        # The owner's own clients do not depend on Redis.
        start = len(on_a.events["frame"])
        await asyncio.sleep(1.5)
        assert len(on_a.events["frame"]) - start > 10
        redis_server.start()  # empty: the fleet must re-register its sessions
        restarted = time.monotonic()
        while True:
            status, listing = await c.call("GET", "/api/sessions")
            if status == 200 and sid in [s["session_id"] for s in listing["sessions"]]:
                break
            assert time.monotonic() - restarted < 10, "session not re-registered"
            await asyncio.sleep(0.2)
        # The mirror on B streams again.
        start = len(on_b.events["frame"])
        await on_b.wait_for("frame", start=start + 5, timeout=10)
    status, _ = await a.call("POST", "/api/session/create", {})
    assert status == 201
    await a.close(sid)


async def test_ownership_follows_the_clients(apis: list[Api], pages: PageServer,
                                             redis_server: RedisServer) -> None:
    """Created on A, watched only on B (where the ingress hashes its clients): B becomes the
    owner, its client keeps streaming, and the relay stops."""
    a, b, _ = apis
    sid = (await a.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(b.base, f"session_id={sid}") as on_b:
        await on_b.subscribe(sid)
        started = time.monotonic()
        while await _owner(b, sid) != "b":
            assert time.monotonic() - started < 10, "the session never moved to its clients"
            await asyncio.sleep(0.2)
        start = len(on_b.events["frame"])
        await asyncio.sleep(1.0)
        seqs = [f["seq"] for f in on_b.frames()]
        assert len(seqs) - start > 5 and seqs == sorted(seqs), "frames stopped or went back"
        publishes = redis_server.calls("publish")
        await asyncio.sleep(1.5)
        assert redis_server.calls("publish") - publishes == 0
        status, ack = await b.call("POST", f"/api/session/{sid}/input/click", {"x": 5, "y": 5})
        assert status == 200 and ack["type"] == "click"
    await b.close(sid)
