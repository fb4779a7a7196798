"""The browser pod's agent (``jiomosa browser``) started as a process, as in its pod: the
token guards DevTools, the pod enforces the URL policy for its whole life (egress proxy + its
own ``Fetch``), whoever is attached, and downloads are refused."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import DOWNLOAD_NAME, PAGE_HOST, ROOT, TRAP_HOST, PageServer, ServerProcess, free_port

from jiomosa.browser.page import BrowserPage, NavigationError
from jiomosa.core.types import Viewport
from jiomosa.core.urlpolicy import UrlPolicy

pytestmark = pytest.mark.browser
# The test's own CDP client checks URLs too (as the streamer would); the pod decides alone.
CLIENT_POLICY = UrlPolicy.from_allow_list([PAGE_HOST])


class AgentProcess(ServerProcess):
    """``jiomosa browser`` with its own token, on a fresh loopback port."""

    name = "agent"

    def __init__(self, log_dir: Path, token: str = "", claim_token: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.token = token
        self.home = log_dir / f"home-{self.port}"
        self.home.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "JIOMOSA_ALLOW_HOSTS": PAGE_HOST,
            "JIOMOSA_LOG_FORMAT": "text",
            "JIOMOSA_BROWSER_TOKEN": token,
            "JIOMOSA_BROWSER_CLAIM_TOKEN": claim_token,
            "TMPDIR": str(self.home),
            **(env or {}),
        }
        self.log_path = log_dir / f"agent-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jiomosa", "browser", "--host", "127.0.0.1",
                "--port", str(self.port), "--width", "640", "--height", "480"]

    def health_url(self) -> str:
        return self.base + "/readyz"

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token if token is None else token}"}

    async def browser_url(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(
                self.base + "/json/version", headers=self.auth()) as answer:
            assert answer.status == 200
            return str((await answer.json())["webSocketDebuggerUrl"])

    async def attach(self) -> BrowserPage:
        return await BrowserPage.attach(await self.browser_url(), CLIENT_POLICY,
                                        Viewport(640, 480), token=self.token)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path_factory.mktemp("agent"), token=secrets.token_urlsafe(32))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log_tail()


@pytest.fixture
async def page(agent: AgentProcess) -> AsyncIterator[BrowserPage]:
    attached = await agent.attach()
    yield attached
    await attached.close()


async def _status(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as answer:
        return answer.status


async def eventually_title(page: BrowserPage, wanted: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    title = ""
    while time.monotonic() < deadline:
        title = str((await page.page_info())["title"])
        if title == wanted or title.startswith(wanted):
            return title
        await asyncio.sleep(0.05)
    return title


# ----------------------------------------------------------------------------- the token
async def test_devtools_demand_the_token(agent: AgentProcess) -> None:
    assert await _status(agent.base + "/readyz") == 200
    assert await _status(agent.base + "/json/version") == 401
    assert await _status(agent.base + "/json/version", agent.auth("x" * 43)) == 401
    assert await _status(agent.base + "/json/version", {"Authorization": agent.token}) == 401
    url = await agent.browser_url()
    assert url.startswith(f"ws://127.0.0.1:{agent.port}/devtools/browser/")
    # The id-less path is the same browser (what the operator publishes before the pod runs).
    fixed = await BrowserPage.attach(f"ws://127.0.0.1:{agent.port}/devtools/browser",
                                     CLIENT_POLICY, Viewport(), timeout=10, token=agent.token)
    await fixed.close()
    for token in ("", "wrong-" + agent.token, agent.token[:-1]):
        for target in (url, f"ws://127.0.0.1:{agent.port}/devtools/browser"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await BrowserPage.attach(target, UrlPolicy(), Viewport(), timeout=5, token=token)
            assert refused.value.status == 401
    # Chrome's own HTTP endpoints are not served at all, token or not.
    for path in ("/json", "/json/list", "/json/new?about:blank", "/devtools/inspector.html"):
        assert await _status(agent.base + path, agent.auth()) == 404
    # A warm-pool claim is refused when the pod has no claim token.
    async with aiohttp.ClientSession() as http, http.post(
            agent.base + "/claim", json={"token": "t" * 40}, headers=agent.auth("")) as answer:
        assert answer.status == 401


async def test_frames_flow_through_the_proxy(page: BrowserPage, pages: PageServer) -> None:
    frames: list[tuple[int, int]] = []
    page.set_frame_callback(lambda _jpeg, w, h, _meta: frames.append((w, h)))
    await page.start_screencast(80)
    await page.navigate(pages.url("/anim"), 20)
    deadline = time.monotonic() + 10
    while len(frames) < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(frames) >= 20 and frames[-1] == (640, 480)


# ----------------------------------------------------------------------------- the policy
def _probe_page(target: str, agent_port: int) -> str:
    """A page that tries, from inside the browser, every way out the review found."""
    return f"""<!doctype html><title>probing</title><body><script>
