"""A Socket.IO server whose clients cannot make it hold their data without bound.

python-engineio keeps one ``asyncio.Queue`` of packets per client (``socket.queue``) and a
websocket writer that takes packets off it only as fast as the client reads. Nothing bounds
that queue: a client that sends and never reads (each ``ping`` with an ack id, each input
answered with an ``error``) grows the server's memory for as long as it keeps sending, and a
writer blocked on the client's full TCP window never frees it. Here:

- every client's queue counts the bytes it holds (``CountingQueue``), frames included; the
  latest frame is allowed on top of the limit, since the subscriber's pacer sends a frame
  only once the previous one left the queue (``SocketIOTransport.drained``) — frames pile up
  only for a client that took nothing for the pacer's whole give-up time;
- a packet that would take a client past ``max_queued_bytes`` (plus that frame) drops the
  client: its queue is emptied and its connection aborted at once (the writer is blocked on a
  socket the client does not read, so a polite close would wait forever);
- a packet that cannot be decoded (bad Engine.IO or Socket.IO framing, a payload of the wrong
  shape, JSON nested deeper than the parser goes: ``BoundedJson``) drops the client too, as
  the reference Socket.IO server does, instead of escaping engineio's reader as a stack trace
  or failing later inside python-socketio;
- binary attachments a client announces may not add up to more than ``max_http_buffer_size``
  (python-socketio collects any number of them otherwise).

These are subclasses of python-socketio's and python-engineio's own classes, hooked where
those libraries build their parts (``_engineio_server_class``, ``create_queue``, the
``_async['websocket']`` driver class, ``send_packet``): the protocol code stays theirs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import engineio
import socketio
from engineio import json as eio_json
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from socketio import packet as sio_packet

from jiomosa.core.tasks import TaskSet

log = logging.getLogger(__name__)

PACKET_OVERHEAD = 256
"""Bytes a queued packet costs besides its data (the Packet object, its dict, the str
header): what keeps a flood of tiny answers from hiding under a byte limit."""

MIN_QUEUED_BYTES = 16 * 1024
"""The smallest usable ``max_queued_bytes``: a few of the largest answers must fit."""


def packet_cost(item: Any) -> int:
    """What one queue item counts against the client's limit."""
    if item is None:
        return 0
    data = getattr(item, "data", None)
    size = len(data) if isinstance(data, str | bytes | bytearray) else 0
    return size + PACKET_OVERHEAD


class CountingQueue(asyncio.Queue[Any]):
    """Engine.IO's send queue of one client, counting the bytes its packets hold.

    ``_put``/``_get`` are the hooks ``asyncio.Queue`` subclasses override (``PriorityQueue``
    does); every way in and out of the queue goes through them."""

    def __init__(self) -> None:
        super().__init__()
        self.queued_bytes = 0
        self.frame_allowance = 0
        """What the client's latest frame counts: allowed on top of the limit."""

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.queued_bytes += packet_cost(item)

    def _get(self) -> Any:
        item = super()._get()
        self.queued_bytes -= packet_cost(item)
        return item

    def drop_all(self) -> int:
        """Empty the queue (waking whoever waits on ``join``); return how many were dropped."""
        dropped = 0
        while True:
            try:
                self.get_nowait()
            except asyncio.QueueEmpty:
                return dropped
            self.task_done()
            dropped += 1


