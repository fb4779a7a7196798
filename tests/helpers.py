"""Test support: a real streamer process, real test pages on loopback, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
PAGE_HOST = "127.0.0.5"  # allowed by JIOMOSA_ALLOW_HOSTS in tests
TRAP_HOST = "127.0.0.1"  # blocked: a request arriving here is an SSRF hole
ADMIN_TOKEN = "test-admin-token"  # the streamers of the tests reveal session lists to it
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- test pages
APP_PAGE = """<!doctype html><html><head><title>app</title></head>
<body style="margin:0;height:3000px;background:#fff">
<button id="b" style="position:absolute;left:100px;top:100px;width:200px;height:100px">+1</button>
<div id="c" style="position:fixed;left:400px;top:100px;font-size:60px">0</div>
<input id="t" style="position:absolute;left:100px;top:300px;width:300px;height:40px">
<script>
var n = 0, b = document.getElementById('b'), c = document.getElementById('c'),
    t = document.getElementById('t');
b.onclick = function (e) { n++; c.textContent = n; document.title = 'count:' + n;
  window.lastClick = [e.clientX, e.clientY]; };
document.addEventListener('keydown', function (e) { document.title = 'key:' + e.key; });
t.addEventListener('input', function () { document.title = 'text:' + t.value; });
addEventListener('scroll', function () { document.title = 'scroll:' + Math.round(scrollY); });
t.focus();
</script></body></html>"""

ANIM_PAGE = """<!doctype html><html><head><title>anim</title></head>
<body style="margin:0;background:#fff">
<div id="d" style="position:absolute;top:100px;width:200px;height:200px;background:#c00"></div>
<script>
var d = document.getElementById('d'), t = 0;
function f() { t++; d.style.left = (t * 7 % 1000) + 'px';
  d.style.background = 'hsl(' + (t * 5 % 360) + ',80%,50%)'; requestAnimationFrame(f); }
requestAnimationFrame(f);
</script></body></html>"""

STATIC_PAGE = """<!doctype html><html><head><title>static</title></head>
<body style="font:40px sans-serif"><h1>Static page</h1><p>Nothing moves here.</p></body></html>"""

FORM_PAGE = """<!doctype html><html><head><title>form</title></head><body>
<form action="/submitted" method="get"><input id="q" name="q" autofocus></form>
<script>document.getElementById('q').focus();</script></body></html>"""

NOISE_PAGE = """<!doctype html><html><head><title>noise</title></head>
<body style="margin:0"><canvas id="c" width="1280" height="720"></canvas>
<script>
var c = document.getElementById('c').getContext('2d'), img = c.createImageData(1280, 720);
function f() { var d = img.data;
  for (var i = 0; i < d.length; i += 4) { var v = Math.random() * 255 | 0;
    d[i] = v; d[i + 1] = (v * 7) & 255; d[i + 2] = (v * 13) & 255; d[i + 3] = 255; }
  c.putImageData(img, 0, 0); requestAnimationFrame(f); }
requestAnimationFrame(f);
</script></body></html>"""

CLICK_COLOR_PAGE = """<!doctype html><html><head><title>color</title></head>
<body style="margin:0;height:100vh;background:rgb(0,0,0)">
<script>
var k = 0;
document.body.addEventListener('mousedown', function () {
  k++; document.body.style.background = k % 2 ? 'rgb(255,255,255)' : 'rgb(0,0,0)';
  document.title = 'clicks:' + k; });
</script></body></html>"""


CARET_PAGE = """<!doctype html><html><head><title>caret</title></head>
<body style="margin:8px;font:16px sans-serif;background:#fff">
<p>Search the web</p>
<input id="q" style="width:200px;height:28px;font:16px sans-serif" autofocus>
<p>A focused text field: its caret blinks and typing echoes characters.</p>
<script>var q = document.getElementById('q'); q.focus();
q.addEventListener('input', function () { document.title = 'text:' + q.value; });</script>
</body></html>"""

_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud "
          "exercitation ullamco laboris nisi aliquip ex ea commodo consequat").split()


def _text_page(smooth: bool) -> str:
    """A long page of dense text (a news article on a phone), to scroll through."""
    paragraphs = []
    for i in range(60):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(40 + i % 13)]
        paragraphs.append(f"<p><b>{i}.</b> {' '.join(words)}.</p>")
    behaviour = "smooth" if smooth else "auto"
    return ("<!doctype html><html><head><title>text</title></head>"
            f'<body style="margin:6px;font:13px serif;color:#222;background:#fff">'
            f"<style>html{{scroll-behavior:{behaviour}}}</style>"
            '<h2 style="color:#036">A long article</h2>' + "".join(paragraphs)
            + "<script>addEventListener('scroll', function () {"
              " document.title = 'scroll:' + Math.round(scrollY); });</script></body></html>")


TEXT_PAGE = _text_page(smooth=False)
TEXT_SMOOTH_PAGE = _text_page(smooth=True)


DOWNLOAD_NAME = "jiomosa-download-probe.bin"
DOWNLOAD_BODY = b"jiomosa download probe\n" * 64


class _Handler(http.server.BaseHTTPRequestHandler):
    server: PageServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.record(self.path)
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(404, b"not found", "text/plain")
            return
        status, body, ctype, headers = route(self.path)
        self._send(status, body, ctype, headers)

    def _send(self, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


Route = Callable[[str], tuple[int, bytes, str, dict[str, str]]]


class PageServer(http.server.ThreadingHTTPServer):
    """Serves the test pages and records every request it gets."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.host = host
        self.port = int(self.server_address[1])
        self.requests: list[str] = []
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True, name=f"pages-{host}").start()

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def html(self, path: str, body: str) -> None:
        self.routes[path] = lambda _p: (200, body.encode(), "text/html; charset=utf-8", {})


