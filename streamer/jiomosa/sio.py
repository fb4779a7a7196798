"""Socket.IO streaming: the original's events (subscribe, input:*, quality/fps/adaptive) plus
``input:key`` and ``session:closed``. Frames go out per client through ``Subscriber``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from jiomosa import control
from jiomosa import validation as v
from jiomosa.browser.cdp import CDPError
from jiomosa.browser.page import InputError
from jiomosa.manager import SessionManager
from jiomosa.sessions import AnySession, SessionError
from jiomosa.settings import Settings
from jiomosa.streaming import Frame, Subscriber
from jiomosa.urlpolicy import UrlRejected

log = logging.getLogger(__name__)

Handler = Callable[["StreamServer", str, Any], Awaitable[None]]


class SocketIOTransport:
    """Frames as Socket.IO ``frame`` events; drain measured on the Engine.IO send queue."""

    name = "socketio"

    def __init__(self, sio: socketio.AsyncServer, sid: str) -> None:
        self._sio = sio
        self.sid = sid

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber) -> None:
        payload = {
            "session_id": frame_session(sub),
            "seq": frame.seq,
            "timestamp": frame.timestamp,
            "width": frame.width,
            "height": frame.height,
            "quality": min(sub.quality, frame.quality),
            "encoding": sub.encoding,
            "image": image.decode("ascii") if sub.encoding == "base64" else image,
            "stats": sub.stats(),
        }
        await self._sio.emit("frame", payload, to=self.sid)

    async def drained(self) -> None:
        # Engine.IO's writer takes packets off this queue only after it has written the
        # previous batch to the socket (which waits for TCP to drain): an empty queue means
        # the client has taken everything but the frame now being written.
        try:
            eio_sid = self._sio.manager.eio_sid_from_sid(self.sid, "/")
            sock = self._sio.eio.sockets.get(eio_sid) if eio_sid else None
        except KeyError:
            return
        if sock is not None and not sock.closed:
            await sock.queue.join()


def frame_session(sub: Subscriber) -> str:
    return sub.hub.session_id


class StreamServer:
    """The Socket.IO server and the subscriptions of its clients."""

    def __init__(self, settings: Settings, manager: SessionManager) -> None:
        self.settings = settings
        self.manager = manager
        origins: str | list[str] = "*" if settings.cors_origins == "*" else [
            o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins=origins,
            max_http_buffer_size=settings.max_body_bytes,
            ping_interval=20,
            ping_timeout=20,
            logger=False,
            engineio_logger=False,
        )
        self._subscriptions: dict[str, Subscriber] = {}  # sid -> its one subscription
        self._encodings: dict[str, str] = {}
        manager.on_closed(self._session_closed)
        self._register()

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app)

    # --------------------------------------------------------------- plumbing
    def _register(self) -> None:
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        events: dict[str, Handler] = {
            "subscribe": StreamServer._subscribe,
            "unsubscribe": StreamServer._unsubscribe,
            "input:click": _input("click"),
            "input:scroll": _input("scroll"),
            "input:text": _input("text"),
            "input:key": _input("key"),
            "quality:set": StreamServer._quality_set,
            "fps:set": StreamServer._fps_set,
            "adaptive:toggle": StreamServer._adaptive_toggle,
        }
        # ping answers through the Socket.IO ack, so a viewer can show its round trip.
        self.sio.on("ping", self._ping)
        for event, handler in events.items():
            self.sio.on(event, self._guarded(event, handler))

    def _guarded(self, event: str, handler: Handler) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def run(sid: str, data: Any = None, *_extra: Any) -> None:
            try:
                await handler(self, sid, data)
            except (v.BadRequest, InputError, UrlRejected, SessionError) as exc:
                await self._error(sid, str(exc), event)
            except CDPError:
                await self._error(sid, "the browser did not answer", event)
            except Exception:
                log.exception("socket.io handler %s failed", event)
                await self._error(sid, "internal error", event)
        return run

    async def _error(self, sid: str, message: str, event: str) -> None:
        await self.sio.emit("error", {"message": message, "event": event}, to=sid)

    # --------------------------------------------------------------- connection
    async def _connect(self, sid: str, environ: dict[str, Any], _auth: Any = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        encoding = (query.get("encoding") or [self.settings.frame_encoding])[0]
        self._encodings[sid] = encoding if encoding in ("binary", "base64") else "binary"
        await self.sio.emit("status", {"message": "Connected to Jiomosa", "type": "connection",
                                       "sid": sid}, to=sid)

    async def _disconnect(self, sid: str, *_reason: Any) -> None:
        self._encodings.pop(sid, None)
        await self._drop(sid)

    async def _drop(self, sid: str) -> Subscriber | None:
        sub = self._subscriptions.pop(sid, None)
        if sub is not None:
            await sub.hub.remove(sub.id)
            with contextlib.suppress(SessionError):
                # Idle time counts from the last subscriber leaving.
                (await self.manager.lookup(sub.hub.session_id)).touch()
        return sub

    async def subscription(self, sid: str) -> tuple[Subscriber, AnySession]:
        sub = self._subscriptions.get(sid)
        if sub is None:
            raise SessionError("not subscribed to a session")
        return sub, await self.manager.lookup(sub.hub.session_id)

    # --------------------------------------------------------------- events
    async def _subscribe(self, sid: str, data: Any) -> None:
        payload = v.as_object(data)
        session = await self.manager.lookup(v.string(payload, "session_id", 128))
        options = control.stream_options(payload, self.settings,
                                          self._encodings.get(sid, "binary"))
        await self._drop(sid)
        sub = await control.start_subscriber(sid, session, SocketIOTransport(self.sio, sid),
                                             options, self.settings, self._quality_changed)
        await self.sio.emit("subscribe:response", control.subscribe_response(session, sub),
                            to=sid)
        await self.sio.emit("subscribed", control.subscribed(session), to=sid)
        self._subscriptions[sid] = sub
        session.hub.add(sub)  # sends the current picture at once

    async def _ping(self, _sid: str, data: Any = None) -> dict[str, Any]:
        return {"echo": data if isinstance(data, int | float | str) else None,
                "server_time": time.time()}

    async def _unsubscribe(self, sid: str, _data: Any) -> None:
        sub = await self._drop(sid)
        message = "Unsubscribed" if sub else "Not subscribed"
        await self.sio.emit("unsubscribed", {"message": message}, to=sid)

    async def _quality_set(self, sid: str, data: Any) -> None:
        sub, session = await self.subscription(sid)
        answer = await control.set_quality(sub, session, data, self.settings)
        await self.sio.emit("quality:updated", answer, to=sid)

    async def _fps_set(self, sid: str, data: Any) -> None:
        sub, _ = await self.subscription(sid)
        await self.sio.emit("fps:updated", control.set_fps(sub, data), to=sid)

    async def _adaptive_toggle(self, sid: str, data: Any) -> None:
        sub, _ = await self.subscription(sid)
        await self.sio.emit("adaptive:updated", control.toggle_adaptive(sub, data), to=sid)

    async def _quality_changed(self, sub: Subscriber, reason: str) -> None:
        await self.sio.emit("quality:updated", control.adaptive_change(sub, reason), to=sub.id)

    async def _session_closed(self, session: AnySession, reason: str) -> None:
        for sid, sub in list(self._subscriptions.items()):
            if sub.hub.session_id == session.id:
                self._subscriptions.pop(sid, None)
                await sub.stop()
                await self.sio.emit("session:closed", {"session_id": session.id,
                                                       "reason": reason}, to=sid)

    async def shutdown(self) -> None:
        for sid in list(self._subscriptions):
            await self._drop(sid)
        await asyncio.gather(*(self.sio.disconnect(sid) for sid in list(self._encodings)),
                             return_exceptions=True)


def _input(kind: str) -> Handler:
    async def handle(server: StreamServer, sid: str, data: Any) -> None:
        _, session = await server.subscription(sid)
        ack = await session.input(kind, data)
        await server.sio.emit("input:acknowledged", ack, to=sid)
    handle.__name__ = f"input_{kind}"
    return handle
