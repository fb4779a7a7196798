"""Streamer benchmark: starts the service and a page server, prints the figures of issue #2.

    make bench            # or: .venv/bin/python bench/run.py [--quick]

Figures (1280x720 session): fps on an animated page; wire bytes/s on a static page;
click -> changed-frame latency p50/p90; create -> first frame; fan-out of one session to 20
Socket.IO clients (fps each, streamer CPU). Clients are stock python-socketio clients in this
process, so their own CPU shares the machine with the streamer and Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import (
    Api,
    PageServer,
    SioProbe,
    StreamerProcess,
    build_pages,
    pixel,
)

OUT = Path(__file__).resolve().parent / "out"
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK


def process_tree(pid: int) -> list[int]:
    from helpers import descendants

    return [pid, *descendants(pid)]


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes of every connection through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = 0  # server -> client
        self.up = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    down: bool) -> None:
        try:
            while data := await reader.read(65536):
                if down:
                    self.down += len(data)
                else:
                    self.up += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, w2, False), self._pipe(r2, writer, True))

    async def stop(self) -> None:
        if self.server:
            self.server.close()


def rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t <= end) / (end - start)


async def bench_animated_fps(api: Api, pages: PageServer, seconds: float) -> dict[str, Any]:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    async with SioProbe(api.base) as probe:
        await probe.subscribe(sid)
        await asyncio.sleep(1.0)
        _, before = await api.call("GET", f"/api/session/{sid}/info")
        start = time.monotonic()
        await asyncio.sleep(seconds)
        _, after = await api.call("GET", f"/api/session/{sid}/info")
        elapsed = time.monotonic() - start
        times = [t for t, _ in probe.events["frame"]]
        fps = rate(times, start, start + seconds)
        sizes = [len(d["image"]) for t, d in probe.events["frame"] if t >= start]
    await api.close(sid)
    # Chrome's own output rate tells apart a slow browser from frames lost on our side.
    source = (after["frame_seq"] - before["frame_seq"]) / elapsed
    return {"fps": round(fps, 1), "chrome_fps": round(source, 1),
            "mean_frame_kb": round(statistics.mean(sizes) / 1024, 1)}


async def bench_static_bytes(api: Api, pages: PageServer, port: int,
                             seconds: float) -> dict[str, Any]:
    sid = (await api.create(url=pages.url("/static")))["session_id"]
    proxy = CountingProxy(port)
    await proxy.start()
    async with SioProbe(f"http://127.0.0.1:{proxy.port}") as probe:
        await probe.subscribe(sid)
        await asyncio.sleep(1.0)
        down0, up0 = proxy.down, proxy.up
        start = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - start
        down, up = proxy.down - down0, proxy.up - up0
        frames = sum(1 for t, _ in probe.events["frame"] if t >= start)
    await proxy.stop()
    await api.close(sid)
    return {"bytes_per_s_down": round(down / elapsed, 1), "bytes_per_s_up": round(up / elapsed, 1),
            "frames": frames, "seconds": round(elapsed, 1)}


async def bench_click_latency(api: Api, pages: PageServer, clicks: int) -> dict[str, Any]:
    sid = (await api.create(url=pages.url("/color")))["session_id"]
    latencies: list[float] = []
    async with SioProbe(api.base) as probe:
        frame = await probe.subscribe(sid)
        await probe.wait_for("frame", lambda f: pixel(f["image"], 10, 10)[0] < 30)
        dark = True
        for _ in range(clicks):
            await asyncio.sleep(0.15)
            start_index = len(probe.events["frame"])
            t0 = time.monotonic()
            await probe.emit("input:click", {"x": 20, "y": 20})
            want_dark = not dark
            await probe.wait_for(
                "frame", lambda f, w=want_dark: (pixel(f["image"], 10, 10)[0] < 30) == w,
                start=start_index)
            # The receive time was recorded by the client before we decoded anything.
            for t, data in probe.events["frame"][start_index:]:
                if (pixel(data["image"], 10, 10)[0] < 30) == want_dark:
                    latencies.append((t - t0) * 1000)
                    break
            dark = want_dark
        del frame
    await api.close(sid)
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 1),
            "p90_ms": round(latencies[int(len(latencies) * 0.9) - 1], 1),
            "min_ms": round(latencies[0], 1), "max_ms": round(latencies[-1], 1),
            "clicks": len(latencies)}


async def bench_create_first_frame(api: Api, pages: PageServer, runs: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"blank": [], "with_url": []}
    async with SioProbe(api.base) as probe:
        for i in range(runs * 2):
            kind = "blank" if i % 2 == 0 else "with_url"
            await _wait_warm(api)
            t0 = time.monotonic()
            body = {"url": pages.url("/static")} if kind == "with_url" else {}
            sid = (await api.create(**body))["session_id"]
            start = len(probe.events["frame"])
            await probe.emit("subscribe", {"session_id": sid})
            await probe.wait_for("frame", lambda f, s=sid: f["session_id"] == s, start=start)
            out[kind].append((time.monotonic() - t0) * 1000)
            await api.close(sid)
    return {k: {"median_ms": round(statistics.median(v), 1), "max_ms": round(max(v), 1)}
            for k, v in out.items()}


async def _wait_warm(api: Api, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, health = await api.call("GET", "/health")
        if health["warm_browsers"] >= 1:
            return
        await asyncio.sleep(0.1)


async def bench_fanout(api: Api, pages: PageServer, proc: StreamerProcess, clients: int,
                       seconds: float) -> dict[str, Any]:
    sid = (await api.create(url=pages.url("/anim")))["session_id"]
    probes = [SioProbe(api.base) for _ in range(clients)]
    for probe in probes:
        await probe.__aenter__()
    await asyncio.gather(*(p.subscribe(sid) for p in probes))
    await asyncio.sleep(1.0)
    assert proc.proc is not None
    streamer_pid = proc.proc.pid
    browser_pids = [p for p in process_tree(streamer_pid) if p != streamer_pid]
    s0, b0, own0 = cpu_seconds([streamer_pid]), cpu_seconds(browser_pids), time.process_time()
    start = time.monotonic()
    await asyncio.sleep(seconds)
    end = time.monotonic()
    s1, b1, own1 = cpu_seconds([streamer_pid]), cpu_seconds(browser_pids), time.process_time()
    rates = [rate([t for t, _ in p.events["frame"]], start, end) for p in probes]
    for probe in probes:
        await probe.__aexit__(None, None, None)
    await api.close(sid)
    wall = end - start
    return {"clients": clients, "fps_min": round(min(rates), 1),
            "fps_median": round(statistics.median(rates), 1), "fps_max": round(max(rates), 1),
            "streamer_cpu_pct": round(100 * (s1 - s0) / wall, 1),
            "chromium_cpu_pct": round(100 * (b1 - b0) / wall, 1),
            "bench_clients_cpu_pct": round(100 * (own1 - own0) / wall, 1)}


async def main(quick: bool) -> dict[str, Any]:
    trap = PageServer("127.0.0.1")
    pages = build_pages(trap)
    proc = StreamerProcess({"JIOMOSA_LOG_LEVEL": "WARNING", "JIOMOSA_MAX_SESSIONS": "4"},
                           log_dir=OUT).start()
    seconds = 3.0 if quick else 5.0
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, proc.base)
            steps = [
                ("animated_fps", bench_animated_fps(api, pages, seconds)),
                ("static_wire", bench_static_bytes(api, pages, proc.port, 5.0 if quick else 10.0)),
                ("click_latency", bench_click_latency(api, pages, 15 if quick else 40)),
                ("create_first_frame", bench_create_first_frame(api, pages, 3 if quick else 6)),
                ("fanout", bench_fanout(api, pages, proc, 20, seconds)),
            ]
            for name, coro in steps:
                results[name] = await coro
                print(f"{name:20s} {json.dumps(results[name])}", flush=True)
    finally:
        proc.stop()
        pages.shutdown()
        trap.shutdown()
    return results


TARGETS = [
    ("animated_fps.fps", ">=", 55, "fps on an animated page"),
    ("static_wire.bytes_per_s_down", "<=", 1024, "wire bytes/s on a static page"),
    ("click_latency.p50_ms", "<=", 40, "click -> changed frame p50 (ms)"),
    ("click_latency.p90_ms", "<=", 60, "click -> changed frame p90 (ms)"),
    ("create_first_frame.with_url.median_ms", "<=", 700, "create -> first frame (ms)"),
    ("fanout.fps_min", ">=", 45, "20 clients: slowest client's fps"),
]


def report(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']}, {results['date']}", "",
             "| figure | target | measured | |", "|---|---|---|---|"]
    for path, op, target, label in TARGETS:
        value: Any = results
        for part in path.split("."):
            value = value[part]
        ok = value >= target if op == ">=" else value <= target
        lines.append(f"| {label} | {op} {target} | {value} | {'ok' if ok else 'MISSED'} |")
    fan = results["fanout"]
    lines.append(f"| 20 clients: median fps / streamer CPU / Chromium CPU | | "
                 f"{fan['fps_median']} / {fan['streamer_cpu_pct']}% / "
                 f"{fan['chromium_cpu_pct']}% | |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    figures = asyncio.run(main(args.quick))
    (OUT / "results.json").write_text(json.dumps(figures, indent=2))
    print()
    print(report(figures))
