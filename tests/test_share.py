"""Share links: watching someone else's session is an explicit act with its own capability.

A session id is its owner's capability; ``POST /api/session/{id}/share`` makes a separate,
revocable token for a viewer, read-only unless the owner grants input. Real streamer, real
Chromium, stock Socket.IO and aiohttp WebSocket clients; a fleet of real streamers over Redis
at the end. The web app's side is in test_webapp.py.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import Api, Grid, PageServer, RedisServer, SioProbe, StreamerProcess
from test_plainws import WsProbe

BUTTON = {"x": 200, "y": 150}  # the /app page's "+1" button, in frame pixels
INPUTS = [("input:click", BUTTON), ("input:key", {"key": "Enter"}),
          ("input:text", {"text": "secret"}), ("input:scroll", {"deltaX": 0, "deltaY": 300})]


async def make_share(api: Api, sid: str, **body: Any) -> dict[str, Any]:
    status, data = await api.call("POST", f"/api/session/{sid}/share", body)
    assert status == 201, (status, data)
    return data


def share_stream(api: Api, token: str, base: str | None = None) -> WsProbe:
    probe = WsProbe(api.http, base or api.base, "-")
    probe.url = f"{(base or api.base).replace('http', 'ws', 1)}/api/share/stream?share={token}"
    return probe


def seen_by_viewer(*received: Any) -> str:
    """Everything a viewer received, as text (JPEG bytes left out)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("image", "jpeg")}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value
    return json.dumps(strip(list(received)), default=str)


def sio_events(probe: SioProbe) -> dict[str, list[Any]]:
    return {name: [data for _, data in got] for name, got in probe.events.items()}


async def share_get(api: Api, what: str, token: str, via: str = "header",
                    **query: str) -> tuple[int, bytes, Mapping[str, str]]:
    params = dict(query)
    headers = {}
    if via == "header":
        headers["X-Share-Token"] = token
    else:
        params["share"] = token
    async with api.http.get(f"{api.base}/api/share/{what}", params=params,
                            headers=headers) as r:
        return r.status, await r.read(), r.headers.copy()


