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
from typing import Any

from aiohttp import WSMsgType, web

from jiomosa.core import validation as v
from jiomosa.core.errors import ClientError, status_of
from jiomosa.core.guard import Guard
from jiomosa.core.settings import Settings
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY
from jiomosa.frames.delta import DeltaUpdate
from jiomosa.frames.deltasub import delta_query
from jiomosa.frames.hub import Frame
from jiomosa.frames.pacer import Subscriber
from jiomosa.sessions.manager import SessionManager
from jiomosa.sessions.session import Session, Share
from jiomosa.transports import events

log = logging.getLogger(__name__)

PATH = "/api/session/{session_id}/stream"
SHARED_PATH = "/api/share/stream"
"""A share link's stream: ``?share=TOKEN`` (docs/protocol.md, *Sharing*)."""

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
# Seconds a message may wait to be handed to a client's socket. Each message is handled in
# turn and its answer waits for the socket to drain, so a client that does not read is not
# read either (the streamer holds at most aiohttp's write buffer for it); past this wait it
# is cut off, since neither a close handshake nor the heartbeat can reach it.
SEND_STALL = 30.0
NOT_SENT_LOW_WATER = 32 * 1024  # bytes of unsent data the kernel may hold per socket
MAX_ID_CHARS = 64


FLAG_KEY = 0x0001
"""Header flag: a delta client's key frame (docs/protocol.md, *Delta frames*)."""