def build_pages(trap: PageServer) -> PageServer:
    pages = PageServer(PAGE_HOST)
    pages.html("/app", APP_PAGE)
    pages.html("/anim", ANIM_PAGE)
    pages.html("/static", STATIC_PAGE)
    pages.html("/form", FORM_PAGE)
    pages.html("/color", CLICK_COLOR_PAGE)
    pages.html("/noise", NOISE_PAGE)
    pages.html("/caret", CARET_PAGE)
    pages.html("/text", TEXT_PAGE)
    pages.html("/text-smooth", TEXT_SMOOTH_PAGE)
    pages.html("/submitted", "<!doctype html><title>submitted</title><p>ok</p>")
    pages.routes["/redirect-loopback"] = lambda _p: (
        302, b"", "text/plain", {"Location": trap.url("/secret-redirect")})
    pages.routes["/redirect-ok"] = lambda _p: (
        302, b"", "text/plain", {"Location": pages.url("/static")})
    pages.html("/private-subresources", f"""<!doctype html><title>subresources</title>
<img src="{trap.url('/secret-img.png')}">
<iframe src="{trap.url('/secret-iframe')}"></iframe>
<script>fetch("{trap.url('/secret-fetch')}").catch(function () {{}});</script>
<p>loaded</p>""")
    pages.html("/popup", f"""<!doctype html><title>popup</title>
<a id="a" href="{pages.url('/static')}" target="_blank"
   style="display:block;position:absolute;left:0;top:0;width:400px;height:200px">open</a>""")
    trap.html("/", "<title>trap</title>secret")
    # Downloads: a served attachment, and a page whose script clicks a download link to it.
    pages.routes["/attachment"] = lambda _p: (
        200, DOWNLOAD_BODY, "application/octet-stream",
        {"Content-Disposition": f'attachment; filename="{DOWNLOAD_NAME}"'})
    pages.html("/download", f"""<!doctype html><title>download</title>
<a id="a" href="/attachment" download="{DOWNLOAD_NAME}">get</a>
<script>document.getElementById('a').click();</script>""")
    return pages


# --------------------------------------------------------------------------- the streamer
class PortTaken(RuntimeError):
    """The process could not bind the port it was given."""


class ServerProcess:
    """One of our servers as a real subprocess: started on a fresh port (on another one if a
    racing process took it first), ready once its health URL answers and ``is_ready`` agrees;
    its log is kept for diagnosis."""

    name = "server"
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def health_url(self) -> str:
        raise NotImplementedError

    def is_ready(self, body: bytes) -> bool:
        return True

    def use_port(self, port: int) -> None:
        self.port = port

    def stop(self, timeout: float = 20.0) -> int | None:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Self:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                # free_port() only found a free port; another process may bind it first.
                if attempt == 2:
                    raise
                self.use_port(free_port())
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Self:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail:
                    raise PortTaken(tail)
                raise RuntimeError(f"{self.name} exited: {tail}")
            try:
                with urllib.request.urlopen(self.health_url(), timeout=2) as r:
                    if r.status == 200 and self.is_ready(r.read()):
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


# The tests are one client on one address creating sessions, connecting and sending input as
# fast as they can: the abuse limits (issue #13) would refuse them. Off for every test
# streamer; tests/test_ratelimits.py turns each on with small numbers to prove it.
NO_ABUSE_LIMITS = {
    "JIOMOSA_CREATES_PER_MINUTE": "0",
    "JIOMOSA_SESSIONS_PER_ADDRESS": "0",
    "JIOMOSA_INPUT_PER_SECOND": "0",
    "JIOMOSA_FRAME_QUALITIES": "0",
    "JIOMOSA_CONNECTIONS_PER_ADDRESS": "0",
    "JIOMOSA_CONNECTS_PER_MINUTE": "0",
    "JIOMOSA_MESSAGES_PER_SECOND": "0",
}


