"""The agent's one port: ``/readyz`` and a CDP WebSocket proxy behind a bearer token.

Only the DevTools WebSocket paths of the browser and its pages are proxied (``/devtools/
browser/{id}``, ``/devtools/page/{id}``, and ``/devtools/browser`` for the browser whatever its
id: the operator publishes that one before Chromium has said its id); Chrome's HTTP endpoints
(``/json/new`` and the like) are not reachable from outside the pod at all. ``GET
/json/version`` answers the browser's proxied WebSocket path, token required, so a client can
find it the way it would on Chrome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

MAX_MESSAGE = 256 * 1024 * 1024  # screencast frames travel as base64 inside JSON
DEVTOOLS_PATH = "/devtools/{kind:browser|page}/{target:[A-Za-z0-9-]{1,64}}"

TokenSource = Callable[[], str]
"""The session's current token ('' while the pod serves no session: every request is 401)."""
Readiness = Callable[[], Awaitable[bool]]


def bearer_ok(request: web.Request, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>``; nothing matches ''."""
    offered = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    # Headers are str decoded as latin-1 by aiohttp: compare bytes of that same encoding.
    return bool(token) and hmac.compare_digest(
        offered.encode("latin-1", "replace"), expected.encode("latin-1", "replace"))


class CdpProxy:
    def __init__(self, chrome_port: Callable[[], int], browser_path: Callable[[], str],
                 token: TokenSource, ready: Readiness) -> None:
        self._chrome_port = chrome_port
        self._browser_path = browser_path
        self._token = token
        self._ready = ready
        self._http: aiohttp.ClientSession | None = None
        self.connections = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/json/version", self.version)
        app.router.add_get(DEVTOOLS_PATH, self.devtools)
        app.router.add_get("/devtools/browser", self.devtools)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def readyz(self, _request: web.Request) -> web.Response:
        if await self._ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False}, status=503)

    def _authorize(self, request: web.Request) -> None:
        if not bearer_ok(request, self._token()):
            raise web.HTTPUnauthorized(
                text='{"error": "a valid bearer token is required"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="jiomosa-browser"'})

    async def version(self, request: web.Request) -> web.Response:
        self._authorize(request)
        async with self._session().get(
                f"http://127.0.0.1:{self._chrome_port()}/json/version") as answer:
            info: dict[str, Any] = await answer.json()
        path = str(info.get("webSocketDebuggerUrl", "")).split(str(self._chrome_port()), 1)[-1]
        host = request.host
        return web.json_response({"Browser": info.get("Browser", ""),
                                  "Protocol-Version": info.get("Protocol-Version", ""),
                                  "webSocketDebuggerUrl": f"ws://{host}{path}"})

    async def devtools(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        if "kind" in request.match_info:
            path = f"/devtools/{request.match_info['kind']}/{request.match_info['target']}"
        else:
            path = self._browser_path()
        upstream_url = f"ws://127.0.0.1:{self._chrome_port()}{path}"
        try:
            upstream = await self._session().ws_connect(
                upstream_url, max_msg_size=MAX_MESSAGE, compress=0)
        except (aiohttp.ClientError, OSError):
            raise web.HTTPNotFound(text='{"error": "no such DevTools target"}',
                                   content_type="application/json") from None
        client = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False)
        await client.prepare(request)
        self.connections += 1
        try:
            await _pump_both(client, upstream)
        finally:
            self.connections -= 1
            await upstream.close()
            await client.close()
        return client


async def _pump_both(client: web.WebSocketResponse,
                     upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(source: Any, sink: Any) -> None:
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            else:
                break

    tasks = [asyncio.ensure_future(pump(client, upstream)),
             asyncio.ensure_future(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
