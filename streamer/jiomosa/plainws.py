"""Plain WebSocket streaming for clients without Socket.IO: ``GET /api/session/{id}/stream``.

One connection streams one session (the one in the path). Server to client, every *binary*
message is one frame: a 24-byte header followed by the JPEG (``FRAME_HEADER``). Every *text*
message, in both directions, is one JSON envelope ``{"event": NAME, "data": {...}, "id": ID}``
whose event names and payloads are those of the Socket.IO contract (``input:click``,
``quality:set``, ``input:acknowledged``, ``error``, ``session:closed``, ...); ``id`` is optional
and echoed in the answer. docs/protocol.md is the full contract.

Frames go out through the same ``FrameHub``/``Subscriber`` as Socket.IO: per-client pacing,
latest-frame-wins and adaptive quality driven by how long this socket takes to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from jiomosa import control
from jiomosa import validation as v
from jiomosa.api import error as http_error
from jiomosa.appkeys import MANAGER, SETTINGS
from jiomosa.browser.cdp import CDPError
from jiomosa.browser.page import InputError
from jiomosa.manager import SessionManager
from jiomosa.sessions import AnySession, SessionError
from jiomosa.settings import Settings
from jiomosa.streaming import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY, Frame, Subscriber
from jiomosa.urlpolicy import UrlRejected

log = logging.getLogger(__name__)

PATH = "/api/session/{session_id}/stream"

# Binary frame message, all fields big-endian:
#   0  3  magic "JMF"
#   3  1  version (1)
#   4  1  header length in bytes (24 in version 1; the JPEG starts here)
#   5  1  JPEG quality of this image (10-90)
#   6  2  flags (0; reserved)
#   8  4  seq: frame sequence number of the session (u32, grows by 1 per captured frame)
#  12  2  width of the JPEG in pixels
#  14  2  height of the JPEG in pixels
#  16  8  timestamp: Unix epoch milliseconds at which the frame reached the streamer
#  24  -  the JPEG (starts FF D8)
FRAME_HEADER = struct.Struct(">3sBBBHIHHQ")
FRAME_MAGIC = b"JMF"
FRAME_VERSION = 1
assert FRAME_HEADER.size == 24

HEARTBEAT = 20.0  # seconds between WebSocket pings; no pong within half of it ends the socket
CLOSE_TIMEOUT = 5.0  # seconds to wait for the client's close frame
NOTIFY_TIMEOUT = 2.0  # seconds a session:closed notice may take to a client that reads nothing
NOT_SENT_LOW_WATER = 32 * 1024  # bytes of unsent data the kernel may hold per socket
MAX_ID_CHARS = 64


def frame_header(frame: Frame, quality: int) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, FRAME_HEADER.size, quality, 0,
                             frame.seq & 0xFFFFFFFF, frame.width, frame.height,
                             int(frame.timestamp * 1000))


class WebSocketTransport:
    """Frames as binary WebSocket messages.

    ``send_frame`` only starts the write, so that the subscriber's drain wait (with its stall
    detection) covers the whole of it; ``drained`` returns once the frame has left this
    process: the write finished and the socket's user-space buffer is empty. The kernel keeps
    at most ``NOT_SENT_LOW_WATER`` unsent bytes (TCP_NOTSENT_LOWAT), so a slow link shows up
    here as drain time instead of hiding in a deep kernel buffer.
    """

    name = "websocket"

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None) -> None:
        self._ws = ws
        self._transport = transport
        self._sending: asyncio.Task[None] | None = None

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber) -> None:
        if self._sending is not None and not self._sending.done():
            # Never more than one frame in flight, even after a drain wait gave up.
            await asyncio.shield(self._sending)
        if self._ws.closed:
            raise ConnectionResetError("websocket closed")
        message = frame_header(frame, min(sub.quality, frame.quality)) + image
        task = asyncio.create_task(self._ws.send_bytes(message))
        task.add_done_callback(_ignore_result)
        self._sending = task

    async def drained(self) -> None:
        sending = self._sending
        if sending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(sending)
        transport, delay = self._transport, 0.002
        while (transport is not None and not transport.is_closing()
               and transport.get_write_buffer_size() > 0):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.025)

    def cancel(self) -> None:
        if self._sending is not None:
            self._sending.cancel()


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


EventHandler = Callable[["PlainClient", Any], Awaitable[None]]


class PlainClient:
    """One plain-WebSocket connection, bound to one session."""

    def __init__(self, server: PlainStreams, ws: web.WebSocketResponse, session: AnySession,
                 transport: asyncio.Transport | None) -> None:
        self.id = "ws-" + secrets.token_hex(8)
        self.server = server
        self.ws = ws
        self.session = session
        self.transport = WebSocketTransport(ws, transport)
        self.sub: Subscriber | None = None
        self._reply_id: Any = None

    # --------------------------------------------------------------- sending
    async def send(self, event: str, data: Any, reply: bool = True) -> None:
        envelope: dict[str, Any] = {"event": event, "data": data}
        if reply and self._reply_id is not None:
            envelope["id"] = self._reply_id
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(envelope, separators=(",", ":")))

    async def error(self, message: str, event: str | None) -> None:
        data: dict[str, Any] = {"message": message}
        if event is not None:
            data["event"] = event
        await self.send("error", data)

    # --------------------------------------------------------------- receiving
    async def on_text(self, text: str) -> None:
        self._reply_id = None
        try:
            message = json.loads(text)
        except ValueError:
            await self.error("message is not valid JSON", None)
            return
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            await self.error('a message is a JSON object {"event": NAME, "data": {...}}', None)
            return
        reply_id = message.get("id")
        if reply_id is not None and (isinstance(reply_id, bool) or not isinstance(
                reply_id, int | str) or len(str(reply_id)) > MAX_ID_CHARS):
            await self.error(f"id must be a number or a string of at most {MAX_ID_CHARS} "
                             "characters", message["event"])
            return
        self._reply_id = reply_id
        event = message["event"]
        handler = EVENTS.get(event)
        if handler is None:
            await self.error(f"unknown event {event[:64]!r}; known: {', '.join(EVENTS)}", event)
            return
        try:
            await handler(self, message.get("data"))
        except (v.BadRequest, InputError, UrlRejected, SessionError) as exc:
            await self.error(str(exc), event)
        except CDPError:
            await self.error("the browser did not answer", event)
        except Exception:
            log.exception("plain websocket event %s failed", event)
            await self.error("internal error", event)

    # --------------------------------------------------------------- subscription
    def subscription(self) -> Subscriber:
        if self.sub is None:
            raise SessionError("not subscribed (send subscribe first)")
        return self.sub

    async def subscribe(self, options: control.StreamOptions) -> None:
        session = self.session
        await self.drop()
        sub = await control.start_subscriber(self.id, session, self.transport, options,
                                             self.server.settings, self._quality_changed)
        await self.send("subscribe:response", {
            **control.subscribe_response(session, sub),
            "frame_header": {"magic": FRAME_MAGIC.decode(), "version": FRAME_VERSION,
                             "size": FRAME_HEADER.size},
        })
        await self.send("subscribed", control.subscribed(session))
        self.sub = sub
        session.hub.add(sub)  # the current picture goes out at once

    async def drop(self) -> Subscriber | None:
        sub, self.sub = self.sub, None
        if sub is not None:
            await self.session.hub.remove(sub.id)
            await sub.stop()  # a session's close may have taken it off the hub already
            self.session.touch()  # idle time counts from the last subscriber leaving
        return sub

    async def _quality_changed(self, sub: Subscriber, reason: str) -> None:
        if sub is self.sub:
            await self.send("quality:updated", control.adaptive_change(sub, reason), reply=False)


# ------------------------------------------------------------------- events
async def _subscribe(client: PlainClient, data: Any) -> None:
    payload = v.as_object(data)
    wanted = v.string(payload, "session_id", 128, required=False)
    if wanted is not None and wanted != client.session.id:
        raise v.BadRequest("this connection streams the session in its path; open "
                           f"{PATH.replace('{session_id}', '<id>')} for another one")
    if payload.get("encoding", "binary") != "binary":
        raise v.BadRequest("the plain WebSocket sends binary JPEG frames only")
    await client.subscribe(control.stream_options(payload, client.server.settings))


async def _unsubscribe(client: PlainClient, _data: Any) -> None:
    sub = await client.drop()
    await client.send("unsubscribed", {"message": "Unsubscribed" if sub else "Not subscribed"})


def _input(kind: str) -> EventHandler:
    async def handle(client: PlainClient, data: Any) -> None:
        # The connection is bound to its session: input works with or without frames.
        ack = await client.session.input(kind, data)
        await client.send("input:acknowledged", ack)
    return handle


async def _quality_set(client: PlainClient, data: Any) -> None:
    answer = await control.set_quality(client.subscription(), client.session, data,
                                       client.server.settings)
    await client.send("quality:updated", answer)


async def _fps_set(client: PlainClient, data: Any) -> None:
    await client.send("fps:updated", control.set_fps(client.subscription(), data))


async def _adaptive_toggle(client: PlainClient, data: Any) -> None:
    await client.send("adaptive:updated", control.toggle_adaptive(client.subscription(), data))


async def _ping(client: PlainClient, data: Any) -> None:
    await client.send("pong", {
        "echo": data,
        "server_time": time.time(),
        "stats": client.sub.stats() if client.sub is not None else None,
    })


EVENTS: dict[str, EventHandler] = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "input:click": _input("click"),
    "input:scroll": _input("scroll"),
    "input:key": _input("key"),
    "input:text": _input("text"),
    "quality:set": _quality_set,
    "fps:set": _fps_set,
    "adaptive:toggle": _adaptive_toggle,
    "ping": _ping,
}


# ------------------------------------------------------------------- the server side
class PlainStreams:
    """The plain-WebSocket clients of this streamer."""

    def __init__(self, settings: Settings, manager: SessionManager) -> None:
        self.settings = settings
        self.manager = manager
        self.clients: dict[str, PlainClient] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        manager.on_closed(self._session_closed)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Everything that can be refused is refused before the upgrade, as a JSON HTTP error.
        session = await self.manager.lookup(request.match_info["session_id"])
        session.ensure_ready()
        options = control.StreamOptions(
            _query_int(request, "fps", MIN_FPS, MAX_FPS) or self.settings.default_fps,
            _query_int(request, "quality", MIN_QUALITY, MAX_QUALITY))
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_body_bytes,
                                   heartbeat=HEARTBEAT, compress=False, timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return http_error(426, "this path is a WebSocket: send an Upgrade request",
                              session_id=session.id)
        await ws.prepare(request)
        _limit_unsent(request.transport)
        client = PlainClient(self, ws, session, request.transport)
        self.clients[client.id] = client
        try:
            await client.send("status", {"message": "Connected to Jiomosa",
                                         "type": "connection", "sid": client.id})
            await client.subscribe(options)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await client.on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    client._reply_id = None
                    await client.error("binary messages are not accepted; send JSON text", None)
                else:  # ERROR: too large, broken framing; aiohttp closes the socket
                    break
        except (SessionError, v.BadRequest) as exc:
            await client.error(str(exc), "subscribe")
            await ws.close(code=1008, message=str(exc)[:100].encode())
        except ConnectionError:
            pass
        except Exception:
            log.exception("plain websocket client %s failed", client.id)
        finally:
            self.clients.pop(client.id, None)
            await client.drop()
            client.transport.cancel()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _session_closed(self, session: AnySession, reason: str) -> None:
        clients = [c for c in self.clients.values() if c.session.id == session.id]
        for client in clients:
            sub, client.sub = client.sub, None
            if sub is not None:
                await sub.stop()
        await asyncio.gather(*(self._notify_closed(c, session, reason) for c in clients))

    async def _notify_closed(self, client: PlainClient, session: AnySession, reason: str) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.send("session:closed", {
                "session_id": session.id, "reason": reason}, reply=False), NOTIFY_TIMEOUT)
        # The close handshake waits for the client's answer: not on the session's close path.
        code = 1001 if "shutdown" in reason else 1000
        task = asyncio.create_task(client.ws.close(code=code, message=b"session closed"))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def shutdown(self) -> None:
        clients = list(self.clients.values())
        for client in clients:
            await client.drop()
        await asyncio.gather(
            *(c.ws.close(code=1001, message=b"server shutdown") for c in clients),
            *list(self._closing), return_exceptions=True)


def _query_int(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise v.BadRequest(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise v.BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _limit_unsent(transport: asyncio.BaseTransport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, NOT_SENT_LOW_WATER)


PLAIN_STREAMS = web.AppKey("plain_streams", PlainStreams)


def setup(app: web.Application) -> None:
    """Register the plain-WebSocket path (app.py calls this once)."""
    server = PlainStreams(app[SETTINGS], app[MANAGER])
    app[PLAIN_STREAMS] = server
    app.router.add_get(PATH, server.handle)

    async def on_shutdown(_app: web.Application) -> None:
        await server.shutdown()

    app.on_shutdown.append(on_shutdown)