var left = 5, seen = [];
function done(what) {{
  seen.push(what); if (--left === 0) document.title = 'done:' + seen.join(','); }}
fetch('{target}/probe-fetch').then(function () {{ done('fetch-reached'); }},
                                  function () {{ done('fetch-blocked'); }});
fetch('http://127.0.0.1:{agent_port}/readyz').then(function () {{ done('agent-reached'); }},
                                                   function () {{ done('agent-blocked'); }});
var ws = new WebSocket('{target.replace("http", "ws")}/probe-ws');
ws.onopen = function () {{ done('ws-reached'); }};
ws.onerror = function () {{ done('ws-blocked'); }};
var ws2 = new WebSocket('ws://127.0.0.1:{agent_port}/devtools/browser/x');
ws2.onopen = function () {{ done('agentws-reached'); }};
ws2.onerror = function () {{ done('agentws-blocked'); }};
var f = document.createElement('iframe'); f.src = '{target}/probe-iframe';
f.onload = function () {{ done('iframe-loaded'); }}; document.body.appendChild(f);
</script></body>"""


async def test_a_page_reaches_no_loopback_port_and_no_private_range(
        agent: AgentProcess, page: BrowserPage, pages: PageServer, trap: PageServer) -> None:
    before = len(trap.requests)
    pages.html("/agent-probe", _probe_page(trap.url("").rstrip("/"), agent.port))
    await page.navigate(pages.url("/agent-probe"), 20)
    title = await eventually_title(page, "done:")
    assert title.startswith("done:"), title
    assert "reached" not in title, title
    # A redirect to loopback is refused too, and a private range (no listener needed: the
    # proxy refuses before connecting).
    pages.routes["/agent-redirect"] = lambda _p: (
        302, b"", "text/plain", {"Location": trap.url("/probe-redirect")})
    with pytest.raises(NavigationError, match="blocked"):
        await page.navigate(pages.url("/agent-redirect"), 20)
    pages.html("/agent-private", """<!doctype html><title>private</title><script>
fetch('http://10.0.0.1/x').then(function () { document.title = 'private-reached'; },
                                function () { document.title = 'private-blocked'; });
</script>""")
    await page.navigate(pages.url("/agent-private"), 20)
    assert await eventually_title(page, "private-") == "private-blocked"
    assert [r for r in trap.requests[before:] if "probe" in r] == []


async def test_filtering_holds_with_no_client_attached(
        agent: AgentProcess, pages: PageServer, trap: PageServer) -> None:
    """The page keeps trying after its only CDP client left: the pod still says no."""
    before = len(trap.requests)
    pages.html("/agent-later", f"""<!doctype html><title>later</title><script>
