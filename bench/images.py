"""Figures of the images `make images` builds: size, and start -> /readyz of the browser pod.

The browser image's root filesystem runs under runc as in a pod: uid 10001, read-only root,
a tmpfs on /tmp, all capabilities dropped, the agent's one port on loopback (host network, so
the bench can reach it). Start -> ready is timed from `runc run` to the first 200 of
/readyz (Chromium up, DevTools answering the agent's own CDP connection).

    python bench/images.py ARCHIVE...      (make bench-images builds and passes them)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

PORT = 9391


def image_facts(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        entry = index["manifests"][0]
        manifest = json.load(tar.extractfile(  # type: ignore[arg-type]
            "blobs/sha256/" + entry["digest"].split(":", 1)[1]))
        layer = manifest["layers"][0]
    return {"name": entry["annotations"]["io.containerd.image.name"],
            "uncompressed_mb": round(layer["size"] / 1e6, 1),
            "archive_mb": round(archive.stat().st_size / 1e6, 1),
            "layer_digest": layer["digest"]}


def _bundle(archive: Path, where: Path) -> Path:
    """An OCI runtime bundle of the image's single layer."""
    facts = image_facts(archive)
    rootfs = where / "rootfs"
    rootfs.mkdir()
    layer = "blobs/sha256/" + facts["layer_digest"].split(":", 1)[1]
    # The layer is one member of the archive: tar streams it out, a second tar unpacks it.
    unpack = subprocess.Popen(["tar", "-x", "-C", str(rootfs), "--numeric-owner"],
                              stdin=subprocess.PIPE)
    subprocess.run(["tar", "-xOf", str(archive), layer], stdout=unpack.stdin, check=True)
    assert unpack.stdin is not None
    unpack.stdin.close()
    if unpack.wait() != 0:
        raise SystemExit("cannot unpack the image layer")
    subprocess.run(["runc", "spec", "--bundle", str(where)], check=True)
    spec = json.loads((where / "config.json").read_text())
    proc = spec["process"]
    proc["terminal"] = False
    proc["user"] = {"uid": 10001, "gid": 10001}
    proc["args"] = ["jiomosa", "browser", "--host", "127.0.0.1", "--port", str(PORT)]
    proc["env"] = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp",
                   "JIOMOSA_BROWSER_TOKEN=" + "b" * 43, "JIOMOSA_LOG_FORMAT=text"]
    proc["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable",
                                             "permitted", "ambient")}
    proc["noNewPrivileges"] = True
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777", "size=512m"]})
    spec["mounts"].append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                           "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=64m"]})
    # Host network: the bench reaches the agent on loopback (a pod has its own network).
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"]
                                   if n["type"] != "network"]
    (where / "config.json").write_text(json.dumps(spec))
    return where


def _ready(timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    return None


def start_to_ready(archive: Path, runs: int) -> dict[str, Any]:
    times = []
    with tempfile.TemporaryDirectory(prefix="jiomosa-bundle-") as tmp:
        bundle = _bundle(archive, Path(tmp))
        for n in range(runs):
            cid = f"jiomosa-bench-{n}-{int(time.time())}"
            started = time.monotonic()
            proc = subprocess.Popen(["runc", "run", "--bundle", str(bundle), cid],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            took = _ready(30.0)
            ready_at = time.monotonic() - started
            subprocess.run(["runc", "kill", cid, "TERM"], check=False,
                           stderr=subprocess.DEVNULL)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                subprocess.run(["runc", "kill", cid, "KILL"], check=False)
                proc.wait()
            subprocess.run(["runc", "delete", "--force", cid], check=False,
                           stderr=subprocess.DEVNULL)
            if took is None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"the browser image never became ready: {err[-2000:]}")
            times.append(ready_at)
    return {"runs": runs, "median_s": round(statistics.median(times), 2),
            "max_s": round(max(times), 2), "all_s": [round(t, 2) for t in times]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archives", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("runc"):
        raise SystemExit("runc is not installed (apt-get install runc)")
    rows = []
    for archive in args.archives:
        facts = image_facts(archive)
        row = {**facts}
        if "jiomosa-browser" in facts["name"]:
            row["start_to_ready"] = start_to_ready(archive, args.runs)
        rows.append(row)
        print(json.dumps(row))
    print(f"\nmachine: {platform.machine()}, {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| image | uncompressed | archive | start -> /readyz median (max) |")
    print("|---|---|---|---|")
    for row in rows:
        ready = row.get("start_to_ready")
        cell = f"{ready['median_s']} s ({ready['max_s']} s)" if ready else "-"
        print(f"| {row['name']} | {row['uncompressed_mb']} MB | {row['archive_mb']} MB "
              f"| {cell} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
