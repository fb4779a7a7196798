"""Delta frames (issue 14): bytes on the wire and streamer CPU, full frames vs delta.

Not a test: a measurement. It starts a real streamer (local Chromium) and the test pages,
and for 240x320 and 1280x720 measures, with a plain WebSocket client in each mode (message
sizes exactly as on the wire) and a Socket.IO delta client (image bytes):

- an idle page with a focused text field (caret blink), bytes per second;
- typing, bytes per character;
- a quarter-screen wheel scroll of a text page, bytes vs one full frame.

Then the CPU the streamer spends per frame on delta work (decode + cell compare, copy
verification, encode), by running ``jiomosa.frames.delta`` on the captured frames in this
process. Run: ``.venv/bin/python bench/delta.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import Api, PageServer, StreamerProcess, build_pages  # noqa: E402

from jiomosa.frames import delta, tiles  # noqa: E402
from jiomosa.frames.hub import Frame  # noqa: E402


class Counter:
    """A plain WebSocket client counting every binary message's size."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.messages: list[tuple[float, int, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Counter:
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()
        if self._task:
            self._task.cancel()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.messages.append((time.monotonic(), len(msg.data), msg.data))

    def since(self, t: float) -> list[int]:
        return [n for at, n, _ in self.messages if at >= t]


async def measure(api: Api, http: aiohttp.ClientSession, base_ws: str, pages: PageServer,
                  width: int, height: int, frames_out: list[tuple[bytes, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Caret and typing.
    sid = (await api.create(url=pages.url("/caret"), width=width, height=height))["session_id"]
    url = f"{base_ws}/api/session/{sid}/stream"
    async with Counter(http, url) as full, Counter(http, url + "?delta=1") as dlt, Counter(
            http, url + "?delta=1&formats=jpeg,png,webp") as webp:
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        await asyncio.sleep(10.0)
        span = time.monotonic() - t0
        out["caret B/s"] = (sum(full.since(t0)) / span, sum(dlt.since(t0)) / span)
        out["caret B/s, with webp"] = (sum(full.since(t0)) / span, sum(webp.since(t0)) / span)
        t0 = time.monotonic()
        text = "the quick brown fox"
        for ch in text:
            await api.call("POST", f"/api/session/{sid}/input/text", {"text": ch})
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.3)
        span = time.monotonic() - t0
        # Everything sent while typing (the caret blinks meanwhile too), per character.
        out["per char B"] = (sum(full.since(t0)) / len(text), sum(dlt.since(t0)) / len(text))
        out["per char B, with webp"] = (sum(full.since(t0)) / len(text),
                                        sum(webp.since(t0)) / len(text))
        frames_out.extend((m[2][24:], "caret") for m in full.messages)
    await api.close(sid)
    # Quarter-screen scroll of a text page.
    sid = (await api.create(url=pages.url("/text"), width=width, height=height))["session_id"]
    url = f"{base_ws}/api/session/{sid}/stream"
    async with Counter(http, url) as full, Counter(http, url + "?delta=1") as dlt:
        await asyncio.sleep(1.5)
        frame = statistics.median(n for _, n, _ in full.messages)
        out["full frame B"] = frame
        # A quarter screen, then the nearest multiple of 16 pixels below it: Chrome's JPEG
        # of content moved by other amounts has other compression noise, so copies serve
        # only moves by multiples of 8 at full quality (docs/protocol.md).
        quarter = height // 4
        for step in dict.fromkeys((quarter, quarter // 16 * 16)):
            sizes_full, sizes_delta = [], []
            for _ in range(5):
                t0 = time.monotonic()
                await api.call("POST", f"/api/session/{sid}/input/scroll",
                               {"deltaX": 0, "deltaY": step})
                await asyncio.sleep(0.8)
                sizes_full.append(sum(full.since(t0)))
                sizes_delta.append(sum(dlt.since(t0)))
            name = f"scroll {step}px"
            out[f"{name} B"] = (statistics.median(sizes_full), statistics.median(sizes_delta))
            out[f"{name} % of frame"] = 100 * statistics.median(sizes_delta) / frame
        frames_out.extend((m[2][24:], "scroll") for m in full.messages)
    await api.close(sid)
    return out


def cpu(frames: list[tuple[bytes, Any]], width: int, height: int) -> dict[str, float]:
    """Milliseconds per frame of delta work on captured frames, in this process: caret and
    typing frames, and scroll frames apart (the heavier case)."""
    out: dict[str, float] = {}
    for label in ("caret", "scroll"):
        for name, value in _cpu([f for f in frames if f[1] == label], width, height).items():
            out[f"{label}: {name}"] = value
    return out


def _cpu(frames: list[tuple[bytes, Any]], width: int, height: int) -> dict[str, float]:
    analyse, plan, enc = [], [], []
    previous: delta.Picture | None = None
    rows, cols = tiles.cells_of(width, height)
    for i, (jpeg, _) in enumerate(frames):
        frame = Frame(i + 1, jpeg, width, height, 80, time.time())
        t = time.perf_counter()
        picture = delta.analyse(frame, previous)
        analyse.append(time.perf_counter() - t)
        if previous is not None and picture.changed is not None and picture.changed.any():
            t = time.perf_counter()
            dirty = picture.changed
            cands = tiles.shift_candidates(None, None, picture.pixels, previous.pixels,
                                           height, dirty)
            matches = [tiles.verify_shift(picture.pixels, previous.pixels, width, height,
                                          dx, dy, dirty, delta.COPY_MSE) for dx, dy in cands]
            lay = delta.layout(previous, picture, dirty, 32, np.zeros((rows, cols), np.float32),
                               matches)
            plan.append(time.perf_counter() - t)
            rects = tiles.rects(lay.image_tiles, 32, width, height)
            t = time.perf_counter()
            if rects and not lay.key:
                delta.encode(picture.pixels, rects, dirty, ("jpeg", "png"), 80)
            enc.append(time.perf_counter() - t)
        previous = picture
    ms = 1000.0
    return {"decode+compare ms (median)": ms * statistics.median(analyse),
            "copy search+layout ms (median)": ms * statistics.median(plan),
            "encode ms (median)": ms * statistics.median(enc),
            "compare+encode ms (median, no decode)": ms * (statistics.median(plan)
                                                           + statistics.median(enc)),
            "all delta work ms (max)": ms * (max(analyse) + max(plan) + max(enc))}


async def main() -> None:
    trap = PageServer("127.0.0.1")
    pages = build_pages(trap)
    streamer = StreamerProcess(log_dir=Path("/tmp")).start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, streamer.base)
            base_ws = f"ws://127.0.0.1:{streamer.port}"
            for width, height in ((240, 320), (1280, 720)):
                frames: list[tuple[bytes, Any]] = []
                result = await measure(api, http, base_ws, pages, width, height, frames)
                result.update(cpu(frames, width, height))
                print(f"{width}x{height}")
                for name, value in result.items():
                    if isinstance(value, tuple):
                        print(f"  {name:45s} full {value[0]:8.0f}  delta {value[1]:8.0f}")
                    else:
                        print(f"  {name:45s} {value:10.2f}")
    finally:
        streamer.stop()
        pages.shutdown()
        trap.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
