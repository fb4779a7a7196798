"""Socket.IO streaming: the original's events (subscribe, input:*, quality/fps/adaptive) plus
``input:key`` and ``session:closed`` (the table is ``events.EVENTS``). Frames go out per client
through its ``Subscriber``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from jiomosa.core import validation as v
from jiomosa.core.errors import ClientError, SessionError, status_of
from jiomosa.core.guard import Guard
from jiomosa.core.settings import Settings
from jiomosa.frames.delta import DeltaUpdate
from jiomosa.frames.hub import Frame
from jiomosa.frames.pacer import Subscriber
from jiomosa.sessions.manager import SessionManager
from jiomosa.sessions.session import Session, Share
from jiomosa.transports import events
from jiomosa.transports.sioserver import BoundedServer, ConnectionGate

MAX_IN_FLIGHT = 32
"""Events one Socket.IO client may have being handled at once; more are answered ``error``."""


class SocketIOTransport:
    """Frames as Socket.IO ``frame`` events; drain measured on the Engine.IO send queue."""

    name = "socketio"

    def __init__(self, sio: socketio.AsyncServer, sid: str, channel: SocketIOChannel) -> None:
        self._sio = sio
        self.sid = sid
        self._channel = channel

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber,
                         key: bool = False) -> None:
        if sub is not self._channel.sub:
            return  # a subscription being replaced: its frames would name the wrong session
        payload = {
            "session_id": events.shown_id(self._channel, sub.hub.session_id),
            "seq": frame.seq,
            "timestamp": frame.timestamp,
            "width": frame.width,
            "height": frame.height,
            "quality": min(sub.quality, frame.quality),
            "encoding": sub.encoding,
            "image": image.decode("ascii") if sub.encoding == "base64" else image,
            "stats": sub.stats(),
        }
        if key:  # a delta client's key frame (docs/protocol.md, *Delta frames*)
            payload["key"] = True
        await self._sio.emit("frame", payload, to=self.sid)

    async def send_delta(self, update: DeltaUpdate, sub: Subscriber) -> None:
        if sub is self._channel.sub:
            await self._sio.emit("frame:delta", update.event(
                events.shown_id(self._channel, sub.hub.session_id)), to=self.sid)

    def _eio_sid(self) -> str | None:
        try:
            eio_sid: str | None = self._sio.manager.eio_sid_from_sid(self.sid, "/")
        except KeyError:
            return None
        return eio_sid

    def link_socket(self) -> Any:
        """The client's TCP socket when it uses the websocket transport (delta clients read
        its TCP_INFO, ``frames/link.py``); None on long-polling."""
        eio_sid = self._eio_sid()
        connection = self._sio.eio.connections.get(eio_sid) if eio_sid else None
        return connection.get_extra_info("socket") if connection is not None else None

    def queued_bytes(self) -> int:
        eio_sid = self._eio_sid()
        queue = self._sio.eio.queue_of(eio_sid) if eio_sid else None
        return queue.queued_bytes if queue is not None else 0

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


class SocketIOChannel:
    """One Socket.IO connection (``events.ClientChannel``): it may subscribe to any session."""

    def __init__(self, server: StreamServer, sid: str, encoding: str) -> None:
        self.id = sid
        self.settings = server.settings
        self._transport = SocketIOTransport(server.sio, sid, self)
        self.default_encoding = encoding
        self.subscribe_extra: dict[str, Any] = {}
        self.sub: Subscriber | None = None
        self.subscribed_to: Session | None = None
        self.grant: Share | None = None
        self.in_flight = 0
        """Events of this client being handled now (at most ``MAX_IN_FLIGHT``)."""
        self.messages = server.guard.message_limit()
        """Its message rate (``JIOMOSA_MESSAGES_PER_SECOND``)."""
        self._server = server

    @property
    def transport(self) -> SocketIOTransport:
        return self._transport

    async def send(self, event: str, data: Any, reply: bool = True) -> None:
        await self._server.sio.emit(event, data, to=self.id)

    async def target(self, payload: dict[str, Any]) -> tuple[Session, Share | None]:
        manager = self._server.manager
        if "share" in payload:  # a share link: {"share": token}
            if "session_id" in payload:
                raise v.BadRequest("subscribe names a session_id or a share, not both")
            return await manager.lookup_share(v.string(payload, "share", 128))
        return await manager.lookup(v.string(payload, "session_id", 128)), None

    async def input_session(self) -> Session:
        if self.sub is None or self.subscribed_to is None:
            raise SessionError("not subscribed to a session (send subscribe first)")
        return await self._server.manager.lookup(self.subscribed_to.id)


class StreamServer:
    """The Socket.IO server and its clients' channels."""

    def __init__(self, settings: Settings, manager: SessionManager,
                 guard: Guard | None = None) -> None:
        self.settings = settings
        self.manager = manager
        self.guard = guard or Guard(settings)
        origins: str | list[str] = "*" if settings.cors_origins == "*" else [
            o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        # Bounded: a client that does not read is dropped past max_queued_bytes (sioserver).
        self.sio = BoundedServer(
            async_mode="aiohttp",
            cors_allowed_origins=origins,
            max_http_buffer_size=settings.max_body_bytes,
            max_queued_bytes=settings.max_queued_bytes,
            connection_gate=AddressGate(self.guard),
            ping_interval=20,
            ping_timeout=20,
            logger=False,
            engineio_logger=False,
        )
        self._channels: dict[str, SocketIOChannel] = {}
        manager.on_closed(self._session_closed)
        manager.on_unshared(self._unshared)
        manager.on_state(self._session_state)
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        for event in events.EVENTS:
            if event != "ping":
                self.sio.on(event, self._handler(event))
        # ping answers through the Socket.IO ack, so a viewer can show its round trip.
        self.sio.on("ping", self._ping)
        # Events nobody handles are ignored, but count against the sender's message rate.
        self.sio.on("*", self._other)

    def attach(self, app: web.Application) -> None:
        self.sio.attach(app)

    def _handler(self, event: str) -> Callable[..., Awaitable[None]]:
        @functools.wraps(events.EVENTS[event])
        async def run(sid: str, data: Any = None, *_extra: Any) -> None:
            channel = self._channels.get(sid)
            if channel is None or await self._refused(channel, event):
                return
            # python-socketio runs every event in a task of its own: without a cap, a client
            # sending input faster than Chrome takes it piles up tasks holding its payloads.
            if channel.in_flight >= MAX_IN_FLIGHT:
                await channel.send("error", {
                    "message": f"too many events in flight (at most {MAX_IN_FLIGHT}); wait "
                               "for their answers", "event": event})
                return
            channel.in_flight += 1
            try:
                await events.dispatch(channel, event, data)
            finally:
                channel.in_flight -= 1
        return run

    async def _ping(self, sid: str, data: Any = None, *_extra: Any) -> dict[str, Any] | None:
        channel = self._channels.get(sid)
        if channel is None or await self._refused(channel, "ping"):
            return None
        return events.pong(channel, data)

    async def _other(self, event: str, sid: str, *_data: Any) -> None:
        channel = self._channels.get(sid)
        if channel is not None:
            await self._refused(channel, event)

    async def _refused(self, channel: SocketIOChannel, event: str) -> bool:
        """Count one event against the client's message rate: True if it is not to be
        handled (told so, or dropped for flooding)."""
        try:
            return await events.refused(channel, self.guard, channel.messages, event)
        except events.Flooding as exc:
            try:
                eio_sid = self.sio.manager.eio_sid_from_sid(channel.id, "/")
            except KeyError:  # gone meanwhile
                eio_sid = None
            if eio_sid is not None:
                self.sio.eio.drop(eio_sid, str(exc))
            return True

    async def _connect(self, sid: str, environ: dict[str, Any], _auth: Any = None) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        encoding = (query.get("encoding") or [self.settings.frame_encoding])[0]
        channel = SocketIOChannel(self, sid,
                                  encoding if encoding in ("binary", "base64") else "binary")
        self._channels[sid] = channel
        await channel.send("status", {"message": "Connected to Jiomosa", "type": "connection",
                                      "sid": sid})

    async def _disconnect(self, sid: str, *_reason: Any) -> None:
        channel = self._channels.pop(sid, None)
        if channel is not None:
            await events.unsubscribe(channel)

    async def _session_closed(self, session: Session, reason: str) -> None:
        for channel in list(self._channels.values()):
            await events.session_closed(channel, session, reason)

    async def _unshared(self, session: Session, reason: str) -> None:
        for channel in list(self._channels.values()):
            if events.revoked(channel, session):
                await events.session_closed(channel, session, reason)

    async def _session_state(self, session: Session, state: str) -> None:
        for channel in list(self._channels.values()):
            await events.session_state(channel, session, state)

    async def shutdown(self) -> None:
        for channel in list(self._channels.values()):
            await events.unsubscribe(channel)
        await asyncio.gather(*(self.sio.disconnect(sid) for sid in list(self._channels)),
                             return_exceptions=True)


class AddressGate(ConnectionGate):
    """Socket.IO connections per client address (``JIOMOSA_CONNECTIONS_PER_ADDRESS``,
    ``JIOMOSA_CONNECTS_PER_MINUTE``), counted with the plain WebSocket's."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def _address(self, environ: dict[str, Any]) -> str:
        request = environ.get("aiohttp.request")
        if not isinstance(request, web.BaseRequest):
            return self._guard.address(environ.get("REMOTE_ADDR"))
        return self._guard.address(request.remote, request.headers.getall("X-Forwarded-For", []))

    def admit(self, environ: dict[str, Any]) -> tuple[str, int | None] | None:
        try:
            self._guard.check_connection(self._address(environ))
        except ClientError as exc:
            _, message, extra = status_of(exc)
            wait = extra.get("retry_after")
            return message, int(wait) if wait is not None else None
        return None

    def opened(self, sid: str, environ: dict[str, Any]) -> None:
        self._guard.connection_opened(self._address(environ), "sio-" + sid)

    def closed(self, sid: str) -> None:
        self._guard.connection_closed("sio-" + sid)
