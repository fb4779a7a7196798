"""Figures on the real single-node cluster (tools/cluster; `make bench-cluster`).

* REST create through the front -> first frame, with a warm pool pod ready and cold (the pool
  set to 0, so the session's own pod starts);
* a cold pod: scheduled -> agent ready (polled every 0.1 s);
* fps of an animated page and click -> changed frame, Socket.IO through the nginx front;
* memory of a browser pod (its cgroup), idle and streaming;
* how many sessions the node holds before creation is refused.

Brings the cluster up when it is not (and down again at the end). Prints a table and the
machine; run on a quiet machine for figures worth comparing.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from e2e_support import Cluster, PageSite  # noqa: E402
from helpers import SioProbe, pixel  # noqa: E402

CLUSTER_PY = ROOT / "tools" / "cluster" / "cluster.py"
FRONT = "http://" + (os.environ.get("JIOMOSA_CLUSTER_FRONT") or "127.0.0.1:8480")
RUNS = int(os.environ.get("BENCH_RUNS") or 3)
SETTLE = 10.0  # seconds for a session's ownership to follow its client (hand-off)


def http(method: str, url: str, body: Any = None, timeout: float = 200) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def first_frame(sid: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http("GET", f"{FRONT}/api/session/{sid}/frame", timeout=10)
        if status == 200 and body[:2] == b"\xff\xd8":
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"no frame of {sid} within {timeout} s")


def create_to_frame(url: str) -> tuple[float, str]:
    start = time.monotonic()
    status, body = http("POST", f"{FRONT}/api/session/create",
                        {"url": url, "viewport": {"width": 480, "height": 360}})
    if status != 201:
        raise RuntimeError(f"create: {status} {body[:300]!r}")
    sid = json.loads(body)["session_id"]
    return first_frame(sid) - start, sid


def close(sid: str) -> None:
    http("POST", f"{FRONT}/api/session/{sid}/close", {})


def wait_pool(cluster: Cluster, size: int) -> None:
    def ready() -> bool:
        pods = cluster.get("pods", "-l", "jiomosa.io/pool=warm")["items"]
        return sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in p["status"].get("conditions") or [])) >= size
    cluster.wait(ready, 180, f"{size} ready warm pods")


def wait_no_sessions(cluster: Cluster) -> None:
    cluster.wait(lambda: not cluster.get("browsersessions")["items"], 180,
                 "every BrowserSession gone")


def set_pool(cluster: Cluster, size: int) -> None:
    helm = subprocess.run(["bash", str(ROOT / "tools/chart/fetch.sh"), "helm"],
                          capture_output=True, text=True, check=True).stdout.split()[-1]
    subprocess.run([helm, "upgrade", cluster.release, str(ROOT / "charts/jiomosa"), "-n",
                    cluster.namespace, "--reuse-values", "--set",
                    f"browser.warmPool.size={size}", "--wait", "--timeout", "5m"],
                   env={**os.environ, "KUBECONFIG": cluster.kubeconfig}, check=True,
                   capture_output=True)
    cluster.kubectl("rollout", "status", f"deployment/{cluster.fullname}-operator",
                    "--timeout=120s", timeout=150)
    if size == 0:
        cluster.wait(lambda: not cluster.get("pods", "-l", "jiomosa.io/pool=warm")["items"],
                     120, "the warm pool emptied")


def pod_start(cluster: Cluster, sid_before: set[str]) -> float | None:
    """Scheduled -> Ready of the newest session pod, polled."""
    scheduled = ready = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ready is None:
        pods = [p for p in cluster.get("pods", "-l", "jiomosa.io/session-uid")["items"]
                if p["metadata"]["name"] not in sid_before]
        if pods:
            pod = pods[0]
            if scheduled is None and pod["spec"].get("nodeName"):
                scheduled = time.monotonic()
            conditions = pod["status"].get("conditions") or []
            if scheduled and any(c["type"] == "Ready" and c["status"] == "True"
                                 for c in conditions):
                ready = time.monotonic()
        time.sleep(0.1)
    return ready - scheduled if ready and scheduled else None


def newest_pod(cluster: Cluster) -> str:
    """The pod of the newest live BrowserSession (the session just created)."""
    live = [b for b in cluster.get("browsersessions")["items"]
            if not b["metadata"].get("deletionTimestamp")
            and (b.get("status") or {}).get("podName")]
    return str(max(live, key=lambda b: b["metadata"]["creationTimestamp"])["status"]["podName"])


def pod_memory_mb(cluster: Cluster, pod_name: str) -> float:
    """The pod cgroup's working set (usage minus inactive file cache), as kubelet counts it."""
    uid = cluster.get("pod", pod_name)["metadata"]["uid"]
    for top in Path("/sys/fs/cgroup/memory/kubepods").glob(f"**/pod{uid}"):
        usage = int((top / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (top / "memory.stat").read_text().splitlines())
        return (usage - int(stat.get("total_inactive_file", 0))) / 2**20
    raise RuntimeError(f"no memory cgroup of pod {pod_name}")


async def stream_figures(sid: str, memory: Callable[[], float]) -> dict[str, float]:
    """fps over 5 s of the animated page through the front, and the pod's memory sampled
    while it streams."""
    async with SioProbe(FRONT, f"session_id={sid}") as probe:
        await probe.subscribe(sid, fps=60, quality=60)
        # The create went to any streamer; ownership follows the client within a few seconds
        # (the relay before it costs frames): measure the settled path.
        await asyncio.sleep(SETTLE)
        start, count0 = time.monotonic(), len(probe.events["frame"])
        await asyncio.sleep(5)
        fps = (len(probe.events["frame"]) - count0) / (time.monotonic() - start)
        mib = memory()
    return {"fps": fps, "memory": mib}


async def click_latency(sid: str, clicks: int = 10) -> list[float]:
    out = []
    async with SioProbe(FRONT, f"session_id={sid}") as probe:
        await probe.subscribe(sid, fps=60)
        await asyncio.sleep(SETTLE)
        for k in range(clicks):
            start_index = len(probe.events["frame"])
            sent = time.monotonic()
            await probe.emit("input:click", {"x": 10, "y": 10})
            white = k % 2 == 0
            await probe.wait_for(
                "frame", lambda f, w=white: (pixel(bytes(f["image"]), 10, 10)[0] > 200) == w,
                timeout=10, start=start_index)
            stamp = next(t for t, f in probe.events["frame"][start_index:]
                         if (pixel(bytes(f["image"]), 10, 10)[0] > 200) == white)
            out.append((stamp - sent) * 1000)
            await asyncio.sleep(0.3)
    return out


@contextmanager
def local_cluster() -> Iterator[Cluster]:
    started = subprocess.run([sys.executable, str(CLUSTER_PY), "status"],
                             capture_output=True).returncode != 0
    up = subprocess.run([sys.executable, str(CLUSTER_PY), "up"], stdout=subprocess.PIPE,
                        text=True, check=True)
    kubeconfig = re.search(r"^KUBECONFIG=(.+)$", up.stdout, re.M)
    assert kubeconfig
    try:
        yield Cluster(kubeconfig=kubeconfig.group(1), namespace="jiomosa", release="jiomosa",
                      timeout=300, front=FRONT,
                      state=Path(os.environ.get("JIOMOSA_CLUSTER_DIR")
                                 or "/var/lib/jiomosa-cluster"))
    finally:
        if started:
            subprocess.run([sys.executable, str(CLUSTER_PY), "down"], check=False)


def main() -> int:
    rows: list[tuple[str, str]] = []
    with local_cluster() as cluster:
        site = PageSite(cluster)
        site.deploy()
        try:
            wait_no_sessions(cluster)
            # Warm: a ready pool pod each time.
            warm = []
            for _ in range(RUNS):
                wait_pool(cluster, 2)
                seconds, sid = create_to_frame(site.url("/static.html"))
                warm.append(seconds)
                close(sid)
            rows.append(("create -> first frame, warm pool (s)", _stats(warm)))
            # Figures of one streaming session.
            _, sid = create_to_frame(site.url("/anim.html"))
            pod = newest_pod(cluster)
            figures = asyncio.run(stream_figures(sid, lambda: pod_memory_mb(cluster, pod)))
            rows.append(("fps, animated page, Socket.IO via front", f"{figures['fps']:.1f}"))
            rows.append(("browser pod memory, streaming (MiB)", f"{figures['memory']:.0f}"))
            close(sid)
            wait_no_sessions(cluster)
            _, sid = create_to_frame(site.url("/color.html"))
            pod = newest_pod(cluster)
            time.sleep(3)
            rows.append(("browser pod memory, idle page (MiB)",
                         f"{pod_memory_mb(cluster, pod):.0f}"))
            rows.append(("click -> changed frame via front (ms)",
                         _stats(asyncio.run(click_latency(sid)), "{:.0f}")))
            close(sid)
            wait_no_sessions(cluster)
            # Cold: no pool.
            set_pool(cluster, 0)
            cold, starts = [], []
            try:
                for _ in range(RUNS):
                    before = {p["metadata"]["name"] for p in cluster.get(
                        "pods", "-l", "jiomosa.io/session-uid")["items"]}
                    with _background(pod_start, cluster, before) as started:
                        seconds, sid = create_to_frame(site.url("/static.html"))
                    cold.append(seconds)
                    if started.result is not None:
                        starts.append(started.result)
                    close(sid)
                    wait_no_sessions(cluster)
            finally:
                set_pool(cluster, 2)
            rows.append(("create -> first frame, cold pod (s)", _stats(cold)))
            rows.append(("cold pod scheduled -> agent ready (s)", _stats(starts)))
            # Capacity: sessions until refused.
            wait_pool(cluster, 2)
            held, refusal = capacity(site)
            rows.append(("sessions held before create is refused", str(held)))
            rows.append(("the refusal", refusal))
        finally:
            # Whatever a failed run left open.
            cluster.kubectl("delete", "browsersessions", "-l",
                            "app.kubernetes.io/created-by=jiomosa-streamer", "--wait=false",
                            check=False)
            site.remove()
    print(f"\nJiomosa on the local node ({platform.node()}, {os.cpu_count()} cores, "
          f"{_mem_gb():.0f} GB), {RUNS} runs each\n")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


def capacity(site: PageSite) -> tuple[int, str]:
    """Create sessions through the front until one is refused; close them all."""
    sids: list[str] = []
    refusal = ""
    try:
        for _ in range(40):
            status, body = http("POST", f"{FRONT}/api/session/create",
                                {"url": site.url("/static.html")})
            if status != 201:
                refusal = f"{status} {body.decode(errors='replace')[:120]}"
                break
            sids.append(json.loads(body)["session_id"])
    finally:
        for sid in sids:
            close(sid)
    return len(sids), refusal


class _Result:
    result: float | None = None


@contextmanager
def _background(fn: Any, *args: Any) -> Iterator[_Result]:
    import threading
    box = _Result()

    def run() -> None:
        box.result = fn(*args)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield box
    thread.join(130)


def _stats(values: list[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "n/a"
    return (f"median {fmt.format(statistics.median(values))} "
            f"(min {fmt.format(min(values))}, max {fmt.format(max(values))}, n={len(values)})")


def _mem_gb() -> float:
    meminfo = Path("/proc/meminfo").read_text()
    match = re.search(r"MemTotal:\s+(\d+)", meminfo)
    return int(match.group(1)) / 2**20 if match else 0.0


if __name__ == "__main__":
    sys.exit(main())