def frame_header(frame: Frame, quality: int, flags: int = 0) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, FRAME_HEADER.size, quality, flags,
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

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber,
                         key: bool = False) -> None:
        flags = FLAG_KEY if key else 0
        await self._send(frame_header(frame, min(sub.quality, frame.quality), flags) + image)

    async def send_delta(self, update: DeltaUpdate, sub: Subscriber) -> None:
        await self._send(update.binary())

    def link_socket(self) -> Any:
        return self._transport.get_extra_info("socket") if self._transport else None

    def queued_bytes(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def _send(self, message: bytes) -> None:
        if self._sending is not None and not self._sending.done():
            # Never more than one frame in flight, even after a drain wait gave up.
            await asyncio.shield(self._sending)
        if self._ws.closed:
            raise ConnectionResetError("websocket closed")
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

    def abort(self, unsent_only: bool = False) -> None:
        """Drop the connection at once, with whatever it has not sent (``unsent_only``: only
        if something is left: a closed socket whose client never read it)."""
        transport = self._transport
        if transport is not None and not (unsent_only
                                          and transport.get_write_buffer_size() == 0):
            transport.abort()


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class PlainClient:
    """One plain-WebSocket connection (``events.ClientChannel``), bound to one session."""

    def __init__(self, server: PlainStreams, ws: web.WebSocketResponse, session: Session,
                 transport: asyncio.Transport | None, grant: Share | None = None) -> None:
        self.id = "ws-" + secrets.token_hex(8)
        self.settings = server.settings
        self.ws = ws
        self.session = session
        self._transport = WebSocketTransport(ws, transport)
        self.default_encoding = "binary"
        self.subscribe_extra: dict[str, Any] = {"frame_header": {
            "magic": FRAME_MAGIC.decode(), "version": FRAME_VERSION, "size": FRAME_HEADER.size}}
        self.sub: Subscriber | None = None
        self.subscribed_to: Session | None = None
        self.grant = grant
        self._reply_id: Any = None
        self.guard = server.guard
        self.messages = server.guard.message_limit()
        """Its message rate (``JIOMOSA_MESSAGES_PER_SECOND``)."""

    @property
    def transport(self) -> WebSocketTransport:
        return self._transport

    async def send(self, event: str, data: Any, reply: bool = True) -> None:
        envelope: dict[str, Any] = {"event": event, "data": data}
        if reply and self._reply_id is not None:
            envelope["id"] = self._reply_id
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            try:
                await asyncio.wait_for(
                    self.ws.send_str(json.dumps(envelope, separators=(",", ":"))), SEND_STALL)
            except TimeoutError:
                log.info("plain websocket client %s took nothing for %.0fs; cut off",
                         self.id, SEND_STALL)
                self._transport.abort()

    async def target(self, payload: dict[str, Any]) -> tuple[Session, Share | None]:
        # A share link's connection keeps its share: the id it is shown is the share's.
        wanted = v.string(payload, "session_id", 128, required=False)
        share = v.string(payload, "share", 128, required=False)
        if (wanted is not None and wanted != events.shown_id(self, self.session.id)) or (
                share is not None and (self.grant is None or share != self.grant.token)):
            raise v.BadRequest("this connection streams the session it was opened for; open "
                               "another stream for another one")
        if payload.get("encoding", "binary") != "binary":
            raise v.BadRequest("the plain WebSocket sends binary JPEG frames only")
        return self.session, self.grant

    async def input_session(self) -> Session:
        # The connection is bound to its session: input works with or without frames.
        return self.session

    def count_message(self) -> float:
        """Count one incoming message against the connection's rate: 0.0 to handle it, else
        seconds until one is. Raises ``events.Flooding`` once it has used up its strikes."""
        wait, flooding = self.guard.check_message(self.messages)
        if flooding:
            raise events.Flooding(f"more than {self.settings.flood_strikes} messages past "
                                  "its rate")
        return wait

    async def refuse(self, wait: float, message: str, event: str | None = None) -> None:
        """Answer a message that is not handled: ``message``, or the rate's refusal when
        ``wait`` (the message came too fast: whatever it says is not looked at further)."""
        answer: dict[str, Any] = self.guard.message_refused(wait) if wait else {
            "message": message}
        if event is not None:
            answer["event"] = event[:64]
        await self.send("error", answer)

    async def on_text(self, text: str) -> None:
        self._reply_id = None
        wait = self.count_message()
        try:
            message = json.loads(text)
        except ValueError:
            await self.refuse(wait, "message is not valid JSON")
            return
        except RecursionError:  # json's C parser recurses once per nesting level
            await self.refuse(wait, "message is nested too deeply")
            return
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            await self.refuse(wait, 'a message is a JSON object {"event": NAME, "data": {...}}')
            return
        event = message["event"]
        reply_id = message.get("id")
        if reply_id is not None and (isinstance(reply_id, bool) or not isinstance(
                reply_id, int | str) or len(str(reply_id)) > MAX_ID_CHARS):
            await self.refuse(wait, f"id must be a number or a string of at most "
                                    f"{MAX_ID_CHARS} characters", event)
            return
        self._reply_id = reply_id
        try:
            if wait:
                await self.refuse(wait, "", event)
            else:
                await events.dispatch(self, event, message.get("data"))
        finally:
            self._reply_id = None


# ------------------------------------------------------------------- the server side
class PlainStreams:
    """The plain-WebSocket clients of this streamer."""

    def __init__(self, settings: Settings, manager: SessionManager,
                 guard: Guard | None = None) -> None:
        self.settings = settings
        self.manager = manager
        self.guard = guard or Guard(settings)
        self.clients: dict[str, PlainClient] = {}
        self._closing = TaskSet("plain-websocket")
        manager.on_closed(self._session_closed)
        manager.on_unshared(self._unshared)
        manager.on_state(self._session_state)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = await self.manager.lookup(request.match_info["session_id"])
        return await self._serve(request, session, None)

    async def handle_shared(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/share/stream?share=TOKEN``: a share link's viewer (read-only unless the
        share grants input)."""
        session, grant = await self.manager.lookup_share(request.query.get("share"))
        return await self._serve(request, session, grant)

    async def _serve(self, request: web.Request, session: Session, grant: Share | None
                     ) -> web.StreamResponse:
        # Everything that can be refused is refused before the upgrade, as a JSON HTTP error.
        session.ensure_ready()
        options = events.StreamOptions(
            _query_int(request, "fps", MIN_FPS, MAX_FPS) or self.settings.default_fps,
            _query_int(request, "quality", MIN_QUALITY, MAX_QUALITY),
            delta=delta_query(request.query))
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_body_bytes,
                                   heartbeat=HEARTBEAT, compress=False, timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            raise ClientError("this path is a WebSocket: send an Upgrade request", 426,
                              session_id=grant.id if grant else session.id)
        client = PlainClient(self, ws, session, request.transport, grant)
        # Connections per client address: refused (429) before the upgrade, counted from here
        # (the upgrade yields: counting after it would let parallel handshakes all pass).
        address = self.guard.address(request.remote, request.headers.getall("X-Forwarded-For", []))
        self.guard.check_connection(address)
        self.guard.connection_opened(address, client.id)
        try:
            await ws.prepare(request)
        except BaseException:
            self.guard.connection_closed(client.id)
            raise
        _limit_unsent(request.transport)
        self.clients[client.id] = client
        try:
            await client.send("status", {"message": "Connected to Jiomosa",
                                         "type": "connection", "sid": client.id})
            await events.subscribe(client, session, options, grant)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await client.on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    await client.refuse(client.count_message(),
                                        "binary messages are not accepted; send JSON text")
                else:  # ERROR: too large, broken framing; aiohttp closes the socket
                    break
        except ClientError as exc:
            _, reason, _ = status_of(exc)
            await client.send("error", {"message": reason, "event": "subscribe"})
            await ws.close(code=1008, message=reason[:100].encode())
        except events.Flooding as exc:
            log.info("plain websocket client %s closed: %s", client.id, exc)
            await ws.close(code=1008, message=b"too many messages")
        except ConnectionError:
            pass
        except Exception:
            log.exception("plain websocket client %s failed", client.id)
        finally:
            self.guard.connection_closed(client.id)
            self.clients.pop(client.id, None)
            await events.unsubscribe(client)
            client.transport.cancel()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            client.transport.abort(unsent_only=True)
        return ws

    async def _session_closed(self, session: Session, reason: str) -> None:
        clients = [c for c in self.clients.values() if c.session.id == session.id]
        await asyncio.gather(*(self._notify_closed(c, session, reason) for c in clients))

    async def _unshared(self, session: Session, reason: str) -> None:
        clients = [c for c in self.clients.values() if events.revoked(c, session)]
        await asyncio.gather(*(self._notify_closed(c, session, reason) for c in clients))

    async def _session_state(self, session: Session, state: str) -> None:
        # Every connection of the session, subscribed or not: input goes through it either way.
        async def tell(client: PlainClient) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.send("session:state", {
                    "session_id": events.shown_id(client, session.id), "state": state},
                    reply=False), NOTIFY_TIMEOUT)
        await asyncio.gather(*(tell(c) for c in list(self.clients.values())
                               if c.session.id == session.id))

    async def _notify_closed(self, client: PlainClient, session: Session, reason: str) -> None:
        sub, client.sub = client.sub, None
        if sub is not None:
            await sub.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.send("session:closed", {
                "session_id": events.shown_id(client, session.id), "reason": reason},
                reply=False), NOTIFY_TIMEOUT)
        # The close handshake waits for the client's answer: not on the session's close path.
        code = 1001 if "shutdown" in reason else 1000
        self._closing.spawn(client.ws.close(code=code, message=b"session closed"),
                            f"ws-close-{client.id}")

    async def shutdown(self) -> None:
        clients = list(self.clients.values())
        for client in clients:
            await events.unsubscribe(client)
        await asyncio.gather(
            *(c.ws.close(code=1001, message=b"server shutdown") for c in clients),
            self._closing.wait(), return_exceptions=True)


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
