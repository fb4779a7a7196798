"""Streamer-to-streamer messages over Redis pub/sub (``JIOMOSA_STORE=redis`` only).

- ``jiomosa:frames:{session}``: the owner publishes the session's frames here only while some
  replica listens (it checks ``PUBSUB NUMSUB`` once a second), so the preferred path — every
  client on the owner — costs Redis nothing per frame. Also carries "closed".
- ``jiomosa:rpc:{streamer}``: requests to a streamer (input, load, close, snapshot, quality)
  and the answers to its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from jiomosa.core.errors import ClientError, status_of
from jiomosa.core.tasks import TaskSet
from jiomosa.frames.hub import Frame

log = logging.getLogger(__name__)

FRAME = b"F"
CLOSED = b"C"
_HEADER = struct.Struct(">QHHBd")  # seq, width, height, quality, timestamp


class RelayError(ClientError):
    """An RPC failed; ``status`` is the HTTP status to answer with."""

    status = 502


def frames_channel(session_id: str) -> str:
    return f"jiomosa:frames:{session_id}"


def rpc_channel(streamer_id: str) -> str:
    return f"jiomosa:rpc:{streamer_id}"


def encode_frame(frame: Frame) -> bytes:
    return FRAME + _HEADER.pack(frame.seq, frame.width, frame.height, frame.quality,
                                frame.timestamp) + frame.jpeg


def decode_frame(data: bytes) -> tuple[int, int, int, int, float, bytes]:
    seq, width, height, quality, timestamp = _HEADER.unpack_from(data, 1)
    return seq, width, height, quality, timestamp, data[1 + _HEADER.size:]


RequestHandler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Serves ``(op, session_id, args)`` sent to this streamer; a ``ClientError`` travels back."""
MessageListener = Callable[[bytes], None]


class Bus(Protocol):
    """How streamers talk: frame channels per session and requests per streamer."""

    async def start(self, on_request: RequestHandler) -> None: ...

    async def stop(self) -> None: ...

    async def watch(self, session_id: str, listener: MessageListener) -> None: ...

    async def unwatch(self, session_id: str) -> None: ...

    async def publish(self, session_id: str, payload: bytes) -> None: ...

    async def listeners(self, session_ids: list[str]) -> dict[str, int]:
        """How many streamers listen to each session's frames."""
        ...

    async def call(self, streamer_id: str, op: str, session_id: str,
                   args: dict[str, Any] | None = None, timeout: float = 10.0
                   ) -> dict[str, Any]: ...


async def _no_requests(op: str, session_id: str, args: dict[str, Any]) -> dict[str, Any]:
    raise RelayError("this streamer serves no requests yet", 503)


class RelayBus:
    """``Bus`` over Redis pub/sub: one connection per streamer, re-established whenever Redis
    comes back."""

    def __init__(self, url: str, streamer_id: str) -> None:
        self.streamer_id = streamer_id
        self._redis: aioredis.Redis = aioredis.from_url(
            url, socket_connect_timeout=3.0, socket_timeout=5.0)
        self._on_request: RequestHandler = _no_requests
        self._listeners: dict[str, MessageListener] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._tasks = TaskSet("relay")
        self.connected = asyncio.Event()

    async def start(self, on_request: RequestHandler) -> None:
        self._on_request = on_request
        self._task = asyncio.create_task(self._listen_loop(), name="relay-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._tasks.close()
        await self._redis.aclose()

    # ----------------------------------------------------------------- frames
    async def watch(self, session_id: str, listener: MessageListener) -> None:
        self._listeners[session_id] = listener
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(frames_channel(session_id))

    async def unwatch(self, session_id: str) -> None:
        if self._listeners.pop(session_id, None) is not None and self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(frames_channel(session_id))

    async def publish(self, session_id: str, payload: bytes) -> None:
        await self._redis.publish(frames_channel(session_id), payload)

    async def listeners(self, session_ids: list[str]) -> dict[str, int]:
        """How many replicas listen to each session's frames."""
        if not session_ids:
            return {}
        counts = await self._redis.pubsub_numsub(*[frames_channel(i) for i in session_ids])
        return {(name.decode() if isinstance(name, bytes) else str(name)).rsplit(":", 1)[1]: int(n)
                for name, n in counts}

    # ----------------------------------------------------------------- rpc
    async def call(self, streamer_id: str, op: str, session_id: str,
                   args: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = {"t": "req", "id": request_id, "from": self.streamer_id, "op": op,
                   "sid": session_id, "args": args or {}}
        try:
            receivers = await self._redis.publish(rpc_channel(streamer_id), json.dumps(message))
            if not receivers:
                raise RelayError("the streamer that owns this session is not reachable", 503)
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RelayError("the streamer that owns this session did not answer", 504) from None
        except (RedisError, OSError):
            raise RelayError("the session registry is not reachable", 503) from None
        finally:
            self._pending.pop(request_id, None)
        if not answer.get("ok"):
            raise RelayError(str(answer.get("error", "failed")), int(answer.get("status", 502)))
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def _answer(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"t": "res", "id": message.get("id")}
        try:
            reply["result"] = await self._on_request(
                str(message.get("op")), str(message.get("sid")), dict(message.get("args") or {}))
            reply["ok"] = True
        except Exception as exc:
            status, error, _ = status_of(exc)
            if status == 500:
                log.exception("relayed request %s failed", message.get("op"))
            reply.update(ok=False, error=error, status=status)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.publish(rpc_channel(str(message.get("from"))), json.dumps(reply))

    # ----------------------------------------------------------------- the listener
    async def _listen_loop(self) -> None:
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(rpc_channel(self.streamer_id),
                                       *[frames_channel(i) for i in self._listeners])
                self._pubsub = pubsub
                self.connected.set()
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("relay lost Redis (%s); reconnecting", exc)
                self.connected.clear()
                self._pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        data: bytes = message["data"]
        if channel.startswith("jiomosa:frames:"):
            listener = self._listeners.get(channel[len("jiomosa:frames:"):])
            if listener is not None:
                listener(data)
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if payload.get("t") == "res":
            future = self._pending.get(str(payload.get("id")))
            if future is not None and not future.done():
                future.set_result(payload)
        elif payload.get("t") == "req":
            self._tasks.spawn(self._answer(payload), "relay-rpc")
