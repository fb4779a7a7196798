"""Frames between streamers: relaying a driven session's frames, mirroring a remote one's.

The owner of a session publishes its frames on the session's relay channel only while some
other streamer listens (``relay``/``stop_relay``, decided once a second from the channel's
listener count, or at once when a new listener asks for a snapshot). Publishing is
latest-frame-wins: a slow Redis skips frames instead of queueing them. A streamer whose clients
watch a remote session feeds a local mirror hub from that channel; mirrors keep the owner's
frame numbers, so a client sees one sequence wherever it is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from jiomosa.core.tasks import TaskSet
from jiomosa.fleet.relay import CLOSED, FRAME, Bus, RelayError, decode_frame, encode_frame
from jiomosa.fleet.store import Store
from jiomosa.frames.hub import Frame, FrameHub
from jiomosa.sessions.session import LocalSession

MIRROR_LINGER = 5.0  # seconds a mirror without subscribers stays for HTTP pollers
ERRORS = (RedisError, OSError)

MirrorClosed = Callable[[str, str], Awaitable[None]]
"""Told ``(session_id, reason)`` when a mirrored session's owner closed it."""


class Mirrors:
    def __init__(self, bus: Bus, store: Store, default_quality: int,
                 on_closed: MirrorClosed) -> None:
        self._bus = bus
        self._store = store
        self._default_quality = default_quality
        self._on_closed = on_closed
        self._hubs: dict[str, FrameHub] = {}
        self._relayed: dict[str, Callable[[], None]] = {}
        self._pending: dict[str, Frame] = {}
        self._publishing: dict[str, asyncio.Task[None]] = {}
        self._tasks = TaskSet("mirrors")

    async def stop(self) -> None:
        for stop in self._relayed.values():
            stop()
        self._relayed.clear()
        for hub in self._hubs.values():
            await hub.close()
        self._hubs.clear()
        for task in self._publishing.values():
            task.cancel()
        await self._tasks.close()

    # ================================================================ relaying (owner side)
    def relay(self, session: LocalSession, snapshot: bool = True) -> None:
        """Publish the session's frames for other streamers; ``snapshot``: its current
        picture at once too (a new listener gets it without waiting for a change)."""
        if session.id not in self._relayed:
            self._relayed[session.id] = session.hub.listen(
                lambda frame: self._publish(session.id, frame))
        if snapshot and session.hub.latest is not None:
            self._publish(session.id, session.hub.latest)

    def stop_relay(self, session_id: str) -> None:
        stop = self._relayed.pop(session_id, None)
        if stop is not None:
            stop()

    def _publish(self, session_id: str, frame: Frame) -> None:
        self._pending[session_id] = frame
        if session_id not in self._publishing:
            self._publishing[session_id] = self._tasks.spawn(
                self._publish_loop(session_id), f"relay-{session_id}")

    async def _publish_loop(self, session_id: str) -> None:
        try:
            while (frame := self._pending.pop(session_id, None)) is not None:
                with contextlib.suppress(*ERRORS):
                    await self._bus.publish(session_id, encode_frame(frame))
        finally:
            self._publishing.pop(session_id, None)

    # ================================================================ mirroring (client side)
    def hubs(self) -> list[FrameHub]:
        return list(self._hubs.values())

    def existing(self, session_id: str) -> FrameHub | None:
        return self._hubs.get(session_id)

    def hub(self, session_id: str) -> FrameHub:
        """The local hub of a remote session, fed from its relay channel."""
        hub = self._hubs.get(session_id)
        if hub is None:
            hub = FrameHub(session_id, self._default_quality)
            self._hubs[session_id] = hub
            self._tasks.spawn(self._watch(session_id, hub), f"watch-{session_id}")
        return hub

    def watched(self) -> list[str]:
        """Ids of the mirrors that local clients stream from."""
        return [i for i, hub in self._hubs.items() if hub.subscribers]

    @staticmethod
    def in_use(hub: FrameHub) -> bool:
        """Clients stream from the hub or polled it a moment ago."""
        return bool(hub.subscribers) or time.monotonic() - hub.last_used < MIRROR_LINGER

    async def sweep(self) -> list[str]:
        """Drop the mirrors nobody uses; return the ids of those still in use."""
        kept = []
        for session_id, hub in list(self._hubs.items()):
            if self.in_use(hub):
                kept.append(session_id)
            elif not hub.closed:
                await self._drop(session_id)
        return kept

    async def promote(self, session_id: str) -> None:
        """This streamer now drives the session: its mirror became the real hub."""
        if self._hubs.pop(session_id, None) is not None:
            await self._bus.unwatch(session_id)

    async def _watch(self, session_id: str, hub: FrameHub) -> None:
        def on_message(data: bytes) -> None:
            if data[:1] == FRAME:
                seq, width, height, quality, timestamp, jpeg = decode_frame(data)
                hub.publish_frame(Frame(seq, jpeg, width, height, quality, timestamp))
            elif data[:1] == CLOSED:
                self._tasks.spawn(self._closed(session_id, data[1:].decode(errors="replace")),
                                  f"mirror-closed-{session_id}")

        await self._bus.watch(session_id, on_message)
        await self._ask_snapshot(session_id)

    async def _ask_snapshot(self, session_id: str) -> None:
        """Ask the owner to publish its current picture (a new subscriber gets it at once)."""
        with contextlib.suppress(*ERRORS, RelayError):
            record = await self._store.get(session_id)
            if record is not None:
                await self._bus.call(record.owner, "snapshot", session_id, timeout=3.0)

    async def _closed(self, session_id: str, reason: str) -> None:
        if session_id in self._hubs:
            await self._on_closed(session_id, reason)
            await self._drop(session_id)

    async def _drop(self, session_id: str) -> None:
        hub = self._hubs.pop(session_id, None)
        if hub is not None:
            await hub.close()
        await self._bus.unwatch(session_id)
