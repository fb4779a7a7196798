"""Full frames against delta frames over an emulated mobile link (issue 14): ``make bench-link``.

    sudo .venv/bin/python bench/link.py [--quick] [--c-client build/link/jiomosa-client]

Two network namespaces stand for the cloud and the device: the streamer (``jiomosa serve``)
and the test page server run in ``jmlink-srv``, the clients (a stock python-socketio client,
the C reference client) in ``jmlink-cli``. Between them one link, 10.203.0.1 <-> 10.203.0.2,
with the same rate and delay each way:

- a veth pair with ``tc qdisc ... netem rate R delay D`` on both ends, when the kernel has
  sch_netem;
- otherwise bench/linkemu.py: two TUN devices and a user-space serialiser + delay with
  netem's semantics (this kernel may lack netem: the bench says which one it used).

Profiles: 2G-like (256 kbit/s, RTT 300 ms, 240x320 viewport) and 3G-like (1 Mbit/s, RTT
100 ms, 1280x720). In each, bench/linkclients.py measures full-frame mode then delta mode
(subscribe with ``delta: true``) and this prints both side by side. Everything it creates
(namespaces, links, processes) is removed at exit, on Ctrl-C and on SIGTERM too; leftovers of
a run that was killed outright are removed at the start of the next.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PY = str(ROOT / ".venv" / "bin" / "python")
NS_SRV, NS_CLI = "jmlink-srv", "jmlink-cli"
ADDR_SRV, ADDR_CLI = "10.203.0.1", "10.203.0.2"
VETH_SRV, VETH_CLI = "jml-srv", "jml-cli"
STREAMER_PORT = 5000
PAGE_HOST = "127.0.0.5"

TEXT_PAGE = ("<!doctype html><html><head><title>text</title></head>"
             "<body style='margin:0;font:16px sans-serif'>" + "".join(
                 f"<p style='margin:6px 8px'>{i}. The quick brown fox jumps over the lazy dog; "
                 f"pack my box with five dozen liquor jugs ({i * 37}).</p>" for i in range(300))
             + "</body></html>")
TYPE_PAGE = """<!doctype html><html><head><title>type</title></head><body style="margin:0">
<input id="q" autofocus style="margin:8px;width:200px;font:16px sans-serif;caret-color:transparent">
<script>document.getElementById('q').focus();</script></body></html>"""
ANIM_TAP_PAGE = """<!doctype html><html><head><title>anim</title></head>
<body style="margin:0;overflow:hidden">
<div id="bg" style="position:fixed;left:0;top:0;right:0;bottom:0"></div>
<div id="box" style="position:fixed;left:0;top:0;width:60px;height:60px;background:#000"></div>
<script>
var t = 0, k = 0, bg = document.getElementById('bg'), box = document.getElementById('box');
function f() { t++; bg.style.background = 'linear-gradient(' + (t * 3 % 360) + 'deg, hsl(' +
  (t * 5 % 360) + ',80%,50%), hsl(' + ((t * 5 + 180) % 360) + ',80%,50%))';
  requestAnimationFrame(f); }
requestAnimationFrame(f);
document.addEventListener('mousedown', function () { k++;
  box.style.background = k % 2 ? '#fff' : '#000'; document.title = 'taps:' + k; });