setTimeout(function () {{
  fetch('{trap.url("/later-fetch")}').catch(function () {{}});
  new WebSocket('{trap.url("/later-ws").replace("http", "ws")}');
  var i = document.createElement('img'); i.src = '{trap.url("/later-img")}';
  document.body.appendChild(i);
  document.title = 'tried';
}}, 1500);
</script>""")
    page = await agent.attach()
    await page.navigate(pages.url("/agent-later"), 20)
    await page.close()  # nobody attached from here on
    await asyncio.sleep(3.0)  # the page's timer fires 1.5 s after load
    watcher = await agent.attach()
    try:
        assert await eventually_title(watcher, "tried") == "tried"
    finally:
        await watcher.close()
    assert [r for r in trap.requests[before:] if "later" in r] == []


async def test_downloads_are_refused(agent: AgentProcess, page: BrowserPage,
                                     pages: PageServer) -> None:
    await page.navigate(pages.url("/download"), 20)
    await asyncio.sleep(2.0)  # a download, if allowed, would be written by now
    found = [p for p in agent.home.rglob("*") if DOWNLOAD_NAME in p.name]
    assert found == []



def test_the_agent_needs_only_its_own_requirements() -> None:
    """The browser image installs jiomosa without the streamer's and the operator's
    requirements, only those in tools/images/agent-requirements.txt (and theirs): every
    distribution the agent imports must be among them."""
    def modules(imports: str) -> set[str]:
        code = (f"import sys{imports}; "
                "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
        return set(subprocess.run([sys.executable, "-c", code], check=True,
                                  capture_output=True, text=True).stdout.split())

    # What the interpreter loads by itself (site hooks of the venv) is not the agent's.
    loaded = modules(", jiomosa.cli, jiomosa.agent.main") - modules("")
    listed = {line.strip() for line in (ROOT / "tools/images/agent-requirements.txt")
              .read_text().splitlines() if line.strip() and not line.startswith("#")}
    allowed = _closure(listed) | {"jiomosa"}
    providers = importlib.metadata.packages_distributions()
    imported = {_canonical(dist) for module in loaded for dist in providers.get(module, [])}
    assert imported - allowed == set(), "the agent imports packages its image lacks"
    assert {"aiohttp", "jiomosa"} <= imported


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` need, installed ones only (a requirement whose marker does
    not hold here is not installed and cannot be imported either)."""
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in requires:
            if "extra ==" not in req:
                todo.append(_canonical(re.split(r"[<>=!~ \[;(]", req, maxsplit=1)[0]))
    return seen


async def test_a_rebinding_name_reaches_nothing_private(
        tmp_path_factory: pytest.TempPathFactory, pages: PageServer, trap: PageServer) -> None:
    """A host name that resolves to the pod's loopback (DNS rebinding): the pod resolves it
    itself, in the egress proxy and in its Fetch guard, and connects to nothing private."""
    from fakedns import FakeDns

    dns = FakeDns({"rebind.jiomosa-probe.net": [TRAP_HOST]}).start()
    # A short directory: Chromium's singleton socket path must fit a Unix socket name.
    agent = AgentProcess(tmp_path_factory.mktemp("rb"), token=secrets.token_urlsafe(32),
                         env={"JIOMOSA_DNS_SERVERS": dns.address})
    agent.start()
    try:
        before = len(trap.requests)
        target = f"http://rebind.jiomosa-probe.net:{trap.port}"
        pages.html("/agent-rebind", f"""<!doctype html><title>rebind</title><script>
fetch('{target}/rebind-fetch').then(function () {{ document.title = 'rebind-reached'; }},
                                     function () {{ document.title = 'rebind-blocked'; }});
new WebSocket('{target.replace("http", "ws")}/rebind-ws');
</script>""")
        page = await agent.attach()
        try:
            await page.navigate(pages.url("/agent-rebind"), 20)
            assert await eventually_title(page, "rebind-") == "rebind-blocked"
        finally:
            await page.close()
        await asyncio.sleep(0.5)
        assert [r for r in trap.requests[before:] if "rebind" in r] == []
        assert dns.queries["rebind.jiomosa-probe.net"] >= 1  # the pod really asked DNS for the name
    finally:
        agent.stop()
        dns.stop()


async def test_sigterm_with_a_client_attached_ends_promptly(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A pod whose session is being streamed stops at once on SIGTERM: the DevTools websocket
    the streamer holds ends with Chromium instead of holding the server's cleanup (60 s, far
    past a pod's grace period) open."""
    # A short directory: Chromium's singleton socket lives under HOME (108-byte limit).
    proc = AgentProcess(tmp_path_factory.mktemp("stop"), token=secrets.token_urlsafe(32))
    proc.start()
    try:
        attached = await proc.attach()
        assert proc.proc is not None
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        # The wait is long enough for a busy machine and far below aiohttp's 60 s.
        code = await asyncio.to_thread(proc.proc.wait, 30)
        took = time.monotonic() - start
        await attached.close()
    finally:
        proc.stop()
    assert code == 0, proc.log_tail()
    assert took < 20, f"stopped after {took:.1f} s"
