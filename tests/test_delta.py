"""Delta frames (issue 14, docs/protocol.md *Delta frames*) against real Chromium and the real
streamer: what a delta client rebuilds from a key frame and updates matches, seq by seq, the
full frame a full-frame client got (PSNR >= 38 dB, lossless regions exact), after typing,
clicks, wheel and keyboard scrolling (instant and smooth), animation and navigation; a client
that falls behind or reconnects recovers with a key frame; bad requests are refused."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from deltaclient import DeltaState, SioDeltaClient, WsDeltaClient, decode, psnr
from helpers import Api, PageServer, SioProbe, StreamerProcess

pytestmark = pytest.mark.browser

PHONE = {"width": 240, "height": 320}


def compare(state: DeltaState, full: dict[int, bytes], least: int = 3) -> int:
    """Every picture the delta client held that a full-frame client also got: PSNR >= 38 dB
    overall, and the parts drawn from lossless images exactly equal. Returns how many."""
    compared = 0
    worst = 99.0
    for seq, picture in state.pictures.items():
        jpeg = full.get(seq)
        if jpeg is None:
            continue
        reference = decode(jpeg)
        assert picture.shape == reference.shape, seq
        value = psnr(picture, reference)
        worst = min(worst, value)
        assert value >= 38.0, f"seq {seq}: PSNR {value:.1f} dB"
        for x, y, w, h in state.lossless.get(seq, []):
            assert np.array_equal(picture[y:y + h, x:x + w], reference[y:y + h, x:x + w]), (
                f"seq {seq}: lossless rect {x, y, w, h} differs")
        compared += 1
    assert compared >= least, (compared, sorted(state.pictures), sorted(full))
    assert not state.rejected, state.rejected
    return compared


def full_frames(probe: SioProbe) -> dict[int, bytes]:
    return {f["seq"]: bytes(f["image"]) for f in probe.frames()}


async def settle(api: Api, sid: str, quiet: float = 0.6, timeout: float = 10.0) -> int:
    """The session's frame number once no frame came for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        _, info = await api.call("GET", f"/api/session/{sid}/info")
        if info["frame_seq"] != last:
            last, since = info["frame_seq"], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(last)
        await asyncio.sleep(0.1)
    return int(last)


class Pair:
    """A delta client and a full-frame client of one session."""

    def __init__(self, api: Api, sid: str, **delta: Any) -> None:
        self.api, self.sid, self.options = api, sid, delta
        self.delta = SioDeltaClient(api.base)
        self.full = SioProbe(api.base)

    async def __aenter__(self) -> Pair:
        await self.full.__aenter__()
        await self.full.subscribe(self.sid, quality=80, fps=60)
        await self.delta.connect()
        answer = await self.delta.subscribe(self.sid, **self.options)
        assert answer["delta"] is True, answer
        await self.delta.wait("frame", lambda f: f.get("key"))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.delta.close()
        await self.full.__aexit__(*exc)

    async def check(self, least: int = 3) -> int:
        seq = await settle(self.api, self.sid)
        await self.delta.wait_seq(seq)
        await self.full.wait_for("frame", lambda f: f["seq"] >= seq)
        assert self.delta.state.seq >= seq  # a caret may have blinked since
        return compare(self.delta.state, full_frames(self.full), least)


async def key(api: Api, sid: str, name: str) -> None:
    status, answer = await api.call("POST", f"/api/session/{sid}/input/key", {"key": name})
    assert status == 200, answer


