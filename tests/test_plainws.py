"""Plain WebSocket path GET /api/session/{id}/stream: binary frames with a 24-byte header, JSON
text events in both directions, per-client pacing and latest-frame-wins, session close and
server shutdown reaching the client. A stock aiohttp WebSocket client, a real streamer, real
Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from helpers import Api, PageServer, StreamerProcess, pixel
from PIL import Image

HEADER = struct.Struct(">3sBBBHIHHQ")


def parse_frame(data: bytes) -> dict[str, Any]:
    magic, version, size, quality, flags, seq, width, height, ts = HEADER.unpack_from(data)
    return {"magic": magic, "version": version, "size": size, "quality": quality,
            "flags": flags, "seq": seq, "width": width, "height": height, "ts_ms": ts,
            "jpeg": data[size:]}


class WsProbe:
    """A plain aiohttp WebSocket client that records every message it receives."""

    def __init__(self, http: aiohttp.ClientSession, base: str, session_id: str,
                 query: str = "") -> None:
        self.url = f"{base.replace('http', 'ws', 1)}/api/session/{session_id}/stream{query}"
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.texts: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self.frame_times: list[float] = []
        self.closed: aiohttp.WSMessage | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WsProbe:
        self.ws = await self.http.ws_connect(self.url, autoclose=False, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.texts.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(parse_frame(msg.data))
                self.frame_times.append(time.monotonic())
            else:
                self.closed = msg
                self._changed.set()
                return
            self._changed.set()

    async def send(self, event: str, data: Any = None, msg_id: Any = None) -> None:
        assert self.ws is not None
        message: dict[str, Any] = {"event": event}
        if data is not None:
            message["data"] = data
        if msg_id is not None:
            message["id"] = msg_id
        await self.ws.send_str(json.dumps(message))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.texts if m["event"] == name]

    async def until(self, check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what or 'condition'} not met in {timeout}s; texts: "
                                     f"{self.texts[-5:]}, frames: {len(self.frames)}, "
                                     f"closed: {self.closed}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_event(self, name: str, predicate: Callable[[dict[str, Any]], bool] = (
            lambda _m: True), start: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for m in self.texts[start:]:
                if m["event"] == name and predicate(m):
                    return m
            return None
        return await self.until(found, timeout, f"event {name}")  # type: ignore[no-any-return]

    async def wait_frame(self, predicate: Callable[[dict[str, Any]], bool] = lambda _f: True,
                         start: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((f for f in self.frames[start:] if predicate(f)), None)
        return await self.until(found, timeout, "frame")  # type: ignore[no-any-return]


async def test_handshake_events_and_frame_header(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with WsProbe(api.http, api.base, sid) as probe:
        frame = await probe.wait_frame()
        names = [m["event"] for m in probe.texts[:3]]
        assert names == ["status", "subscribe:response", "subscribed"], probe.texts
        status, response, subscribed = probe.texts[:3]
        assert status["data"]["type"] == "connection"
        assert response["data"]["session_id"] == sid and response["data"]["adaptive_mode"]
        assert response["data"]["frame_header"] == {"magic": "JMF", "version": 1, "size": 24}
        assert subscribed["data"] == {"session_id": sid,
                                      "message": f"Subscribed to session {sid}"}
        assert (frame["magic"], frame["version"], frame["size"], frame["flags"]) == (
            b"JMF", 1, 24, 0)
        assert 10 <= frame["quality"] <= 90 and frame["seq"] >= 1
        assert abs(frame["ts_ms"] / 1000 - time.time()) < 60
        jpeg = frame["jpeg"]
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.size == (frame["width"], frame["height"]) == (1280, 720)
        _, info = await api.call("GET", f"/api/session/{sid}/info")
        assert info["frame_seq"] == frame["seq"]
        assert [c["transport"] for c in info["clients"]] == ["websocket"]
        # A static page: the picture is sent once, not again and again.
        await asyncio.sleep(2.0)
        assert len(probe.frames) <= 2, [f["seq"] for f in probe.frames]
    await api.close(sid)


async def test_refused_before_the_upgrade_with_json_errors(api: Api, pages: PageServer) -> None:
    ws_base = api.base.replace("http", "ws", 1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.http.ws_connect(f"{ws_base}/api/session/no-such-session/stream")
    assert refused.value.status == 404
    async with api.http.get(f"{api.base}/api/session/no-such-session/stream") as r:
        assert r.status == 404 and await r.json() == {"error": "Session not found"}
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with api.http.get(f"{api.base}/api/session/{sid}/stream") as r:
        assert r.status == 426 and "WebSocket" in (await r.json())["error"]
    for query, message in [("?fps=0", "fps must be between 1 and 60"),
                           ("?fps=x", "fps must be a whole number"),
                           ("?quality=95", "quality must be between 10 and 90")]:
        async with api.http.get(f"{api.base}/api/session/{sid}/stream{query}",
                                headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                         "Sec-WebSocket-Version": "13",
                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
            assert r.status == 400 and (await r.json())["error"] == message
    await api.close(sid)


async def test_input_events_acknowledged_with_ids(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    async with WsProbe(api.http, api.base, sid) as probe:
        await probe.wait_frame()
        await probe.send("input:click", {"x": 200, "y": 150}, msg_id=1)
        ack = await probe.wait_event("input:acknowledged")
        assert ack["id"] == 1 and ack["data"]["type"] == "click" and ack["data"]["x"] == 200
        assert ack["data"]["latency_ms"] >= 0
        await api.wait_title(sid, lambda t: t == "count:1")
        await probe.send("input:key", {"key": "Escape"}, msg_id="k")
        await probe.wait_event("input:acknowledged", lambda m: m.get("id") == "k")
        await api.wait_title(sid, lambda t: t == "key:Escape")
        await probe.send("input:text", {"text": "abc"})
        await probe.wait_event("input:acknowledged", lambda m: m["data"]["type"] == "text")
        await api.wait_title(sid, lambda t: t == "text:abc")
        await probe.send("input:scroll", {"deltaX": 0, "deltaY": 300, "x": 640, "y": 360})
        await probe.wait_event("input:acknowledged", lambda m: m["data"]["type"] == "scroll")
        await api.wait_title(sid, lambda t: t.startswith("scroll:"))

        acks = len(probe.events("input:acknowledged"))
        bad: list[tuple[str | bytes, str | None]] = [
            (json.dumps({"event": "input:click", "data": {"x": "a", "y": 1}, "id": 7}),
             "input:click"),
            (json.dumps({"event": "input:click", "data": {"x": 5000, "y": 1}, "id": 7}),
             "input:click"),
            (json.dumps({"event": "input:key", "data": {"key": "NoSuchKey"}, "id": 7}),
             "input:key"),
            (json.dumps({"event": "input:text", "data": {"text": 5}, "id": 7}), "input:text"),
            (json.dumps({"event": "input:scroll", "data": [1, 2], "id": 7}), "input:scroll"),
            (json.dumps({"event": "no:such", "id": 7}), "no:such"),
            (json.dumps({"event": "input:click", "id": {"x": 1}}), "input:click"),
            ("not json", None),
            (json.dumps(["input:click", {"x": 1, "y": 1}]), None),
            (b"\x00\x01binary", None),
        ]
        assert probe.ws is not None
        for message, event in bad:
            start = len(probe.texts)
            if isinstance(message, bytes):
                await probe.ws.send_bytes(message)
            else:
                await probe.ws.send_str(message)
            err = await probe.wait_event("error", start=start)
            assert err["data"]["message"] and err["data"].get("event") == event, (message, err)
            if '"id": 7' in str(message):
                assert err["id"] == 7
        assert len(probe.events("input:acknowledged")) == acks
        # The connection survived all of that and still works.
        await probe.send("ping", {"t": 1}, msg_id=99)
        pong = await probe.wait_event("pong")
        assert pong["id"] == 99 and pong["data"]["echo"] == {"t": 1}
        assert pong["data"]["stats"]["framesSent"] >= 1
        assert abs(pong["data"]["server_time"] - time.time()) < 60
    await api.close(sid)


async def test_oversized_message_closes_the_socket(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with WsProbe(api.http, api.base, sid) as probe:
        await probe.wait_frame()
        await probe.send("input:text", {"text": "x" * 70_000})
        closed = await probe.until(lambda: probe.closed, what="socket closed")
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1009
    # The session is unharmed.
    _, info = await api.call("GET", f"/api/session/{sid}/info")
    assert info["status"] == "ready"
    await api.close(sid)


async def test_quality_fps_adaptive_and_pause(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/noise")))["session_id"]
    async with WsProbe(api.http, api.base, sid, "?quality=30") as probe:
        response = await probe.wait_event("subscribe:response")
        assert response["data"]["quality"] == 30 and response["data"]["adaptive_mode"] is False
        low = await probe.wait_frame(lambda f: f["quality"] == 30)
        await probe.send("quality:set", {"quality": 90}, msg_id="q")
        updated = await probe.wait_event("quality:updated")
        assert updated == {"event": "quality:updated", "id": "q",
                           "data": {"quality": 90, "adaptive_mode": False}}
        high = await probe.wait_frame(lambda f: f["quality"] == 90, start=len(probe.frames))
        assert len(low["jpeg"]) < len(high["jpeg"])

        await probe.send("fps:set", {"fps": 5})
        assert (await probe.wait_event("fps:updated"))["data"]["fps"] == 5
        await asyncio.sleep(0.5)
        start = len(probe.frames)
        await asyncio.sleep(2.0)
        got = len(probe.frames) - start
        assert 2 <= got <= 12, f"fps cap 5 gave {got} frames in 2 s"
        seqs = [f["seq"] for f in probe.frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

        await probe.send("adaptive:toggle", {"enabled": True})
        assert (await probe.wait_event("adaptive:updated"))["data"]["enabled"] is True

        # Paused: no frames, input still works (the connection is bound to its session).
        await probe.send("unsubscribe")
        await probe.wait_event("unsubscribed")
        await asyncio.sleep(0.3)
        paused_at = len(probe.frames)
        await probe.send("input:click", {"x": 10, "y": 10})
        await probe.wait_event("input:acknowledged")
        start = len(probe.texts)
        await probe.send("quality:set", {"quality": 50})
        assert "not subscribed" in (await probe.wait_event("error", start=start))["data"][
            "message"]
        await asyncio.sleep(1.0)
        assert len(probe.frames) == paused_at
        start = len(probe.texts)
        await probe.send("subscribe", {"session_id": "another-one"})
        assert (await probe.wait_event("error", start=start))["data"]["event"] == "subscribe"
        await probe.send("subscribe", {"session_id": sid, "fps": 10})
        await probe.wait_event("subscribed", start=start)
        await probe.wait_frame(start=paused_at)
    await api.close(sid)


async def test_session_close_reaches_the_client(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    async with WsProbe(api.http, api.base, sid) as probe:
        await probe.wait_frame()
        await api.close(sid)
        closed = await probe.wait_event("session:closed")
        assert closed["data"] == {"session_id": sid, "reason": "closed by client"}
        end = await probe.until(lambda: probe.closed, what="close frame")
        assert end.type == aiohttp.WSMsgType.CLOSE and end.data == 1000
        # Nothing after the notice but the close.
        assert probe.texts[-1]["event"] == "session:closed"


async def test_slow_reader_skips_frames_without_slowing_others(
        api: Api, pages: PageServer, streamer: StreamerProcess) -> None:
    """A client that stops reading gets no backlog and a lower quality (latest frame wins);
    a healthy client on the same session keeps streaming."""
    sid = (await api.create(url=pages.url("/noise")))["session_id"]
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    stalled.connect(("127.0.0.1", streamer.port))
    stalled.sendall((f"GET /api/session/{sid}/stream HTTP/1.1\r\nHost: x\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    assert stalled.recv(12) == b"HTTP/1.1 101"  # and never reads again
    try:
        async with WsProbe(api.http, api.base, sid) as healthy:
            await healthy.wait_frame()
            await asyncio.sleep(1.0)
            _, before = await api.call("GET", f"/api/session/{sid}/info")
            start, t0 = len(healthy.frames), time.monotonic()
            await asyncio.sleep(4.0)
            rate = (len(healthy.frames) - start) / (time.monotonic() - t0)
            _, after = await api.call("GET", f"/api/session/{sid}/info")
    finally:
        stalled.close()
    captured = after["frame_seq"] - before["frame_seq"]
    slow = [c for c in after["clients"] if c["framesSent"] < c["framesSkipped"]]
    assert slow and slow[0]["transport"] == "websocket", json.dumps(after["clients"])
    slow_before = next(c for c in before["clients"] if c["id"] == slow[0]["id"])
    sent = slow[0]["framesSent"] - slow_before["framesSent"]
    assert sent <= captured * 0.2, (sent, captured)
    assert slow[0]["quality"] < 80, "adaptive quality did not react to the stalled client"
    assert rate >= 3, f"healthy client got only {rate:.1f} fps next to a stalled one"
    await api.close(sid)


async def test_click_changes_the_streamed_picture(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/color")))["session_id"]
    async with WsProbe(api.http, api.base, sid) as probe:
        black = await probe.wait_frame(lambda f: pixel(f["jpeg"], 10, 10)[0] < 30)
        await probe.send("input:click", {"x": 10, "y": 10})
        white = await probe.wait_frame(lambda f: pixel(f["jpeg"], 10, 10)[0] > 220,
                                       start=probe.frames.index(black) + 1)
        assert white["seq"] > black["seq"]
    await api.close(sid)


async def test_server_shutdown_tells_and_closes_clients(
        start_streamer: type[StreamerProcess], pages: PageServer) -> None:
    proc = start_streamer({"JIOMOSA_MAX_SESSIONS": "1"}).start()
    async with aiohttp.ClientSession() as http:
        api = Api(http, proc.base)
        sid = (await api.create(url=pages.url("/anim")))["session_id"]
        async with WsProbe(http, proc.base, sid) as probe:
            await probe.wait_frame()
            t0 = time.monotonic()
            stopping = asyncio.ensure_future(asyncio.to_thread(proc.stop))
            closed = await probe.wait_event("session:closed", timeout=15)
            assert closed["data"]["reason"] == "server shutdown"
            end = await probe.until(lambda: probe.closed, timeout=15, what="close frame")
            assert end.type == aiohttp.WSMsgType.CLOSE and end.data == 1001
            assert await stopping == 0, proc.log_tail()
            assert time.monotonic() - t0 < 15
