"""Fleet benchmark (issue #4): one session, clients spread over three streamers.

    make bench-fleet      # or: .venv/bin/python bench/fleet.py

Starts a redis-server, a standalone chromedriver (the "Grid") and three streamers sharing
them, creates one 1280x720 session on an animated page on streamer A, and measures
(a) 18 clients all on A (the preferred path: the ingress hashes every client of a session to
its owner) and (b) 6 clients on each of A, B and C (B and C relay the frames through Redis).
Prints fps per group of clients and the CPU of every process involved.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import Api, Grid, PageServer, RedisServer, SioProbe, StreamerProcess, build_pages
from run import cpu_seconds, process_tree, rate

OUT = Path(__file__).resolve().parent / "out"
SECONDS = 5.0


async def measure(apis: list[Api], streamers: list[StreamerProcess], redis: RedisServer,
                  sid: str, placement: list[int]) -> dict[str, Any]:
    probes = [SioProbe(apis[i].base, f"session_id={sid}") for i in placement]
    for probe in probes:
        await probe.__aenter__()
    await asyncio.gather(*(p.subscribe(sid) for p in probes))
    await asyncio.sleep(1.5)
    pids = {name: [s.proc.pid] for name, s in zip("abc", streamers, strict=True)
            if s.proc is not None}
    assert redis.proc is not None
    pids["redis"] = [redis.proc.pid]
    before = {k: cpu_seconds(v) for k, v in pids.items()}
    publishes = redis.calls("publish")
    start = time.monotonic()
    await asyncio.sleep(SECONDS)
    end = time.monotonic()
    after = {k: cpu_seconds(v) for k, v in pids.items()}
    fps: dict[str, list[float]] = {}
    for i, probe in zip(placement, probes, strict=True):
        fps.setdefault("abc"[i], []).append(
            rate([t for t, _ in probe.events["frame"]], start, end))
    for probe in probes:
        await probe.__aexit__(None, None, None)
    wall = end - start
    return {
        "clients": {k: len(v) for k, v in fps.items()},
        "fps_min": {k: round(min(v), 1) for k, v in fps.items()},
        "fps_median": {k: round(statistics.median(v), 1) for k, v in fps.items()},
        "cpu_pct": {k: round(100 * (after[k] - before[k]) / wall, 1) for k in pids},
        "redis_publishes_per_s": round((redis.calls("publish") - publishes) / wall, 1),
    }


async def main() -> dict[str, Any]:
    trap = PageServer("127.0.0.1")
    pages = build_pages(trap)
    workdir = Path(tempfile.mkdtemp(prefix="jiomosa-fleet-"))
    redis = RedisServer(workdir)
    redis.start()
    grid = Grid()
    env = {"JIOMOSA_STORE": "redis", "JIOMOSA_REDIS_URL": redis.url, "JIOMOSA_BACKEND": "grid",
           "JIOMOSA_GRID_URL": grid.url, "JIOMOSA_WARM_BROWSERS": "0",
           "JIOMOSA_LOG_LEVEL": "WARNING"}
    streamers = [StreamerProcess({**env, "JIOMOSA_STREAMER_ID": n}, log_dir=workdir).start()
                 for n in "abc"]
    results: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            apis = [Api(http, s.base) for s in streamers]
            sid = (await apis[0].create(url=pages.url("/anim")))["session_id"]
            browser = [p for p in process_tree(grid.proc.pid) if p != grid.proc.pid]
            b0 = cpu_seconds(browser)
            t0 = time.monotonic()
            results["direct"] = await measure(apis, streamers, redis, sid, [0] * 18)
            print("direct ", json.dumps(results["direct"]), flush=True)
            results["spread"] = await measure(apis, streamers, redis, sid, [0, 1, 2] * 6)
            print("spread ", json.dumps(results["spread"]), flush=True)
            results["chromium_cpu_pct"] = round(
                100 * (cpu_seconds(browser) - b0) / (time.monotonic() - t0), 1)
            await apis[0].close(sid)
    finally:
        for s in streamers:
            s.stop()
        grid.stop()
        redis.stop()
        pages.shutdown()
        trap.shutdown()
    return results


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    figures = asyncio.run(main())
    (OUT / "fleet.json").write_text(json.dumps(figures, indent=2))
    d, s = figures["direct"], figures["spread"]
    print()
    print("| placement | clients (a/b/c) | slowest fps (a/b/c) | CPU % a / b / c / redis | "
          "Redis publishes/s |")
    print("|---|---|---|---|---|")
    for name, r in (("all on the owner", d), ("spread over 3", s)):
        clients = "/".join(str(r["clients"].get(k, 0)) for k in "abc")
        fps = "/".join(str(r["fps_min"].get(k, "-")) for k in "abc")
        cpu = " / ".join(str(r["cpu_pct"][k]) for k in ("a", "b", "c", "redis"))
        print(f"| {name} | {clients} | {fps} | {cpu} | {r['redis_publishes_per_s']} |")