</script></body></html>"""


@dataclass(frozen=True)
class Profile:
    name: str
    rate_bps: int
    rtt_ms: int
    width: int
    height: int

    def describe(self) -> str:
        rate = f"{self.rate_bps // 1000} kbit/s" if self.rate_bps < 1_000_000 else \
            f"{self.rate_bps / 1e6:g} Mbit/s"
        return f"{self.name}: {rate} each way, RTT {self.rtt_ms} ms, {self.width}x{self.height}"


PROFILES = [Profile("2G-like", 256_000, 300, 240, 320),
            Profile("3G-like", 1_000_000, 100, 1280, 720)]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


# --------------------------------------------------------------------------- the link
class Link:
    """Rate and delay between the two namespaces, for one profile at a time."""

    kind = ""
    client_dev = ""

    def up(self, profile: Profile) -> None:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError


class NetemLink(Link):
    kind = "veth pair + tc netem on both ends"
    client_dev = VETH_CLI

    def up(self, profile: Profile) -> None:
        sh("ip", "link", "add", VETH_SRV, "netns", NS_SRV, "type", "veth", "peer", "name",
           VETH_CLI, "netns", NS_CLI)
        for ns, dev, addr in ((NS_SRV, VETH_SRV, ADDR_SRV), (NS_CLI, VETH_CLI, ADDR_CLI)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            # netem's rate shapes what it is given: no 64 KB offload super-packets.
            with contextlib.suppress(FileNotFoundError, subprocess.CalledProcessError):
                sh(*in_ns(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"))
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "rate",
               f"{profile.rate_bps}bit", "delay", f"{profile.rtt_ms // 2}ms")

    def down(self) -> None:
        sh("ip", "-n", NS_SRV, "link", "del", VETH_SRV, check=False)

    @staticmethod
    def available() -> tuple[bool, str]:
        """Tries netem on a scratch veth pair in the server namespace."""
        sh("ip", "link", "add", VETH_SRV, "netns", NS_SRV, "type", "veth", "peer", "name",
           VETH_CLI, "netns", NS_CLI)
        try:
            done = sh("tc", "-n", NS_SRV, "qdisc", "add", "dev", VETH_SRV, "root", "netem",
                      "delay", "1ms", check=False)
            return done.returncode == 0, (done.stderr or done.stdout).strip()
        finally:
            sh("ip", "-n", NS_SRV, "link", "del", VETH_SRV, check=False)


class TunLink(Link):
    kind = "user-space emulator over TUN (bench/linkemu.py; netem semantics)"
    client_dev = "jmlink0"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def up(self, profile: Profile) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "linkemu.py"), NS_SRV, ADDR_SRV, NS_CLI,
             ADDR_CLI, str(profile.rate_bps), str(profile.rtt_ms / 2)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.down()
            raise RuntimeError(f"the link emulator did not start: {line!r}")

    def down(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                tail, _ = self.proc.communicate(timeout=10)
                print("  link: " + "; ".join(tail.split("\n")).strip("; "), flush=True)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --------------------------------------------------------------------------- the lab
class Lab:
    """The namespaces, the link, the page server and the streamer."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.link: Link | None = None
        self.streamer: subprocess.Popen[str] | None = None
        self.pages_url = ""
        self.netem_error = ""

    def start(self) -> None:
        remove_namespaces()
        for ns in (NS_SRV, NS_CLI):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        ok, why = NetemLink.available()
        self.netem_error = "" if ok else why
        self.link = NetemLink() if ok else TunLink()
        pages = self.spawn(in_ns(NS_SRV, PY, __file__, "pages"), stdout=subprocess.PIPE)
        assert pages.stdout is not None
        self.pages_url = pages.stdout.readline().strip()
        if not self.pages_url.startswith("http://"):
            raise RuntimeError(f"the page server did not start: {self.pages_url!r}")
        OUT.mkdir(exist_ok=True)
        env = {**os.environ, "JIOMOSA_ALLOW_HOSTS": PAGE_HOST, "JIOMOSA_LOG_LEVEL": "WARNING",
               "JIOMOSA_WARM_BROWSERS": "1", "JIOMOSA_MAX_SESSIONS": "4"}
        with open(OUT / "link-streamer.log", "w") as log:
            self.streamer = self.spawn(
                in_ns(NS_SRV, PY, "-m", "jiomosa", "serve", "--host", "0.0.0.0", "--port",
                      str(STREAMER_PORT)), env=env, stdout=log, stderr=subprocess.STDOUT)

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, text=True, start_new_session=True, cwd=ROOT, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        if self.link is not None:
            self.link.down()
        if self.streamer is not None and self.streamer.poll() is None:
            self.streamer.send_signal(signal.SIGINT)  # a clean shutdown closes its browsers
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.streamer.wait(20)
        for proc in self.procs:  # and whatever each left in its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        remove_namespaces()


