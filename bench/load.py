"""Load test (issue #13): one streamer with its production limits under a crowd.

    make bench-load      # or: .venv/bin/python bench/load.py

Starts a streamer (local Chromium, the default abuse limits), opens two sessions on the
animated page, each watched by a Socket.IO client, and measures their fps first alone, then
while the crowd is on:

* 1,000 concurrent Socket.IO connections (raw Engine.IO v4 websockets, answering pings), from
  50 loopback addresses (127.0.1.x), 20 each: within the per-address limits, so all should
  stay; plus one address that tries 100 and is held to its limits;
* session creates at 200/s for 10 s from 100 rotating addresses, the streamer already at its
  capacity (JIOMOSA_MAX_SESSIONS=2, both watched): every create is refused, with 429 (rate,
  per address) or 503 (capacity). What a refusal costs is the figure: an accepted create
  costs a browser start (~1 s of a core), which capacity planning (MAX_SESSIONS per core)
  answers, not the limits.

Prints the answers by status, refusal latency, the watched sessions' fps before and during,
and the streamer's CPU and memory (RSS) before, at the peak and after.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from helpers import (  # noqa: E402
    ADMIN,
    NO_ABUSE_LIMITS,
    PageServer,
    SioProbe,
    StreamerProcess,
    build_pages,
)
from run import cpu_seconds, rate  # noqa: E402

CROWD_ADDRESSES = 50
PER_ADDRESS = 20  # the default connect burst per address
GREEDY = 100  # connections one address tries
CREATE_RATE = 200.0
CREATE_SECONDS = 10.0
WINDOW = 5.0


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:"))) / 1024


async def eio_connection(base: str, source: str, stop: asyncio.Event,
                         results: collections.Counter[str]) -> None:
    """One raw Socket.IO client: Engine.IO open, namespace connect, pongs until stopped."""
    url = base.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    try:
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5),
                                max_msg_size=1 << 20) as ws:
            opened = await asyncio.wait_for(ws.receive(), 10)
            if opened.type != aiohttp.WSMsgType.TEXT or not str(opened.data).startswith("0"):
                results["refused at open"] += 1
                return
            await ws.send_str("40")
            # The connect handler's `status` event may come before the namespace's "40".
            while True:
                connected = await asyncio.wait_for(ws.receive(), 10)
                if connected.type != aiohttp.WSMsgType.TEXT or str(connected.data).startswith(
                        "44"):
                    results["refused at connect"] += 1
                    return
                if str(connected.data).startswith("40"):
                    break
            results["connected"] += 1
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.receive(), 1.0)
                except TimeoutError:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    results["closed by the server"] += 1
                    return
                if message.data == "2":
                    await ws.send_str("3")
            results["held to the end"] += 1
    except aiohttp.WSServerHandshakeError as exc:
        results[f"refused {exc.status}"] += 1
    except (aiohttp.ClientError, OSError, TimeoutError):
        results["failed to connect"] += 1


async def create_flood(base: str, url: str) -> dict[str, Any]:
    statuses: collections.Counter[int] = collections.Counter()
    refusal_ms: list[float] = []
    retry_after: list[int] = []
    created: list[str] = []
    sessions = {f"127.0.2.{i}": aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(f"127.0.2.{i}", 0)))
        for i in range(1, 101)}
    sources = list(sessions)

    async def one(n: int) -> None:
        http = sessions[sources[n % len(sources)]]
        start = time.monotonic()
        try:
            async with http.post(base + "/api/session/create", json={"url": url},
                                 timeout=aiohttp.ClientTimeout(total=60)) as answer:
                body = await answer.read()
                statuses[answer.status] += 1
                if answer.status == 201:
                    created.append(json.loads(body)["session_id"])
                else:
                    refusal_ms.append((time.monotonic() - start) * 1000)
                    if "Retry-After" in answer.headers:
                        retry_after.append(int(answer.headers["Retry-After"]))
        except (aiohttp.ClientError, TimeoutError):
            statuses[0] += 1

    tasks = []
    start = time.monotonic()
    for n in range(int(CREATE_RATE * CREATE_SECONDS)):
        await asyncio.sleep(max(0.0, start + n / CREATE_RATE - time.monotonic()))
        tasks.append(asyncio.create_task(one(n)))
    sent_in = time.monotonic() - start
    await asyncio.gather(*tasks)
    for http in sessions.values():
        await http.close()
    return {"statuses": dict(sorted(statuses.items())), "created": created,
            "sent_per_s": len(tasks) / sent_in,
            "refusal_ms_p50": statistics.median(refusal_ms) if refusal_ms else 0.0,
            "refusal_ms_p99": (sorted(refusal_ms)[int(len(refusal_ms) * 0.99) - 1]
                               if refusal_ms else 0.0),
            "retry_after": (min(retry_after), max(retry_after)) if retry_after else None}


async def watch_fps(probes: list[SioProbe]) -> list[float]:
    start = time.monotonic()
    await asyncio.sleep(WINDOW)
    end = time.monotonic()
    return [rate([t for t, _ in p.events["frame"]], start, end) for p in probes]


async def main() -> int:
    # ~1,100 sockets on each side: the streamer inherits this process's raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    trap = PageServer("127.0.0.1")
    pages = build_pages(trap)
    streamer = StreamerProcess({"JIOMOSA_MAX_SESSIONS": "2", "JIOMOSA_LOG_LEVEL": "WARNING"})
    for key in NO_ABUSE_LIMITS:  # the production defaults, not the tests' relaxed ones
        streamer.env.pop(key, None)
    streamer.start()
    assert streamer.proc is not None
    pid = streamer.proc.pid
    rows: list[tuple[str, str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            sids = []
            for i in range(2):
                # Two watchers' sessions from their own addresses (their own quotas).
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                        local_addr=(f"127.0.3.{i + 1}", 0))) as own, own.post(
                        streamer.base + "/api/session/create",
                        json={"url": pages.url("/anim"),
                              "viewport": {"width": 640, "height": 360}}) as answer:
                    assert answer.status == 201, await answer.text()
                    sids.append((await answer.json())["session_id"])
            probes = [SioProbe(streamer.base, f"session_id={sid}") for sid in sids]
            for probe, sid in zip(probes, sids, strict=True):
                await probe.__aenter__()
                await probe.subscribe(sid, fps=30)
            await asyncio.sleep(2)
            rss_before, cpu_before, t0 = rss_mb(pid), cpu_seconds([pid]), time.monotonic()
            fps_alone = await watch_fps(probes)
            cpu_alone = 100 * (cpu_seconds([pid]) - cpu_before) / (time.monotonic() - t0)

            stop = asyncio.Event()
            crowd: collections.Counter[str] = collections.Counter()
            greedy: collections.Counter[str] = collections.Counter()
            connections = [asyncio.create_task(eio_connection(
                streamer.base, f"127.0.1.{a + 1}", stop, crowd))
                for a in range(CROWD_ADDRESSES) for _ in range(PER_ADDRESS)]
            connections += [asyncio.create_task(eio_connection(
                streamer.base, "127.0.4.1", stop, greedy)) for _ in range(GREEDY)]
            await asyncio.sleep(8)  # let the crowd connect
            peak_rss = rss_mb(pid)
            cpu_mark, t1 = cpu_seconds([pid]), time.monotonic()
            flood_task = asyncio.create_task(create_flood(streamer.base, pages.url("/static")))
            fps_during = await watch_fps(probes)
            peak_rss = max(peak_rss, rss_mb(pid))
            flood = await flood_task
            cpu_during = 100 * (cpu_seconds([pid]) - cpu_mark) / (time.monotonic() - t1)
            peak_rss = max(peak_rss, rss_mb(pid))
            fps_after_flood = await watch_fps(probes)
            stop.set()
            await asyncio.gather(*connections)
            for sid in flood["created"]:
                async with http.post(f"{streamer.base}/api/session/{sid}/close",
                                     headers=ADMIN):
                    pass
            await asyncio.sleep(3)
            rss_after = rss_mb(pid)
            for probe in probes:
                await probe.__aexit__(None, None, None)
    finally:
        streamer.stop()
        pages.shutdown()
        trap.shutdown()

    rows += [
        ("watched sessions' fps alone (2 sessions, 640x360, cap 30)", _fps(fps_alone)),
        ("  ... during the crowd and the create flood", _fps(fps_during)),
        ("  ... after the flood, crowd still connected", _fps(fps_after_flood)),
        (f"crowd: {CROWD_ADDRESSES} addresses, {PER_ADDRESS} Socket.IO connections each",
         _counts(crowd)),
        (f"one address trying {GREEDY} connections", _counts(greedy)),
        (f"creates: {CREATE_RATE:.0f}/s for {CREATE_SECONDS:.0f} s from 100 addresses "
         f"(sent {flood['sent_per_s']:.0f}/s)", json.dumps(flood["statuses"])),
        ("  refusal latency p50 / p99 (ms)",
         f"{flood['refusal_ms_p50']:.1f} / {flood['refusal_ms_p99']:.1f}"),
        ("  Retry-After range (s)", str(flood["retry_after"])),
        ("streamer CPU: watched sessions alone / under the crowd and flood (% of a core)",
         f"{cpu_alone:.0f} / {cpu_during:.0f}"),
        ("streamer RSS: before / peak / after (MB)",
         f"{rss_before:.0f} / {peak_rss:.0f} / {rss_after:.0f}"),
    ]
    print(f"\nLoad on one streamer ({platform.node()}, {os.cpu_count()} cores); the streamer, "
          "Chromium and the load generator share the machine\n")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def _fps(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
