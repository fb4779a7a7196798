"""Socket.IO contract with stock python-socketio clients, a real streamer and Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from typing import Any

import aiohttp
from helpers import Api, PageServer, SioProbe, StreamerProcess, pixel


async def test_connect_subscribe_and_first_frame(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with SioProbe(api.base) as probe:
        status = await probe.wait_for("status")
        assert status["type"] == "connection"
        frame = await probe.subscribe(sid)
        response = await probe.wait_for("subscribe:response")
        assert response["session_id"] == sid
        assert {"fps", "quality", "adaptive_mode"} <= set(response)
        subscribed = await probe.wait_for("subscribed")
        assert subscribed["session_id"] == sid and subscribed["message"]
        # A static page still gives the current picture at once, as a binary JPEG.
        assert isinstance(frame["image"], bytes) and frame["image"][:2] == b"\xff\xd8"
        assert frame["seq"] >= 1 and frame["width"] == 1280 and frame["height"] == 720
        assert 10 <= frame["quality"] <= 90 and frame["timestamp"] > 1e9
        assert {"size", "quality", "fps", "bandwidthMbps", "adaptive"} <= set(frame["stats"])
    await api.close(sid)


async def test_base64_compatibility_mode(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with SioProbe(api.base) as probe:
        frame = await probe.subscribe(sid, encoding="base64")
        assert isinstance(frame["image"], str)
        assert frame["image"].startswith("data:image/jpeg;base64,")
        assert base64.b64decode(frame["image"].split(",", 1)[1])[:2] == b"\xff\xd8"
    async with SioProbe(api.base, query="encoding=base64") as probe:
        frame = await probe.subscribe(sid)
        assert frame["image"].startswith("data:image/jpeg;base64,")
    await api.close(sid)


async def test_subscribe_errors(api: Api) -> None:
    async with SioProbe(api.base) as probe:
        await probe.emit("subscribe", {"session_id": "nope"})
        err = await probe.wait_for("error")
        assert err["message"] == "Session not found"
        await probe.emit("subscribe", {})
        await probe.wait_for("error", lambda e: "session_id is required" in e["message"])
        await probe.emit("subscribe", "just-a-string")
        await probe.wait_for("error", lambda e: "JSON object" in e["message"])
        await probe.emit("input:click", {"x": 1, "y": 1})
        await probe.wait_for("error", lambda e: "not subscribed" in e["message"])
        await probe.emit("unsubscribe")
        assert (await probe.wait_for("unsubscribed"))["message"]


async def test_input_events_are_acknowledged_after_dispatch(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await probe.emit("input:click", {"x": 200, "y": 150})
        ack = await probe.wait_for("input:acknowledged", lambda a: a["type"] == "click")
        assert ack["latency_ms"] >= 0
        await api.wait_title(sid, lambda t: t == "count:1")
        await probe.emit("input:text", {"text": "abc"})
        await probe.wait_for("input:acknowledged", lambda a: a["type"] == "text")
        await api.wait_title(sid, lambda t: t == "text:abc")
        await probe.emit("input:key", {"key": "Escape"})
        await probe.wait_for("input:acknowledged", lambda a: a["type"] == "key")
        await api.wait_title(sid, lambda t: t == "key:Escape")
        await probe.emit("input:scroll", {"deltaX": 0, "deltaY": 300})
        await probe.wait_for("input:acknowledged", lambda a: a["type"] == "scroll")
        await api.wait_title(sid, lambda t: t.startswith("scroll:"))
        # Bad payloads: an error, never an acknowledgement.
        acks = len(probe.events["input:acknowledged"])
        for event, payload in [("input:click", {"x": "a", "y": 1}), ("input:click", None),
                               ("input:key", {"key": "NoSuchKey"}), ("input:text", {"text": 5}),
                               ("input:scroll", [1, 2])]:
            start = len(probe.events["error"])
            await probe.emit(event, payload)
            err = await probe.wait_for("error", start=start)
            assert err["event"] == event and err["message"]
        assert len(probe.events["input:acknowledged"]) == acks
    await api.close(sid)


async def test_click_maps_frame_pixels_to_viewport(api: Api, pages: PageServer) -> None:
    # deviceScaleFactor 2: frames are 2x the CSS viewport; the client clicks in frame pixels.
    sid = (await api.create(url=pages.url("/app"), width=640, height=360,
                            deviceScaleFactor=2))["session_id"]
    async with SioProbe(api.base) as probe:
        frame = await probe.subscribe(sid)
        assert (frame["width"], frame["height"]) == (1280, 720)
        await probe.emit("input:click", {"x": 400, "y": 300})  # CSS (200, 150): the button
        await probe.wait_for("input:acknowledged")
        await api.wait_title(sid, lambda t: t == "count:1")
        await probe.emit("input:click", {"x": 100, "y": 100})  # CSS (50, 50): not the button
        await probe.wait_for("input:acknowledged", start=1)
        await asyncio.sleep(0.3)
        assert await api.title(sid) == "count:1"
    await api.close(sid)


async def test_quality_fps_adaptive_controls(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/noise")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await probe.emit("quality:set", {"quality": 20})
        assert (await probe.wait_for("quality:updated"))["quality"] == 20
        start = len(probe.events["frame"])
        low = await probe.wait_for("frame", lambda f: f["quality"] == 20, start=start)
        await probe.emit("quality:set", {"quality": 90})
        await probe.wait_for("quality:updated", lambda q: q["quality"] == 90)
        start = len(probe.events["frame"])
        high = await probe.wait_for("frame", lambda f: f["quality"] == 90, start=start)
        assert len(low["image"]) < len(high["image"])

        await probe.emit("fps:set", {"fps": 5})
        assert (await probe.wait_for("fps:updated"))["fps"] == 5
        await asyncio.sleep(0.5)
        start = len(probe.events["frame"])
        await asyncio.sleep(2.0)
        got = len(probe.events["frame"]) - start
        assert 5 <= got <= 12, f"fps cap 5 gave {got} frames in 2 s"

        await probe.emit("adaptive:toggle", {"enabled": True})
        assert (await probe.wait_for("adaptive:updated"))["enabled"] is True
        for event, payload in [("quality:set", {"quality": 5}), ("quality:set", {"quality": "hi"}),
                               ("fps:set", {"fps": 0}), ("fps:set", {"fps": 61}),
                               ("fps:set", {"fps": 2.5}), ("adaptive:toggle", {"enabled": 1})]:
            start = len(probe.events["error"])
            await probe.emit(event, payload)
            assert (await probe.wait_for("error", start=start))["event"] == event
    await api.close(sid)


async def test_static_page_sends_almost_nothing(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await asyncio.sleep(0.5)
        start = len(probe.events["frame"])
        await asyncio.sleep(3.0)
        assert len(probe.events["frame"]) - start <= 1
    await api.close(sid)


async def test_animated_page_streams_many_frames(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await asyncio.sleep(0.5)
        start = len(probe.events["frame"])
        await asyncio.sleep(2.0)
        frames = probe.frames()[start:]
        # A functional floor only; the speed figures live in bench/.
        assert len(frames) >= 10
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await api.close(sid)


async def test_two_subscribers_share_one_screencast(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/color")))["session_id"]
    async with SioProbe(api.base) as a, SioProbe(api.base) as b:
        await a.subscribe(sid)
        await b.subscribe(sid)
        # Once the page has painted, both have its black picture.
        fa = await a.wait_for("frame", lambda f: pixel(f["image"], 10, 10)[0] < 30)
        fb = await b.wait_for("frame", lambda f: pixel(f["image"], 10, 10)[0] < 30)
        assert fa["seq"] == fb["seq"]
        await a.emit("input:click", {"x": 10, "y": 10})
        # Both see the changed picture, with the same sequence number.
        na = await a.wait_for("frame", lambda f: pixel(f["image"], 10, 10)[0] > 220)
        nb = await b.wait_for("frame", lambda f: pixel(f["image"], 10, 10)[0] > 220)
        assert na["seq"] == nb["seq"]
    await api.close(sid)


async def test_unsubscribe_stops_frames(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await probe.emit("unsubscribe", {"session_id": sid})
        await probe.wait_for("unsubscribed")
        await asyncio.sleep(0.3)
        count = len(probe.events["frame"])
        await asyncio.sleep(1.0)
        assert len(probe.events["frame"]) == count
    await api.close(sid)


async def test_close_notifies_subscribers(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await api.close(sid)
        closed = await probe.wait_for("session:closed")
        assert closed == {"session_id": sid, "reason": "closed by client"}


async def test_slow_client_skips_frames_without_slowing_others(
        api: Api, pages: PageServer, streamer: StreamerProcess) -> None:
    """A client that stops reading gets no backlog and a lower quality; a healthy client
    keeps streaming."""
    sid = (await api.create(url=pages.url("/noise")))["session_id"]

    def small_buffer_socket(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        return sock

    connector = aiohttp.TCPConnector(socket_factory=small_buffer_socket)
    async with aiohttp.ClientSession(connector=connector) as http:
        # A raw Engine.IO websocket that subscribes and then never reads again.
        ws = await http.ws_connect(
            f"ws://127.0.0.1:{streamer.port}/socket.io/?EIO=4&transport=websocket")
        await ws.receive()  # engine.io open
        await ws.send_str("40")
        await ws.receive()  # socket.io connect
        await ws.send_str(f'42["subscribe",{{"session_id":"{sid}"}}]')
        async with SioProbe(api.base) as healthy:
            await healthy.subscribe(sid)
            await asyncio.sleep(1.0)
            _, before = await api.call("GET", f"/api/session/{sid}/info")
            start = len(healthy.events["frame"])
            t0 = time.monotonic()
            await asyncio.sleep(4.0)
            rate = (len(healthy.events["frame"]) - start) / (time.monotonic() - t0)
            _, after = await api.call("GET", f"/api/session/{sid}/info")
        await ws.close()
    captured = after["frame_seq"] - before["frame_seq"]
    stalled = [c for c in after["clients"] if c["framesSent"] < c["framesSkipped"]]
    assert stalled, json.dumps([before["clients"], after["clients"], captured])
    stalled_before = next(c for c in before["clients"] if c["id"] == stalled[0]["id"])
    sent = stalled[0]["framesSent"] - stalled_before["framesSent"]
    assert sent <= captured * 0.2, (sent, captured)
    assert stalled[0]["quality"] < 80, "adaptive quality did not react to the stalled client"
    assert rate >= 5, f"healthy client got only {rate:.1f} fps next to a stalled one"
    await api.close(sid)


async def test_ping_ack_gives_round_trip(api: Api) -> None:
    async with SioProbe(api.base) as probe:
        answer = await probe.client.call("ping", 42, timeout=5)
        assert answer["echo"] == 42 and answer["server_time"] > 1e9