def remove_namespaces() -> None:
    """The namespaces, after the processes still in them (from this run or a killed one)."""
    existing = sh("ip", "netns", "list").stdout
    for ns in (NS_SRV, NS_CLI):
        if not any(line.split()[0] == ns for line in existing.splitlines() if line.strip()):
            continue
        for _ in range(50):
            pids = [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        sh("ip", "netns", "del", ns, check=False)


# --------------------------------------------------------------------------- running
def measure(lab: Lab, profile: Profile, args: argparse.Namespace) -> dict[str, Any]:
    assert lab.link is not None and lab.streamer is not None
    lab.link.up(profile)
    try:
        cmd = [PY, str(ROOT / "bench" / "linkclients.py"),
               "--base", f"http://{ADDR_SRV}:{STREAMER_PORT}", "--pages", lab.pages_url,
               "--dev", lab.link.client_dev, "--streamer-pid", str(lab.streamer.pid),
               "--size", f"{profile.width}x{profile.height}", "--modes", args.modes]
        if args.c_client:
            cmd += ["--c-client", str(Path(args.c_client).resolve())]
        if args.quick:
            cmd += ["--idle-seconds", "5", "--taps", "6", "--scrolls", "2", "--chars", "10"]
        proc = lab.spawn(in_ns(NS_CLI, *cmd), stdout=subprocess.PIPE)
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"the clients failed ({proc.returncode}); streamer log: "
                               f"{OUT / 'link-streamer.log'}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        lab.link.down()


def cell(mode: dict[str, Any], key: str) -> str:
    if "unavailable" in mode:
        return "n/a"
    value = mode.get(key)
    return "-" if value is None else str(value)


ROWS: list[tuple[str, Any]] = [
    ("idle page, blinking caret: downlink B/s over 10 s (--quick: 5 s) (frames)",
     lambda m: f"{cell(m, 'idle_bytes_per_s')} ({cell(m, 'idle_frames')})"),
    ("typing: downlink bytes per character", lambda m: cell(m, "typing_bytes_per_char")),
    ("tap -> changed picture on the client, p50 / p90 (ms)",
     lambda m: f"{cell(m, 'tap_p50_ms')} / {cell(m, 'tap_p90_ms')}"),
    ("quarter-screen scroll of a text page: bytes (% of a full frame)",
     lambda m: f"{cell(m, 'scroll_bytes')} ({cell(m, 'scroll_pct_of_full')} % of "
               f"{cell(m, 'scroll_full_frame_bytes')})"),
    ("tap -> picture during a full-screen animation, p50 / p90 (ms)",
     lambda m: f"{cell(m, 'anim_tap_p50_ms')} / {cell(m, 'anim_tap_p90_ms')}"),
    ("... age of the pictures on arrival during it, p50 (ms)",
     lambda m: cell(m, "anim_frame_age_p50_ms")),
    ("streamer CPU per frame delivered (ms), frames",
     lambda m: f"{cell(m, 'streamer_cpu_ms_per_frame')}, {cell(m, 'frames')}"),
    ("C client (plain WS) idle caret: wire B/s (frames), peak RSS (KB)",
     lambda m: c_client_cell(m)),
]


def c_client_cell(mode: dict[str, Any]) -> str:
    c = mode.get("c_client_idle")
    if "unavailable" in mode or c is None:
        return "n/a"
    if "error" in c:
        return "failed"
    text = f"{c['wire_bytes_per_s']} ({c['frames']}), {c['peak_rss_kb']}"
    # No new frame in the session meanwhile: the page did not blink, nothing was measured.
    return text if c.get("session_frames", 1) > 0 else f"{text} (page still: not measured)"


def row(fn: Any, mode: dict[str, Any]) -> str:
    return "n/a" if "unavailable" in mode else str(fn(mode))


def report(results: dict[str, Any]) -> str:
    lines = [f"machine: {results['machine']}", f"link: {results['link']}", ""]
    for profile in PROFILES:
        modes = results["profiles"].get(profile.name)
        if not modes:
            continue
        full, delta = modes.get("full", {"unavailable": ""}), modes.get("delta",
                                                                         {"unavailable": ""})
        lines += [f"### {profile.describe()}", "", "| figure | full frames | delta frames |",
                  "|---|---|---|"]
        lines += [f"| {label} | {row(fn, full)} | {row(fn, delta)} |" for label, fn in ROWS]
        for name, mode in (("full frames", full), ("delta frames", delta)):
            for what in ("unavailable", "failed"):
                if mode.get(what):
                    lines.append(f"\n{name}: {what}: {mode[what]}")
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model or platform.machine()}, {os.cpu_count()} cores, Linux "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer taps, shorter windows")
    parser.add_argument("--profiles", default=",".join(p.name for p in PROFILES))
    parser.add_argument("--modes", default="full,delta")
    parser.add_argument("--c-client", default="", help="jiomosa-client built with DELTA=1")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-link needs root (network namespaces, tc, TUN devices)")
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"`{tool}` is missing (Debian package iproute2)")
    # The namespaces have fixed names, and a start removes what it finds of them: one run at
    # a time (the lock goes with the process, however it ends).
    lock = open("/run/jiomosa-bench-link.lock", "w")  # held (and locked) until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("another bench-link is running")

    def stop_on(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanup below

    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGHUP, stop_on)
    lab = Lab()
    results: dict[str, Any] = {"machine": machine(), "profiles": {}}
    try:
        lab.start()
        assert lab.link is not None
        results["link"] = lab.link.kind + (f" (netem unavailable: {lab.netem_error})"
                                           if lab.netem_error else "")
        print(f"link: {results['link']}", flush=True)
        for profile in PROFILES:
            if profile.name not in args.profiles.split(","):
                continue
            print(f"{profile.describe()} ...", flush=True)
            results["profiles"][profile.name] = measure(lab, profile, args)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lab.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "link.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (OUT / "link.md").write_text(text + "\n")
    print("\n" + text)
    return 0


def serve_pages() -> None:
    """`link.py pages`: the test pages (tests/helpers.py and this file's) on PAGE_HOST, in the
    streamer's namespace; prints the base URL, then serves until killed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import PageServer, build_pages

    trap = PageServer("127.0.0.1")
    pages = build_pages(trap)
    pages.html("/linktext", TEXT_PAGE)
    pages.html("/linktype", TYPE_PAGE)
    pages.html("/linkanim", ANIM_TAP_PAGE)
    print(pages.url("").rstrip("/"), flush=True)
    while True:  # the lab ends it (SIGKILL of its process group)
        time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1:2] == ["pages"]:
        serve_pages()
    else:
        sys.exit(main())
