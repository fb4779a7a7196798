"""The URL policy inside the browser: every request the browser makes waits for a verdict.

``Fetch.enable`` on the browser target pauses each request (the page's, its out-of-process
iframes', its workers', redirects included) until we continue or fail it. Verdicts for a host
are cached briefly: a page's subresources come in bursts from few hosts. Page-opened
WebSockets are not paused by ``Fetch``; the egress proxy covers them (``egress.py``).

One page may have only a few host-name lookups in flight (``MAX_LOOKUPS``): a page that asks
for hundreds of never-answering names waits behind its own lookups and leaves the streamer's
shared lookup slots (``core/dns.py``) to the other sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from jiomosa.browser.cdp import CDPConnection, CDPError
from jiomosa.core.tasks import TaskSet
from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected

VERDICT_TTL = 10.0  # seconds a host's verdict is reused
MAX_VERDICTS = 1024  # hosts remembered per browser; expired ones go first beyond this
MAX_LOOKUPS = 8  # policy checks (lookups) one browser may have in flight
ALWAYS_ALLOWED_SCHEMES = frozenset({"data", "blob", "about", "chrome-extension", "devtools"})


class RequestGuard:
    """Decides every paused request of one browser connection."""

    def __init__(self, conn: CDPConnection, policy: UrlPolicy, tasks: TaskSet,
                 on_blocked: Callable[[str], None]) -> None:
        self._conn = conn
        self._policy = policy
        self._tasks = tasks
        self._on_blocked = on_blocked
        self._verdicts: dict[str, tuple[bool, float]] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)

    async def enable(self) -> None:
        self._conn.on("Fetch.requestPaused", self._paused)
        await self._conn.send(
            "Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}
        )

    def _paused(self, params: dict[str, Any]) -> None:
        self._tasks.spawn(self._decide(params), "url-policy")

    async def _decide(self, params: dict[str, Any]) -> None:
        request_id = params.get("requestId")
        url = str(params.get("request", {}).get("url", ""))
        allowed = await self.allowed(url)
        try:
            if allowed:
                await self._conn.send("Fetch.continueRequest", {"requestId": request_id})
            else:
                self._on_blocked(redact(url))
                await self._conn.send(
                    "Fetch.failRequest", {"requestId": request_id, "errorReason": "BlockedByClient"}
                )
        except CDPError:
            pass  # the request went away (page navigated, browser closed)

    async def allowed(self, url: str) -> bool:
        if urlsplit(url).scheme.lower() in ALWAYS_ALLOWED_SCHEMES:
            return True
        try:
            _, host = self._policy.check_syntax(url)
        except UrlRejected:
            return False
        now = time.monotonic()
        cached = self._verdicts.get(host)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._lookups:
            try:
                await self._policy.check(url)
                verdict = True
            except UrlRejected:
                verdict = False
        now = time.monotonic()
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts = {h: v for h, v in self._verdicts.items() if v[1] > now}
            while len(self._verdicts) >= MAX_VERDICTS:
                del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[host] = (verdict, now + VERDICT_TTL)
        return verdict


def redact(url: str) -> str:
    """A URL fit for a log line: no query, no fragment, a short path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path[:64]}"