class BoundedJson:
    """The json module as python-engineio and python-socketio use it (``loads``, ``dumps``;
    given to both as their ``json``), with nesting deeper than the parser can go reported as
    ``ValueError``, which both take for bad input, instead of ``RecursionError``, which
    escaped engineio's reader (the depth at which it happens even varies with the stack)."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(s: str | bytes, **kwargs: Any) -> Any:
        try:
            return eio_json.loads(s, **kwargs)  # engineio's: refuses 100-digit integers
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def malformed(data: Any) -> str | None:
    """Why an incoming Engine.IO message cannot be decoded, or None if it can (engineio
    parses JSON in any message whose payload does not start with a digit)."""
    try:
        decoded = eio_packet.Packet(encoded_packet=data)
    except Exception as exc:  # any decoding failure: the libraries raise several kinds
        return f"malformed packet ({type(exc).__name__})"
    if not 0 <= decoded.packet_type < len(eio_packet.packet_names):
        return "malformed packet (no such type)"  # engineio indexes its names with it
    return None


class _TrackedWebSocket(eio_aiohttp.WebSocket):
    """engineio's aiohttp websocket driver, remembering each client's TCP transport (so that
    a client past its limit can be cut off) and refusing undecodable messages as the end of
    the connection (engineio decodes outside its error handling, so one bad message would
    otherwise end its reader with a stack trace and leave the writer behind)."""

    async def __call__(self, environ: dict[str, Any]) -> Any:
        server: BoundedEngineServer = self.server
        eio_socket = getattr(self.handler, "__self__", None)  # the handler is a bound method
        sid = getattr(eio_socket, "sid", None)
        transport = environ["aiohttp.request"].transport
        if sid is not None and transport is not None:
            server.connections[sid] = transport
        try:
            return await super().__call__(environ)
        finally:
            if sid is not None and server.connections.get(sid) is transport:
                del server.connections[sid]

    async def wait(self) -> Any:
        data = await super().wait()
        problem = malformed(data)
        if problem is not None:
            eio_socket = getattr(self.handler, "__self__", None)
            log.info("socket.io client %s closed: %s", getattr(eio_socket, "sid", "?"),
                     problem)
            raise OSError(problem)  # engineio's reader ends the connection cleanly on OSError
        return data


class ConnectionGate(Protocol):
    """Who may open an Engine.IO connection (the limits per client address, issue #13)."""

    def admit(self, environ: dict[str, Any]) -> tuple[str, int | None] | None:
        """None: go on; else (why, seconds to wait or None) and the handshake gets a 429."""
        ...

    def opened(self, sid: str, environ: dict[str, Any]) -> None: ...

    def closed(self, sid: str) -> None: ...


def too_many(message: str, retry_after: int | None) -> dict[str, Any]:
    """The handshake's answer when the gate refuses: 429, JSON as the REST errors."""
    headers = [("Content-Type", "application/json")]
    body: dict[str, Any] = {"error": message}
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
        body["retry_after"] = retry_after
    return {"status": "429 TOO MANY REQUESTS", "headers": headers,
            "response": json.dumps(body).encode()}


class BoundedEngineServer(engineio.AsyncServer):
    """python-engineio's server with a byte limit on what waits for each client, and a
    gate on new connections."""

    def __init__(self, *, max_queued_bytes: int, connection_gate: ConnectionGate | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_queued_bytes = max_queued_bytes
        self.connection_gate = connection_gate
        self.connections: dict[str, asyncio.Transport] = {}
        self._dropping: set[str] = set()
        self._closing = TaskSet("engineio-drop")
        # A copy: the driver table is shared module state of engineio.
        self._async: dict[str, Any] = {**self._async, "websocket": _TrackedWebSocket}

    async def _handle_connect(self, environ: dict[str, Any], transport: str,
                              jsonp_index: int | None = None) -> Any:
        # A handshake (no sid yet): refused before a socket, a queue or a task exists for it.
        if self.connection_gate is not None:
            refusal = self.connection_gate.admit(environ)
            if refusal is not None:
                return too_many(*refusal)
        return await super()._handle_connect(environ, transport, jsonp_index)

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        # engineio's sockets call create_queue() without arguments for their send queue.
        return CountingQueue() if not args and not kwargs else super().create_queue(
            *args, **kwargs)

    def dropped(self, sid: str) -> bool:
        return sid in self._dropping

    def queue_of(self, sid: str) -> CountingQueue | None:
        queue = getattr(self.sockets.get(sid), "queue", None)
        return queue if isinstance(queue, CountingQueue) else None

    async def send_packet(self, sid: str, pkt: Any) -> None:
        if sid in self._dropping:
            return
        queue = self.queue_of(sid)
        if queue is not None and (queue.queued_bytes + packet_cost(pkt)
                                  > self.max_queued_bytes + queue.frame_allowance):
            self.drop(sid, f"{queue.queued_bytes} bytes wait for it (limit "
                           f"{self.max_queued_bytes} and a frame): it does not read")
            return
        await super().send_packet(sid, pkt)

    def drop(self, sid: str, why: str) -> None:
        """Close one client now, without waiting for it: what waits for it is dropped, its
        connection aborted; the disconnect reaches the application as usual."""
        eio_socket = self.sockets.get(sid)
        if eio_socket is None or sid in self._dropping:
            return
        self._dropping.add(sid)
        log.warning("socket.io client %s dropped: %s", sid, why)
        if isinstance(eio_socket.queue, CountingQueue):
            eio_socket.queue.drop_all()
        transport = self.connections.pop(sid, None)
        if transport is not None:
            transport.abort()
        self._closing.spawn(self._close(sid, eio_socket), f"engineio-drop-{sid}")

    async def _close(self, sid: str, eio_socket: Any) -> None:
        try:
            await eio_socket.close(wait=False, abort=True,
                                   reason=self.reason.SERVER_DISCONNECT)
            eio_socket.queue.put_nowait(None)  # ends a waiting long-poll or writer
        finally:
            if self.sockets.get(sid) is eio_socket:
                del self.sockets[sid]
            self._dropping.discard(sid)


class MalformedPacket(ValueError):
    """A Socket.IO packet that cannot be decoded or whose payload has the wrong shape."""


class CheckedPacket(sio_packet.Packet):
    """python-socketio's packet, decoding with one failure type and the payload checks of the
    reference parser (socket.io-parser ``isPayloadValid``): an event is a non-empty list
    starting with its name, an ack a list. python-socketio indexes payloads without those
    checks (``42{}`` raised ``KeyError`` in its reader)."""

    def decode(self, encoded_packet: Any) -> Any:
        try:
            attachments = super().decode(encoded_packet)
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise MalformedPacket(f"malformed packet ({str(exc)[:60]})") from None
        kind, data = self.packet_type, self.data
        valid = isinstance(kind, int) and (
            kind in (sio_packet.CONNECT, sio_packet.DISCONNECT)
            or (kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT) and isinstance(data, list)
                and bool(data) and isinstance(data[0], str))
            or (kind in (sio_packet.ACK, sio_packet.BINARY_ACK) and isinstance(data, list)))
        if not valid:
            raise MalformedPacket("malformed packet (payload shape)")
        return attachments


class BoundedServer(socketio.AsyncServer):
    """python-socketio's server on a ``BoundedEngineServer`` (``max_queued_bytes`` is passed
    through to it), allowing each client its latest frame, dropping clients that send what
    cannot be decoded and bounding binary attachments."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(serializer=CheckedPacket, json=BoundedJson, **kwargs)

    def _engineio_server_class(self) -> type[BoundedEngineServer]:
        return BoundedEngineServer

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        gate = self.eio.connection_gate
        if gate is not None:
            gate.opened(eio_sid, environ)
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        gate = self.eio.connection_gate
        if gate is not None:
            gate.closed(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        size = _frame_size(pkt)
        queue = self.eio.queue_of(eio_sid) if size is not None else None
        if queue is not None and size is not None:
            queue.frame_allowance = size
        await super()._send_packet(eio_sid, pkt)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if self.eio.dropped(eio_sid) or eio_sid not in self.environ:
            # Already read before the client was dropped, or after it left: python-socketio
            # would look it up among the connected (a CONNECT raised KeyError).
            return
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            held = sum(len(a) for a in pending.attachments) + len(data)
            if held > self.eio.max_http_buffer_size:
                del self._binary_packet[eio_sid]
                self.eio.drop(eio_sid, f"binary attachments over {held} bytes")
                return
        elif not isinstance(data, str) or not data:
            # Engine.IO hands over JSON it parsed itself ("4null", "4[]"): python-socketio
            # would take such a value for an event without a payload and fail on it.
            self.eio.drop(eio_sid, "malformed packet (not Socket.IO text)")
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:  # MalformedPacket, or python-socketio's "unexpected ..."
            self.eio.drop(eio_sid, str(exc)[:100])


def _frame_size(pkt: Any) -> int | None:
    """What a ``frame`` (or a delta client's ``frame:delta``) event costs in the queue (its
    images and the rest), None for others."""
    if not (pkt.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT)
            and isinstance(pkt.data, list) and pkt.data[:1] in (["frame"], ["frame:delta"])):
        return None
    payload = pkt.data[1] if len(pkt.data) > 1 else None
    if pkt.data[0] == "frame:delta" and isinstance(payload, dict):
        images = payload.get("images")
        return sum(len(i.get("data") or b"") for i in images if isinstance(i, dict)) + (
            FRAME_REST) if isinstance(images, list) else FRAME_REST
    image = payload.get("image") if isinstance(payload, dict) else None
    return (len(image) if isinstance(image, str | bytes) else 0) + FRAME_REST


FRAME_REST = 4096
"""A frame's queue cost besides its image: the JSON header with its stats, two packets."""
