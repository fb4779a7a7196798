"""The device side of ``make bench-link`` (bench/link.py runs this inside the client's
network namespace, at the far end of the emulated link).

    python bench/linkclients.py --base http://10.203.0.1:5000 --dev jmlink0 \
        --pages http://127.0.0.5:8000 --streamer-pid PID --size 240x320 [--c-client BIN]

For each mode (full frames, then delta frames) one session of the given size is viewed by a
stock python-socketio client, which holds the picture the way a device does: the last JPEG
(full frames) or the picture rebuilt from key frames and updates (tests/deltaclient.py, the
contract's reader). Figures: downlink bytes at the link (the client namespace's rx_bytes of
the link device: IP packets, headers included), tap -> picture latencies, the streamer's CPU
per frame delivered, and the C client idling on the same page. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import socketio
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
try:  # the contract's reader (tests/deltaclient.py): the delta half needs it
    deltaclient: Any = importlib.import_module("deltaclient")
except ImportError:
    deltaclient = None

CLK = os.sysconf("SC_CLK_TCK")
TAP = (20, 20)  # inside the toggling area of /color and /linkanim
Pixel = tuple[int, int, int]


def rx_bytes(dev: str) -> int:
    return int(Path(f"/sys/class/net/{dev}/statistics/rx_bytes").read_text())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p + 0.5) - 1))], 1)


class Viewer:
    """One Socket.IO client following one session and holding its picture."""

    def __init__(self, base: str, delta: bool) -> None:
        self.base = base
        self.delta = delta
        self.sio = socketio.AsyncClient(reconnection=False)
        self.state = deltaclient.DeltaState() if delta else None
        self.jpeg = b""  # full frames: the last one
        self.decoded: tuple[int, np.ndarray] | None = None
        self.seq = -1
        self.frames = 0  # pictures taken (frames and updates)
        self.last_at = 0.0
        self.full_sizes: list[int] = []  # JPEG bytes of whole pictures (frames, key frames)
        self.ages: list[float] = []  # ms from capture (the frame's timestamp) to arrival
        self.response: dict[str, Any] = {}
        self.errors: list[Any] = []
        self.watch: tuple[Callable[[Pixel], bool], asyncio.Future[float]] | None = None
        self.sio.on("frame", self._frame)
        self.sio.on("frame:delta", self._delta)
        self.sio.on("subscribe:response", self._response)
        self.sio.on("error", self._error)

    async def _response(self, data: dict[str, Any]) -> None:
        self.response = data

    async def _error(self, data: Any) -> None:
        self.errors.append(data)

    async def _frame(self, data: dict[str, Any]) -> None:
        self.ages.append((time.time() - data["timestamp"]) * 1000)  # same clock: one machine
        image = bytes(data["image"])
        self.full_sizes.append(len(image))
        if self.state is not None:
            if not data.get("key"):
                return
            self.state.key(data["seq"], image)
        else:
            self.jpeg = image
        self._taken(data["seq"])

    async def _delta(self, data: dict[str, Any]) -> None:
        assert self.state is not None
        self.ages.append((time.time() - data["timestamp"]) * 1000)
        before = len(self.state.rejected)
        self.state.apply(deltaclient.update_of_event(data))
        self.state.pictures.clear()  # the reader keeps every picture for tests: not here
        if len(self.state.rejected) > before:
            await self.sio.emit("frame:key")
            return
        self._taken(data["seq"])

    def _taken(self, seq: int) -> None:
        self.seq, self.frames, self.last_at = seq, self.frames + 1, time.monotonic()
        if self.watch is not None and not self.watch[1].done() and self.watch[0](self.pixel()):
            self.watch[1].set_result(self.last_at)

    def pixel(self, x: int = TAP[0], y: int = TAP[1]) -> Pixel:
        if self.state is not None:
            assert self.state.picture is not None
            r, g, b = self.state.picture[y, x]
        else:
            if self.decoded is None or self.decoded[0] != self.seq:
                with Image.open(io.BytesIO(self.jpeg)) as image:
                    self.decoded = (self.seq, np.asarray(image.convert("RGB")))
            r, g, b = self.decoded[1][y, x]
        return int(r), int(g), int(b)

    async def open(self, session_id: str) -> None:
        await self.sio.connect(self.base, transports=["websocket"], wait_timeout=60)
        payload: dict[str, Any] = {"session_id": session_id}
        if self.delta:
            payload.update(delta=True, formats=["jpeg", "png"])
        await self.sio.emit("subscribe", payload)
        deadline = time.monotonic() + 60
        while self.frames == 0:
            if self.errors or time.monotonic() > deadline:
                raise RuntimeError(f"no picture: errors {self.errors}")
            await asyncio.sleep(0.05)
        if self.delta and not self.response.get("delta"):
            raise NotImplementedError(f"the streamer did not agree to delta frames: "
                                      f"{self.response}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()

    async def quiet(self, seconds: float = 1.0, cap: float = 30.0) -> None:
        """Until no picture has come for ``seconds`` (at most ``cap``)."""
        deadline = time.monotonic() + cap
        await asyncio.sleep(seconds)
        while time.monotonic() - self.last_at < seconds and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def taps(self, count: int) -> list[float]:
        """Milliseconds from emitting a click at TAP to holding a picture whose pixel there
        flipped (black <-> white)."""
        out: list[float] = []
        for _ in range(count):
            await asyncio.sleep(0.3)
            dark = self.pixel()[0] < 128
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            self.watch = ((lambda p, d=dark: (p[0] < 128) != d), future)
            t0 = time.monotonic()
            await self.sio.emit("input:click", {"x": TAP[0], "y": TAP[1]})
            try:
                out.append((await asyncio.wait_for(future, 30) - t0) * 1000)
            except TimeoutError:
                out.append(30_000.0)  # counted, so a lost tap shows in p90
            finally:
                self.watch = None
        return out


class Session:
    """REST calls over the link."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.id = ""

    async def create(self, url: str, width: int, height: int) -> str:
        async with self.http.post(f"{self.base}/api/session/create",
                                  json={"url": url, "width": width, "height": height}) as r:
            body = await r.json()
            if r.status != 201:
                raise RuntimeError(f"create: {r.status} {body}")
        self.id = body["session_id"]
        return self.id

    async def load(self, url: str) -> None:
        async with self.http.post(f"{self.base}/api/session/{self.id}/load",
                                  json={"url": url}) as r:
            if r.status != 200:
                raise RuntimeError(f"load {url}: {r.status} {await r.text()}")

    async def current_frame(self) -> tuple[int, int]:
        """Seq and size of the page's current picture as Chrome encoded it (the session's
        quality, whatever quality a client was adapted to)."""
        async with self.http.get(f"{self.base}/api/session/{self.id}/frame") as r:
            if r.status != 200:
                raise RuntimeError(f"frame: {r.status}")
            return int(r.headers["X-Frame-Seq"]), len(await r.read())

    async def click(self, x: int, y: int) -> None:
        async with self.http.post(f"{self.base}/api/session/{self.id}/input/click",
                                  json={"x": x, "y": y}) as r:
            if r.status != 200:
                raise RuntimeError(f"click: {r.status} {await r.text()}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with self.http.post(f"{self.base}/api/session/{self.id}/close") as r:
                await r.read()


async def c_client_idle(binary: str, base: str, session_id: str, delta: bool, dev: str,
                        seconds: float) -> dict[str, Any]:
    rx0 = rx_bytes(dev)
    proc = await asyncio.create_subprocess_exec(
        binary, "-s", base, "-S", session_id, *(["-d"] if delta else []), "-t", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    done = re.search(rb"^done frames=(\d+) bytes=(\d+) seconds=([\d.]+).*peak_rss_kb=(\d+)$",
                     out, re.M)
    if proc.returncode != 0 or not done:
        return {"error": (out[-300:] + err[-300:]).decode(errors="replace")}
    frames, payload, secs, rss = (float(v) for v in done.groups())
    return {"wire_bytes_per_s": round((rx_bytes(dev) - rx0) / secs),
            "payload_bytes_per_s": round(payload / secs), "frames": int(frames),
            "peak_rss_kb": int(rss)}


def step(name: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)


async def run_mode(args: argparse.Namespace, delta: bool, out: dict[str, Any]) -> None:
    """Fills ``out`` figure by figure (what was measured stays if a later step fails)."""
    width, height = (int(v) for v in args.size.split("x"))
    pages, dev = args.pages, args.dev
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        session = Session(http, args.base)
        await session.create(f"{pages}/form", width, height)
        viewer = Viewer(args.base, delta)
        cpu0 = cpu_seconds(args.streamer_pid)
        try:
            step("subscribe")
            await viewer.open(session.id)
            step("idle caret")
            # Idle: a focused input, its caret blinking.
            await asyncio.sleep(3)
            rx0, frames0 = rx_bytes(dev), viewer.frames
            await asyncio.sleep(args.idle_seconds)
            out["idle_bytes_per_s"] = round((rx_bytes(dev) - rx0) / args.idle_seconds)
            out["idle_frames"] = viewer.frames - frames0
            # Typing: one character at a time into an input whose caret is hidden (its
            # blinking is the idle figure), until the picture stops changing.
            step("typing")
            await session.load(f"{pages}/linktype")
            await viewer.quiet(1.5)
            text = "hello from the far end"[:args.chars]
            rx0 = rx_bytes(dev)
            for ch in text:
                await viewer.sio.emit("input:text", {"text": ch})
                await asyncio.sleep(args.char_interval)
            await viewer.quiet(1.5)
            out["typing_bytes_per_char"] = round((rx_bytes(dev) - rx0) / len(text))
            # Taps on a page that turns black <-> white where it is clicked.
            step("taps")
            await session.load(f"{pages}/color")
            await viewer.quiet(1.0)
            taps = await viewer.taps(args.taps)
            out["tap_p50_ms"], out["tap_p90_ms"] = percentile(taps, 0.5), percentile(taps, 0.9)
            # Quarter-screen scrolls of a text page, against the size of a whole picture.
            step("scrolls")
            await session.load(f"{pages}/linktext")
            await viewer.quiet(1.5)
            full = (await session.current_frame())[1]
            await viewer.quiet(1.0)
            spent: list[int] = []
            for _ in range(args.scrolls):
                rx0 = rx_bytes(dev)
                await viewer.sio.emit("input:scroll", {"deltaX": 0, "deltaY": height // 4,
                                                       "x": width // 2, "y": height // 2})
                await viewer.quiet(1.5)
                spent.append(rx_bytes(dev) - rx0)
            out["scroll_bytes"] = round(statistics.mean(spent))
            out["scroll_full_frame_bytes"] = full
            out["scroll_pct_of_full"] = round(100 * statistics.mean(spent) / full, 1)
            # Taps while the whole screen animates.
            step("taps during an animation")
            await session.load(f"{pages}/linkanim")
            await asyncio.sleep(2)
            first = len(viewer.ages)
            taps = await viewer.taps(args.taps)
            out["anim_tap_p50_ms"] = percentile(taps, 0.5)
            out["anim_tap_p90_ms"] = percentile(taps, 0.9)
            # How old the pictures were on arrival: where the time goes (queues before the
            # client, or the link itself).
            out["anim_frame_age_p50_ms"] = percentile(viewer.ages[first:], 0.5)
            cpu = cpu_seconds(args.streamer_pid) - cpu0
            out["frames"] = viewer.frames
            out["streamer_cpu_ms_per_frame"] = round(cpu * 1000 / max(viewer.frames, 1), 1)
            if viewer.state is not None:
                out["rejected"] = len(viewer.state.rejected)
                out["key_frames"] = len(viewer.state.keys)
        finally:
            await viewer.close()
        if args.c_client:
            step("C client")
            await session.load(f"{pages}/form")
            # A tap in the input: after the animation the page sometimes keeps its caret
            # still (autofocus alone), and then there would be nothing to stream.
            await session.click(30, 18)
            await asyncio.sleep(2)
            seq0 = (await session.current_frame())[0]
            out["c_client_idle"] = await c_client_idle(args.c_client, args.base, session.id,
                                                       delta, dev, args.idle_seconds)
            # Frames the page made meanwhile: tells a client that was not sent them from a
            # page that did not repaint.
            out["c_client_idle"]["session_frames"] = (await session.current_frame())[0] - seq0
        await session.close()


async def wait_ready(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(f"{base}/health") as r:
                    if r.status == 200 and (await r.json()).get("warm_browsers", 0) >= 1:
                        return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the streamer at {base} did not become ready")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    await wait_ready(args.base)
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        results[mode] = {}
        step(f"{mode} frames")
        try:
            if mode == "delta" and deltaclient is None:
                raise NotImplementedError("tests/deltaclient.py is missing")
            await run_mode(args, mode == "delta", results[mode])
        except NotImplementedError as e:
            results[mode] = {"unavailable": str(e)}
        except Exception as e:  # the other mode still runs; the table shows what failed
            results[mode]["failed"] = f"{type(e).__name__}: {e}"
        print(f"{mode}: {json.dumps(results[mode])}", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--pages", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--streamer-pid", type=int, required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--modes", default="full,delta")
    parser.add_argument("--c-client", default="")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--chars", type=int, default=20)
    parser.add_argument("--char-interval", type=float, default=0.3)
    parser.add_argument("--taps", type=int, default=15)
    parser.add_argument("--scrolls", type=int, default=4)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
