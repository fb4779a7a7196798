"""Run a browser pod's agent: ``jiomosa browser`` (options: ``jiomosa browser --help``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from jiomosa.agent.chrome import ChromeProcess
from jiomosa.agent.server import CdpProxy, bearer_ok
from jiomosa.browser.cdp import CDPConnection, CDPError
from jiomosa.browser.egress import EgressProxy
from jiomosa.browser.fetchguard import RequestGuard
from jiomosa.core import dns
from jiomosa.core.settings import Settings
from jiomosa.core.tasks import TaskSet
from jiomosa.core.urlpolicy import UrlPolicy

log = logging.getLogger(__name__)

DEFAULT_PORT = 9300
READY_PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class AgentOptions:
    port: int
    """The pod's one port: /readyz, /claim and the CDP proxy."""
    host: str
    token: str
    """The session's bearer token ('' for a warm-pool pod until it is claimed)."""
    claim_token: str
    """Lets the operator hand a warm-pool pod its session token once ('' disables /claim)."""
    width: int
    height: int
    user_agent: str = ""
    """Chromium's user agent for the whole browser ('' = its own)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the one port the pod serves (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--token-file", default=os.environ.get("JIOMOSA_BROWSER_TOKEN_FILE", ""),
                        help="file holding the session's bearer token (a mounted Secret); "
                             "or set JIOMOSA_BROWSER_TOKEN")
    parser.add_argument("--width", type=int, default=0,
                        help="window width (default JIOMOSA_DEFAULT_WIDTH)")
    parser.add_argument("--height", type=int, default=0,
                        help="window height (default JIOMOSA_DEFAULT_HEIGHT)")
    parser.add_argument("--user-agent",
                        default=os.environ.get("JIOMOSA_BROWSER_USER_AGENT", ""),
                        help="the browser's user agent (default JIOMOSA_BROWSER_USER_AGENT, "
                             "else Chromium's own)")


def options_from(args: argparse.Namespace, settings: Settings) -> AgentOptions:
    token = os.environ.get("JIOMOSA_BROWSER_TOKEN", "")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    return AgentOptions(
        port=args.port, host=args.host, token=token,
        claim_token=os.environ.get("JIOMOSA_BROWSER_CLAIM_TOKEN", ""),
        width=args.width or settings.default_width,
        height=args.height or settings.default_height,
        user_agent=args.user_agent)


class Agent:
    """Chromium, the egress proxy, the agent's own CDP guard and the proxy port."""

    def __init__(self, settings: Settings, options: AgentOptions) -> None:
        self.settings = settings
        self.options = options
        self.policy = UrlPolicy.from_allow_list(settings.allow_hosts)
        self.egress = EgressProxy(self.policy)
        self.chrome: ChromeProcess | None = None
        self._guard: CDPConnection | None = None
        self._token = options.token
        self._tasks = TaskSet("agent")
        self.proxy = CdpProxy(lambda: self.chrome.port if self.chrome else 0,
                              lambda: self.chrome.ws_path if self.chrome else "",
                              lambda: self._token, self.ready)
        self.blocked = 0

    # ----------------------------------------------------------------- life
    async def start(self) -> None:
        s = self.settings
        # The pod's own resolver, as the streamer's (JIOMOSA_DNS_*): the egress proxy and the
        # Fetch guard resolve every host themselves.
        dns.configure(dns.DnsConfig(servers=s.dns_servers, timeout=s.dns_timeout,
                                    max_lookups=s.dns_max_lookups, max_ttl=s.dns_max_ttl,
                                    negative_ttl=s.dns_negative_ttl))
        await self.egress.start()
        user_agent = (f"--user-agent={self.options.user_agent}",) if self.options.user_agent else ()
        self.chrome = ChromeProcess(
            self.settings.chromium_path, self.options.width, self.options.height,
            (*self.settings.extra_chrome_args, *user_agent, *self.egress.chrome_args()))
        await self.chrome.start()
        self._guard = await CDPConnection.connect(self.chrome.ws_url)
        # The pod's own Fetch interception holds whoever is (or is not) attached.
        await RequestGuard(self._guard, self.policy, self._tasks, self._blocked).enable()
        await self._guard.send("Browser.setDownloadBehavior", {"behavior": "deny"})

    async def stop(self) -> None:
        if self._guard is not None:
            await self._guard.close()
        await self._tasks.close()
        if self.chrome is not None:
            await self.chrome.stop()
        await self.egress.stop()
        await dns.shutdown()

    def _blocked(self, url: str) -> None:
        self.blocked += 1
        log.info("blocked request to %s", url)

    async def ready(self) -> bool:
        """Chromium answers CDP on the agent's own connection."""
        if self._guard is None or self.chrome is None or not self.chrome.running:
            return False
        try:
            await self._guard.send("Browser.getVersion", timeout=READY_PROBE_TIMEOUT)
        except (CDPError, TimeoutError):
            return False
        return True

    # ----------------------------------------------------------------- warm pool
    async def claim(self, request: web.Request) -> web.Response:
        """The operator hands this pod to one session: its token, once."""
        if not bearer_ok(request, self.options.claim_token):
            return web.json_response({"error": "a valid claim token is required"}, status=401)
        if self._token:
            return web.json_response({"error": "this browser is already claimed"}, status=409)
        try:
            body = await request.json()
            token = str(body["token"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'send {"token": "..."}'}, status=400)
        if len(token) < 32 or not token.isascii() or not token.isprintable():
            return web.json_response({"error": "the token must be 32+ printable ASCII "
                                               "characters"}, status=400)
        self._token = token
        log.info("claimed for a session")
        return web.json_response({"claimed": True})

    def app(self) -> web.Application:
        app = self.proxy.app()
        app.router.add_post("/claim", self.claim)
        return app


async def serve(settings: Settings, options: AgentOptions) -> int:
    agent = Agent(settings, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    runner = web.AppRunner(agent.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    assert agent.chrome is not None
    log.info("browser agent ready on %s:%d", options.host, options.port)
    chrome_exit = asyncio.ensure_future(agent.chrome.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({chrome_exit, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if chrome_exit.done():
        code = 1  # the browser died: the pod fails and its session with it
        log.warning("chromium exited (%s); the agent stops", chrome_exit.result())
    for task in (chrome_exit, stopping):
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    # Chromium first: the DevTools websockets the proxy holds end with it. The server's
    # cleanup waits for open handlers (60 s), so in the other order a pod with a streamer
    # attached would use its whole grace period and be killed.
    await agent.stop()
    await runner.cleanup()
    return code


def main(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(serve(settings, options_from(args, settings)))
