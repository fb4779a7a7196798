"""A small Chrome DevTools Protocol client over an aiohttp websocket.

One connection talks to the browser target; pages are reached with flattened sessions
(``Target.attachToTarget(flatten=True)``), so one socket serves the page, its screencast and
its input. Commands are matched to replies by id; events go to listeners registered per
(session, method).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from jiomosa.core.errors import ClientError

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], None]


class CDPError(ClientError):
    """A CDP command failed, or the connection is gone. Clients are told only that the browser
    did not answer: the CDP message names internals."""

    status = 502
    public_message = "the browser did not answer"


class CDPConnectionClosed(CDPError):
    """The websocket to the browser closed (the browser exited or crashed)."""


class CDPConnection:
    """An open CDP websocket. Create with :meth:`connect`; close with :meth:`close`."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[tuple[str | None, str], list[EventHandler]] = {}
        self._close_callbacks: list[Callable[[], None]] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read_loop(), name="cdp-reader")

    @classmethod
    async def connect(cls, ws_url: str, timeout: float = 10.0,
                      token: str = "") -> CDPConnection:
        """Open the browser's DevTools websocket; ``token`` is sent as a bearer token (a
        browser pod's agent demands it)."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        http = aiohttp.ClientSession()
        try:
            # Screencast frames arrive as base64 inside JSON: allow large messages.
            ws = await asyncio.wait_for(
                http.ws_connect(ws_url, max_msg_size=256 * 1024 * 1024, compress=0,
                                headers=headers), timeout
            )
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    def on(self, method: str, handler: EventHandler, session_id: str | None = None) -> None:
        """Call ``handler(params)`` for every ``method`` event of ``session_id``."""
        self._listeners.setdefault((session_id, method), []).append(handler)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._close_callbacks.append(callback)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send a command and return its result; raise CDPError on an error reply."""
        if self.closed.is_set():
            raise CDPConnectionClosed("browser connection is closed")
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            return await asyncio.wait_for(future, timeout)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise CDPConnectionClosed(f"browser connection lost: {exc}") from None
        except TimeoutError:
            raise CDPError(f"{method} timed out after {timeout:.0f}s") from None
        finally:
            self._pending.pop(msg_id, None)

    def send_nowait(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> None:
        """Fire a command whose reply nobody waits for (e.g. a screencast ack)."""
        if self.closed.is_set():
            return
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        task = asyncio.create_task(self._ws.send_str(json.dumps(message)), name=f"cdp-{method}")
        task.add_done_callback(_swallow)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._http.close()
        self._finish()

    async def _read_loop(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                self._dispatch(data)
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket broke: same as a close
            log.debug("cdp reader stopped", exc_info=True)
        finally:
            self._finish()

    def _dispatch(self, data: dict[str, Any]) -> None:
        msg_id = data.get("id")
        if msg_id is not None:
            future = self._pending.get(msg_id)
            if future is not None and not future.done():
                if "error" in data:
                    err = data["error"]
                    future.set_exception(CDPError(f"{err.get('message')} ({err.get('code')})"))
                else:
                    future.set_result(data.get("result", {}))
            return
        method = data.get("method")
        if not method:
            return
        for handler in self._listeners.get((data.get("sessionId"), method), ()):
            try:
                handler(data.get("params", {}))
            except Exception:
                log.exception("cdp event handler for %s failed", method)

    def _finish(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPConnectionClosed("browser connection closed"))
        for callback in self._close_callbacks:
            try:
                callback()
            except Exception:
                log.exception("cdp close callback failed")


def _swallow(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