async def test_typing_and_the_caret(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/caret"), **PHONE))["session_id"]
    async with Pair(api, sid) as pair:
        await asyncio.sleep(1.5)  # the caret blinks
        for ch in "hello, world":
            await api.call("POST", f"/api/session/{sid}/input/text", {"text": ch})
            await asyncio.sleep(0.08)
        await key(api, sid, "Backspace")
        await api.wait_title(sid, lambda t: t == "text:hello, worl")
        await pair.check(least=8)
        state = pair.delta.state
        assert len(state.updates) >= 8 and len(state.keys) == 1, (len(state.updates),
                                                                  state.keys)
        # A typed character or a caret blink changes a few cells, not the screen.
        typical = sorted(u.size for u in state.updates)[len(state.updates) // 2]
        full = np.median([len(f["image"]) for f in pair.full.frames()])
        assert typical < full / 4, (typical, full)
    await api.close(sid)


async def test_clicks_and_keys(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/app"), width=480, height=360))["session_id"]
    async with Pair(api, sid, tile=16) as pair:
        for n in range(1, 6):
            await api.call("POST", f"/api/session/{sid}/input/click", {"x": 150, "y": 140})
            await api.wait_title(sid, lambda t, n=n: t == f"count:{n}")
        await api.call("POST", f"/api/session/{sid}/input/click", {"x": 200, "y": 320})
        for ch in "abc":
            await api.call("POST", f"/api/session/{sid}/input/text", {"text": ch})
        await pair.check(least=5)
    await api.close(sid)


@pytest.mark.parametrize("path", ["/text", "/text-smooth"])
async def test_scrolling_with_wheel_and_keys(api: Api, pages: PageServer, path: str) -> None:
    sid = (await api.create(url=pages.url(path), **PHONE))["session_id"]
    async with Pair(api, sid) as pair:
        for _ in range(3):  # a quarter screen each: the content moves by 80 pixels
            await api.call("POST", f"/api/session/{sid}/input/scroll",
                           {"deltaX": 0, "deltaY": 80})
            await asyncio.sleep(0.3)
        for name in ("ArrowDown", "ArrowDown", "PageDown", "ArrowUp"):
            await key(api, sid, name)  # animated by Chrome: many small, odd moves
            await asyncio.sleep(0.4)
        await api.call("POST", f"/api/session/{sid}/input/scroll", {"deltaX": 0, "deltaY": -37})
        await pair.check(least=10)
        state = pair.delta.state
        moved = [u for u in state.updates if u.copies]
        assert moved, "no scroll was sent as a copy"
        full = np.median([len(f["image"]) for f in pair.full.frames()])
        cheapest = min(u.size for u in moved)
        assert cheapest < full * 0.5, (cheapest, full)
    await api.close(sid)


async def test_animation_and_navigation(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/anim"), **PHONE))["session_id"]
    async with Pair(api, sid, formats=["jpeg", "png", "webp"], tile=64) as pair:
        await asyncio.sleep(1.5)
        for path in ("/static", "/text", "/caret"):
            status, _ = await api.call("POST", f"/api/session/{sid}/load",
                                       {"url": pages.url(path)})
            assert status == 200
            await asyncio.sleep(0.5)
        await pair.check(least=10)
        assert pair.delta.state.updates
    await api.close(sid)


async def test_plain_websocket_delta(api: Api, pages: PageServer,
                                     streamer: StreamerProcess) -> None:
    sid = (await api.create(url=pages.url("/text"), **PHONE))["session_id"]
    async with aiohttp.ClientSession() as http, SioProbe(api.base) as full:
        await full.subscribe(sid, quality=80)
        client = await WsDeltaClient(
            http, f"ws://127.0.0.1:{streamer.port}/api/session/{sid}/stream"
                  "?delta=1&formats=jpeg,png&tile=16").connect()
        try:
            for dy in (80, 80, -40, 120):
                await api.call("POST", f"/api/session/{sid}/input/scroll",
                               {"deltaX": 0, "deltaY": dy})
                await asyncio.sleep(0.3)
            await key(api, sid, "ArrowDown")
            seq = await settle(api, sid)
            await client.wait_seq(seq)
            response = next(t for t in client.texts if t["event"] == "subscribe:response")
            assert response["data"]["delta"] is True
            assert response["data"]["formats"] == ["jpeg", "png"]
            assert response["data"]["tile"] == 16
            await full.wait_for("frame", lambda f: f["seq"] >= seq)
            compare(client.state, full_frames(full), least=4)
            assert client.state.keys[:1] == [client.state.keys[0]] and client.state.updates
        finally:
            await client.close()
    await api.close(sid)


async def test_a_client_that_stops_reading_recovers_with_a_key_frame(
        api: Api, pages: PageServer, streamer: StreamerProcess) -> None:
    sid = (await api.create(url=pages.url("/anim"), **PHONE))["session_id"]

    def small_buffer_socket(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        return sock

    connector = aiohttp.TCPConnector(socket_factory=small_buffer_socket)
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"ws://127.0.0.1:{streamer.port}/api/session/{sid}/stream?delta=1"
        ws = await http.ws_connect(url, max_msg_size=0)
        client = WsDeltaClient(http, url)
        client.ws = ws
        # Read for a while, then stop reading for 3 s (the animation goes on: far more frames
        # than the server remembers), then read again.
        reader = asyncio.create_task(client._read())
        await asyncio.sleep(1.0)
        reader.cancel()
        keys_before = len(client.state.keys)
        await asyncio.sleep(3.0)
        client._task = asyncio.create_task(client._read())
        await asyncio.sleep(2.0)
        assert len(client.state.keys) > keys_before, "no key frame after falling behind"
        assert not client.state.rejected, client.state.rejected
        assert client.state.updates
        await client.close()
    await api.close(sid)


async def test_reconnect_and_key_on_demand(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/caret"), **PHONE))["session_id"]
    first = await SioDeltaClient(api.base).connect()
    await first.subscribe(sid)
    await first.wait("frame", lambda f: f.get("key"))
    await first.close()
    again = await SioDeltaClient(api.base).connect()
    try:
        await again.subscribe(sid)
        await again.wait("frame", lambda f: f.get("key"))  # a new connection starts with one
        count = len(again.state.keys)
        await again.client.emit("frame:key")
        await again.wait("frame", lambda f: f.get("key"), start=count)
        assert len(again.state.keys) == count + 1
        # A client whose picture went wrong asks for a key frame and gets one.
        again.state.seq = -5
        await api.call("POST", f"/api/session/{sid}/input/text", {"text": "x"})
        await again.wait("frame", lambda f: f.get("key"), start=count + 1)
        await api.wait_title(sid, lambda t: t == "text:x")
        seq = await settle(api, sid)
        await again.wait_seq(seq)
    finally:
        await again.close()
    await api.close(sid)


async def test_full_frame_clients_see_no_delta(api: Api, pages: PageServer) -> None:
    sid = (await api.create(url=pages.url("/caret"), **PHONE))["session_id"]
    async with SioProbe(api.base) as probe, Pair(api, sid):
        await probe.subscribe(sid)
        response = probe.events["subscribe:response"][-1][1]
        assert response["delta"] is False and "formats" not in response
        await api.call("POST", f"/api/session/{sid}/input/text", {"text": "q"})
        await asyncio.sleep(1.0)
        assert "frame:delta" not in probe.events
        assert all("key" not in f for f in probe.frames())
    await api.close(sid)


@pytest.mark.parametrize("payload, message", [
    ({"delta": "yes"}, "delta must be true or false"),
    ({"delta": 1}, "delta must be true or false"),
    ({"delta": True, "formats": ["jpeg", "gif"]}, "unknown image format 'gif'"),
    ({"delta": True, "formats": []}, "formats must be a non-empty list"),
    ({"delta": True, "formats": "jpeg"}, "formats must be a non-empty list"),
    ({"delta": True, "tile": 8}, "tile must be one of 16, 32, 64"),
    ({"delta": True, "tile": 100000}, "tile must be one of 16, 32, 64"),
    ({"delta": True, "encoding": "base64"}, "delta frames are binary"),
    ({"tile": 32}, "formats and tile apply to delta frames"),
])
async def test_bad_delta_requests(api: Api, pages: PageServer, payload: dict[str, Any],
                                  message: str) -> None:
    sid = (await api.create(url=pages.url("/static"), **PHONE))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.emit("subscribe", {"session_id": sid, **payload})
        error = await probe.wait_for("error")
        assert message in error["message"] and error["event"] == "subscribe", error
        assert "frame" not in probe.events
        await probe.emit("frame:key")
        error = await probe.wait_for("error", start=1)
        assert "not subscribed" in error["message"], error
    await api.close(sid)


@pytest.mark.parametrize("query, message", [
    ("delta=maybe", "delta must be 1 or 0"),
    ("delta=1&formats=jpeg,bmp", "unknown image format 'bmp'"),
    ("delta=1&tile=12", "tile must be one of 16, 32, 64"),
    ("delta=1&tile=99999999", "tile must be one of 16, 32, 64"),
    ("formats=png", "formats and tile apply to delta frames"),
])
async def test_bad_plain_websocket_delta_queries(api: Api, pages: PageServer, query: str,
                                                 message: str) -> None:
    sid = (await api.create(url=pages.url("/static"), **PHONE))["session_id"]
    status, answer = await api.call("GET", f"/api/session/{sid}/stream?{query}")
    assert status == 400 and message in answer["error"], (status, answer)
    await api.close(sid)


def test_web_viewer_applies_deltas(streamer: StreamerProcess, pages: PageServer) -> None:
    """The web app in headless Chromium subscribes with delta frames and rebuilds, on its
    canvas, the picture a full-frame client gets (PSNR >= 38 dB)."""
    import base64

    from test_webapp import chrome, live, open_from_launcher, rest, wait_until

    driver = chrome(width=360, height=560)
    sid = ""
    try:
        sid = open_from_launcher(driver, streamer.base, pages.url("/text"))
        state = wait_until(lambda: live(driver).get("keyFrames") and live(driver),
                           what="a key frame drawn")
        assert state["delta"] is True, state

        async def drive() -> tuple[dict[int, bytes], int]:
            async with aiohttp.ClientSession() as http, SioProbe(streamer.base) as full:
                api = Api(http, streamer.base)
                await full.subscribe(sid, quality=80)
                for dy in (80, 80, 160, -40):
                    await api.call("POST", f"/api/session/{sid}/input/scroll",
                                   {"deltaX": 0, "deltaY": dy})
                    await asyncio.sleep(0.3)
                await key(api, sid, "ArrowDown")
                await api.call("POST", f"/api/session/{sid}/input/click", {"x": 20, "y": 20})
                seq = await settle(api, sid)
                await full.wait_for("frame", lambda f: f["seq"] >= seq)
                return full_frames(full), seq

        frames, seq = asyncio.run(drive())
        wait_until(lambda: live(driver)["drawnSeq"] >= seq, what=f"seq {seq} on the canvas")
        drawn_seq, width, height, rgba = driver.execute_script(
            "var c = document.getElementById('screen'),"
            "    d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, s = '';"
            "for (var i = 0; i < d.length; i += 8192)"
            "  s += String.fromCharCode.apply(null, d.subarray(i, i + 8192));"
            "return [window.jiomosa.drawnSeq, c.width, c.height, btoa(s)];")
        canvas = np.frombuffer(base64.b64decode(rgba), np.uint8).reshape(height, width, 4)
        reference = decode(frames[drawn_seq])
        value = psnr(canvas[..., :3], reference)
        state = live(driver)
        assert value >= 38.0, (value, state)
        assert state["updates"] >= 3 and state["keyRequests"] == 0, state
        assert not state["errors"], state["errors"]
    finally:
        if sid:
            rest(streamer.base, "POST", f"/api/session/{sid}/close")
        driver.quit()