# --------------------------------------------------------------------------- the links
async def test_a_share_link_is_a_separate_capability(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app?token=owner-secret")))["session_id"]
    try:
        share = await make_share(api, sid)
        token = share["share_token"]
        # 192 random bits (32 URL-safe characters), unrelated to the session id.
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", token) and token != sid
        assert share["input"] is False and share["share_id"].startswith("share-")
        assert share["url"].endswith(f"/#share={token}") and sid not in json.dumps(share)
        assert (await make_share(api, sid))["share_token"] != token
        granted = await make_share(api, sid, input=True)
        assert granted["input"] is True
        # The owner lists its links by share id (no tokens).
        status, listed = await api.call("GET", f"/api/session/{sid}/share")
        assert status == 200 and len(listed["shares"]) == 3
        assert token not in json.dumps(listed)
        assert {s["share_id"] for s in listed["shares"]} >= {share["share_id"]}
        # A viewer's info: the share's id and the page's title and origin, never the id or
        # the page's path and query (they may carry the owner's secrets).
        status, body, _ = await share_get(api, "info", token)
        info = json.loads(body)
        assert status == 200 and info["share_id"] == share["share_id"] and not info["input"]
        assert info["page_info"]["title"] == "app" and info["status"] == "ready"
        assert info["page_info"]["url"] == pages.url("/")
        assert sid not in body.decode() and "owner-secret" not in body.decode()
        # A token is not a session id, and a session id is not a token.
        status, _ = await api.call("GET", f"/api/session/{token}/info")
        assert status == 404
        assert (await share_get(api, "info", sid))[0] == 404
        # Bad requests are clear 4xx.
        status, data = await api.call("POST", f"/api/session/{sid}/share", {"input": "yes"})
        assert status == 400 and "input" in data["error"]
        status, data = await api.call("POST", "/api/session/nope/share", {})
        assert status == 404
        for bad in ("", "x", "a" * 300, "../../etc", token + "\u00e9"):
            assert (await share_get(api, "info", bad, via="query"))[0] == 404, bad
    finally:
        await api.close(sid)


async def test_a_read_only_viewer_gets_frames_but_its_input_is_refused(
        api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    share = await make_share(api, sid)
    token, share_id = share["share_token"], share["share_id"]
    try:
        async with SioProbe(api.base) as viewer, share_stream(api, token) as ws:
            await viewer.emit("subscribe", {"share": token})
            response = await viewer.wait_for("subscribe:response")
            assert response["session_id"] == share_id
            assert response["share"] == {"share_id": share_id, "input": False}
            frame = await viewer.wait_for("frame")
            assert frame["session_id"] == share_id and frame["image"][:2] == b"\xff\xd8"
            await ws.wait_frame()
            assert ws.texts[1]["data"]["session_id"] == share_id
            # Every kind of input is refused, on both transports, with a clear error.
            for n, (event, data) in enumerate(INPUTS):
                await viewer.emit(event, data)
                error = await viewer.wait_for("error", lambda e, ev=event: e["event"] == ev)
                assert "read-only" in error["message"], error
                await ws.send(event, data, msg_id=n)
                error = await ws.wait_event("error", lambda m, n=n: m.get("id") == n)
                assert "read-only" in error["data"]["message"], error
            assert not viewer.events["input:acknowledged"]
            assert not ws.events("input:acknowledged")
            # Nothing reached the page: the owner's own click is the first one it counts.
            status, _ = await api.call("POST", f"/api/session/{sid}/input/click", BUTTON)
            assert status == 200
            assert await api.title(sid) == "count:1"
            # Polling viewers: header or query, read-only by construction.
            for via in ("header", "query"):
                status, body, headers = await share_get(api, "frame", token, via=via)
                assert status == 200 and body[:2] == b"\xff\xd8"
                assert sid[:8] not in headers["ETag"] and share_id[:8] in headers["ETag"]
            # Everything the viewers received names the share, never the session.
            await viewer.emit("ping", {"t": 1})
            assert sid not in seen_by_viewer(sio_events(viewer), ws.texts)
    finally:
        await api.close(sid)


async def test_a_share_that_grants_input_lets_the_viewer_drive(
        api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    share = await make_share(api, sid, input=True)
    try:
        async with SioProbe(api.base) as viewer, share_stream(api, share["share_token"]) as ws:
            await viewer.emit("subscribe", {"share": share["share_token"]})
            assert (await viewer.wait_for("subscribe:response"))["share"]["input"] is True
            await viewer.emit("input:click", BUTTON)
            ack = await viewer.wait_for("input:acknowledged")
            assert ack["type"] == "click" and ack["session_id"] == share["share_id"]
            await api.wait_title(sid, lambda t: t == "count:1")
            await ws.send("input:click", BUTTON, msg_id="c")
            ack = await ws.wait_event("input:acknowledged")
            assert ack["id"] == "c" and ack["data"]["session_id"] == share["share_id"]
            await api.wait_title(sid, lambda t: t == "count:2")
            # The share drives the page, nothing more: no REST path takes its token as an id.
            for method, path in (("POST", "load"), ("POST", "close"), ("GET", "info")):
                status, _ = await api.call(method, f"/api/session/{share['share_token']}/{path}",
                                           {"url": pages.url("/static")})
                assert status == 404
            assert sid not in seen_by_viewer(sio_events(viewer), ws.texts)
    finally:
        await api.close(sid)


async def test_revoked_and_unknown_share_links_are_refused(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    share = await make_share(api, sid, input=True)
    token, share_id = share["share_token"], share["share_id"]
    try:
        async with SioProbe(api.base) as viewer, share_stream(api, token) as ws:
            await viewer.emit("subscribe", {"share": token})
            await viewer.wait_for("frame")
            await ws.wait_frame()
            status, data = await api.call("DELETE", f"/api/session/{sid}/share/{token}")
            assert status == 200 and data["share_id"] == share_id
            # Both viewers are cut off at once, told with the share's id.
            closed = await viewer.wait_for("session:closed")
            assert closed == {"session_id": share_id, "reason": "share revoked"}
            message = await ws.wait_event("session:closed")
            assert message["data"] == {"session_id": share_id, "reason": "share revoked"}
            await ws.until(lambda: ws.closed is not None, what="socket closed")
            # Nothing works with the token any more.
            start = len(viewer.events["error"])
            await viewer.emit("subscribe", {"share": token})
            error = await viewer.wait_for("error", start=start)
            assert error["message"] == "Share not found"
            await viewer.emit("input:click", BUTTON)
            await viewer.wait_for("error", start=start + 1)
            assert await api.title(sid) == "app"
            assert (await share_get(api, "frame", token))[0] == 404
            assert (await share_get(api, "info", token))[0] == 404
            async with api.http.get(f"{api.base}/api/share/stream",
                                    params={"share": token}) as r:
                assert r.status == 404
            status, _ = await api.call("DELETE", f"/api/session/{sid}/share/{token}")
            assert status == 404
            # Unknown tokens of the right shape are refused the same way.
            unknown = secrets.token_urlsafe(24)
            await viewer.emit("subscribe", {"share": unknown})
            error = await viewer.wait_for("error", start=start + 2)
            assert error["message"] == "Share not found"
            await viewer.emit("subscribe", {"share": unknown, "session_id": sid})
            error = await viewer.wait_for("error", start=start + 3)
            assert "not both" in error["message"]
            assert (await share_get(api, "frame", unknown, via="query"))[0] == 404
            assert sid not in seen_by_viewer(sio_events(viewer), ws.texts)

        # Revoked by its share id too; closing the session ends every link.
        second = await make_share(api, sid)
        status, _ = await api.call("DELETE", f"/api/session/{sid}/share/{second['share_id']}")
        assert status == 200
        third = await make_share(api, sid)
        async with SioProbe(api.base) as viewer:
            await viewer.emit("subscribe", {"share": third["share_token"]})
            await viewer.wait_for("frame")
            await api.close(sid)
            closed = await viewer.wait_for("session:closed")
            assert closed == {"session_id": third["share_id"], "reason": "closed by client"}
            assert sid not in seen_by_viewer(sio_events(viewer))
        assert (await share_get(api, "frame", third["share_token"]))[0] == 404
    finally:
        await api.close(sid)


async def test_share_links_per_session_are_bounded(api: Api, pages: PageServer) -> None:
    sid = (await api.create())["session_id"]
    try:
        tokens = [(await make_share(api, sid))["share_token"] for _ in range(16)]
        status, data = await api.call("POST", f"/api/session/{sid}/share", {})
        assert status == 409 and "at most 16" in data["error"]
        await api.call("DELETE", f"/api/session/{sid}/share/{tokens[0]}")
        await make_share(api, sid)
    finally:
        await api.close(sid)


# --------------------------------------------------------------------------- in a fleet
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def fleet(redis_server: RedisServer, start_streamer: type[StreamerProcess]
                ) -> AsyncIterator[list[Api]]:
    grid = Grid()
    env = {"JIOMOSA_STORE": "redis", "JIOMOSA_REDIS_URL": redis_server.url,
           "JIOMOSA_BACKEND": "grid", "JIOMOSA_GRID_URL": grid.url,
           "JIOMOSA_WARM_BROWSERS": "0", "JIOMOSA_LEASE_TTL": "2"}
    streamers = [start_streamer({**env, "JIOMOSA_STREAMER_ID": name}) for name in "ab"]
    try:
        for proc in streamers:
            proc.start()
        async with aiohttp.ClientSession() as http:
            yield [Api(http, proc.base) for proc in streamers]
    finally:
        for proc in streamers:
            proc.stop()
        grid.stop()


async def test_share_links_work_across_a_fleet(fleet: list[Api], pages: PageServer) -> None:
    a, b = fleet
    sid = (await a.create(url=pages.url("/app")))["session_id"]
    try:
        # Made through a streamer that does not drive the session (relayed to the owner) ...
        read_only = await make_share(b, sid)
        driving = await make_share(b, sid, input=True)
        # ... and opened on it: the registry carries the links. The owner's own client
        # keeps the session on A (ownership would otherwise follow the viewers to B).
        async with SioProbe(a.base) as owner, SioProbe(b.base) as viewer, \
                SioProbe(b.base) as driver:
            await owner.subscribe(sid)
            await viewer.emit("subscribe", {"share": read_only["share_token"]})
            frame = await viewer.wait_for("frame")
            assert frame["session_id"] == read_only["share_id"]
            await viewer.emit("input:click", BUTTON)
            error = await viewer.wait_for("error")
            assert "read-only" in error["message"]
            await driver.emit("subscribe", {"share": driving["share_token"]})
            await driver.wait_for("frame")
            await driver.emit("input:click", BUTTON)
            ack = await driver.wait_for("input:acknowledged")
            assert ack["session_id"] == driving["share_id"]
            await a.wait_title(sid, lambda t: t == "count:1")
            status, body, _ = await share_get(b, "frame", read_only["share_token"])
            assert status == 200 and body[:2] == b"\xff\xd8"
            # Revoked at the owner: the viewers on the other streamer are cut off within a
            # second or two, and the driving link no longer drives.
            revoked_at = time.monotonic()
            for share in (read_only, driving):
                status, _ = await a.call("DELETE", f"/api/session/{sid}/share/"
                                                   f"{share['share_token']}")
                assert status == 200
            closed = await viewer.wait_for("session:closed", timeout=10)
            assert closed == {"session_id": read_only["share_id"], "reason": "share revoked"}
            # Within the fleet's tick (1 s) plus scheduling; generous for a loaded machine.
            assert viewer.events["session:closed"][0][0] - revoked_at < 5.0
            await driver.wait_for("session:closed", timeout=10)
            start = len(driver.events["error"])
            await driver.emit("subscribe", {"share": driving["share_token"]})
            assert (await driver.wait_for("error", start=start))["message"] == "Share not found"
            assert sid not in seen_by_viewer(sio_events(viewer), sio_events(driver))
            status, info = await b.call("GET", f"/api/session/{sid}/info")
            assert status == 200 and info["owner"] == "a"
        status, *_ = await share_get(b, "frame", read_only["share_token"])
        assert status == 404
    finally:
        await a.close(sid)