class StreamerProcess(ServerProcess):
    """``jiomosa serve`` as a real subprocess with its own settings."""

    name = "streamer"

    def __init__(self, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "JIOMOSA_ALLOW_HOSTS": PAGE_HOST,
            "JIOMOSA_LOG_FORMAT": "json",
            "JIOMOSA_WARM_BROWSERS": "1",
            "JIOMOSA_ADMIN_TOKEN": ADMIN_TOKEN,
            **NO_ABUSE_LIMITS,
            **(env or {}),
        }
        self.log_path = (log_dir or Path("/tmp")) / f"streamer-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jiomosa", "serve", "--host", "127.0.0.1",
                "--port", str(self.port)]

    def health_url(self) -> str:
        return self.base + "/health"

    def is_ready(self, body: bytes) -> bool:
        return int(self.env["JIOMOSA_WARM_BROWSERS"]) <= json.loads(body)["warm_browsers"]

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Whatever chromedriver/chromium the process left behind goes with its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode



def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --------------------------------------------------------------------------- fleet parts
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A throw-away redis-server on loopback that can be restarted on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                                capture_output=True, text=True, timeout=5)
        return result.stdout.strip()

    def calls(self, command: str) -> int:
        """How often ``command`` ran since start (INFO commandstats)."""
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith(f"cmdstat_{command}:"):
                return int(line.split("calls=", 1)[1].split(",", 1)[0])
        return 0


class Grid:
    """A standalone chromedriver: a WebDriver endpoint whose browsers outlive streamers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(["/usr/bin/chromedriver", f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=1) as r:
                    if json.load(r)["value"]["ready"]:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# --------------------------------------------------------------------------- clients
class Api:
    """REST calls against a streamer, returning (status, json)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(self, method: str, path: str, body: Any = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": dict(ADMIN)}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"]["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.base + path, **kwargs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def create(self, **body: Any) -> dict[str, Any]:
        status, data = await self.call("POST", "/api/session/create", body)
        assert status == 201, (status, data)
        return data

    async def close(self, session_id: str) -> None:
        await self.call("POST", f"/api/session/{session_id}/close")

    async def title(self, session_id: str) -> str:
        status, data = await self.call("GET", f"/api/session/{session_id}/info")
        assert status == 200, data
        return str(data["page_info"]["title"])

    async def wait_title(self, session_id: str, predicate: Callable[[str], bool],
                         timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        title = ""
        while time.monotonic() < deadline:
            title = await self.title(session_id)
            if predicate(title):
                return title
            await asyncio.sleep(0.05)
        raise AssertionError(f"title never matched; last was {title!r}")


class SioProbe:
    """A stock python-socketio client that records every event it receives."""

    def __init__(self, base: str, query: str = "") -> None:
        self.base = base
        self.query = query
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._changed = asyncio.Event()
        self.client.on("*", self._record)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events[event].append((time.monotonic(), data))
        self._changed.set()

    async def __aenter__(self) -> SioProbe:
        url = self.base + (f"?{self.query}" if self.query else "")
        await self.client.connect(url, transports=["websocket"], wait_timeout=10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    async def emit(self, event: str, data: Any = None) -> None:
        await self.client.emit(event, data)

    def frames(self) -> list[dict[str, Any]]:
        return [d for _, d in self.events["frame"]]

    async def wait_for(self, event: str, predicate: Callable[[Any], bool] = lambda _: True,
                       timeout: float = 10.0, start: int = 0) -> Any:
        """The first ``event`` at index >= ``start`` whose data satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for _, data in self.events[event][start:]:
                if predicate(data):
                    return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = {k: len(v) for k, v in self.events.items()}
                raise AssertionError(f"no {event!r} within {timeout}s; events seen: {seen}; "
                                     f"errors: {self.events.get('error')}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def subscribe(self, session_id: str, **extra: Any) -> dict[str, Any]:
        start = len(self.events["subscribed"])
        await self.emit("subscribe", {"session_id": session_id, **extra})
        await self.wait_for("subscribed", start=start)
        return await self.wait_for("frame", lambda f: f["session_id"] == session_id)


def pixel(jpeg: bytes, x: int, y: int) -> tuple[int, int, int]:
    """RGB of one pixel of a JPEG."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        r, g, b = image.convert("RGB").getpixel((x, y))  # type: ignore[misc]
        return int(r), int(g), int(b)
