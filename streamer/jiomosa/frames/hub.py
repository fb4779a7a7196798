"""A session's frames: the latest screencast JPEG, its re-encodes, and who wants it.

``FrameHub`` keeps only the latest frame of one session. Clients get it through their own
pacer (``jiomosa.frames.pacer.Subscriber``), which the hub knows only as a ``FrameSink``: the
hub wakes its sinks when a frame arrives and tells them which frame they missed. Frame
listeners (the fleet's relay) are called with every new frame.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from jiomosa import metrics
from jiomosa.core import executors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One JPEG from Chrome's screencast."""

    seq: int
    jpeg: bytes
    width: int
    height: int
    quality: int
    timestamp: float
    """Unix epoch seconds at which the frame reached the streamer."""
    received: float = field(default_factory=time.monotonic)
    meta: Mapping[str, Any] | None = field(default=None, compare=False)
    """Chrome's screencast metadata of the frame (scroll offsets, page scale), when known:
    delta clients (``frames/delta.py``) take scrolls from it."""


def reencode(jpeg: bytes, quality: int) -> bytes:
    """Re-encode a frame at a lower quality (CPU work: run it in a thread)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue()


class FrameSink(Protocol):
    """A client of a hub (a pacer): woken on every new frame, it fetches the latest itself."""

    id: str
    manual_quality: int | None
    """The quality this client set by hand (None: adaptive)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def wake(self) -> None: ...

    def note_replaced(self, frame: Frame) -> None:
        """``frame`` is no longer the latest (the sink counts it if it never sent it)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What session info and metrics show of this client."""
        ...


FrameListener = Callable[[Frame], None]


class FrameHub:
    """The latest frame of one session and the clients that want it."""

    def __init__(self, session_id: str, source_quality: int, first_seq: int = 1) -> None:
        self.session_id = session_id
        self._seq_floor = first_seq
        self.source_quality = source_quality
        self.latest: Frame | None = None
        self.subscribers: dict[str, FrameSink] = {}
        self._listeners: list[FrameListener] = []
        self._variants: dict[tuple[int, str], asyncio.Future[bytes]] = {}
        self._new_frame = asyncio.Event()
        self.closed = False
        self._new_source = False
        self.last_used = time.monotonic()
        """When a client last read from the hub (long-polls and snapshots count)."""

    def publish(self, jpeg: bytes, width: int, height: int,
                meta: Mapping[str, Any] | None = None) -> Frame | None:
        """Make a screencast JPEG (and its metadata) the latest frame. A byte-identical repeat
        of the latest (a repaint that changed nothing, a screencast restart) is dropped: None."""
        if self.latest is not None and self.latest.jpeg == jpeg and not self._new_source:
            return None
        self._new_source = False
        seq = max(self._seq_floor, self.latest.seq + 1 if self.latest else 1)
        frame = Frame(seq, jpeg, width, height, self.source_quality, time.time(), meta=meta)
        metrics.FRAMES_CAPTURED.inc()
        self.publish_frame(frame)
        return frame

    def continue_above(self, seq: int) -> None:
        """Number the next frame ``seq`` or higher (a new owner continues above the old one's
        numbers, so that clients, which skip numbers they have seen, never stall)."""
        self._seq_floor = max(self._seq_floor, seq)

    def new_source(self) -> None:
        """Another browser feeds the hub from now on (a crashed one was replaced): its first
        frame goes out even if it repeats the latest picture, so clients see the session live
        again, numbered above the frames they have."""
        self._new_source = True

    def publish_frame(self, frame: Frame) -> None:
        """Make ``frame`` the latest (also for frames relayed from another streamer)."""
        previous, self.latest = self.latest, frame
        if previous is not None:
            for sub in self.subscribers.values():
                sub.note_replaced(previous)
        self._variants.clear()
        for sub in self.subscribers.values():
            sub.wake()
        # Long-pollers wait on the event; swap it so that each wakes exactly once.
        event, self._new_frame = self._new_frame, asyncio.Event()
        event.set()
        for listener in self._listeners:
            listener(frame)

    def listen(self, listener: FrameListener) -> Callable[[], None]:
        """Call ``listener(frame)`` with every new frame; returns the call that stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
        return stop

    async def wait_newer(self, after_seq: int, timeout: float) -> Frame | None:
        """The latest frame once its seq is above ``after_seq`` (None after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            self.last_used = time.monotonic()
            frame = self.latest
            if frame is not None and frame.seq > after_seq:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return None
            try:
                await asyncio.wait_for(self._new_frame.wait(), remaining)
            except TimeoutError:
                return None

    async def image(self, frame: Frame, quality: int, encoding: str = "binary") -> bytes:
        """The frame's JPEG at ``quality`` (re-encoded once per frame and quality, shared by
        all clients), or its data-URL bytes for ``encoding='base64'``."""
        quality = min(quality, frame.quality)
        if quality >= frame.quality and encoding == "binary":
            return frame.jpeg
        key = (quality, encoding)
        task = self._variants.get(key) if frame is self.latest else None
        if task is None:
            # Its own task: a client that leaves mid-encode cancels its wait, not the others'.
            task = asyncio.ensure_future(_variant(frame, quality, encoding))
            if frame is self.latest:
                self._variants[key] = task
        try:
            return await asyncio.shield(task)
        except Exception:
            if self._variants.get(key) is task:
                del self._variants[key]
            raise

    def encoded_qualities(self, frame: Frame) -> set[int]:
        """The qualities ``frame`` can be served at (binary) without a new encode: Chrome's
        own and the re-encodes made, or being made, of it."""
        free = {frame.quality}
        if frame is self.latest:
            free.update(quality for quality, encoding in self._variants if encoding == "binary")
        return free

    def add(self, sub: FrameSink) -> None:
        self.subscribers[sub.id] = sub
        sub.start()

    async def remove(self, sub_id: str) -> None:
        sub = self.subscribers.pop(sub_id, None)
        if sub is not None:
            await sub.stop()

    async def close(self) -> None:
        self.closed = True
        self._listeners.clear()
        self._new_frame.set()
        for sub_id in list(self.subscribers):
            await self.remove(sub_id)


async def _variant(frame: Frame, quality: int, encoding: str) -> bytes:
    data = frame.jpeg
    if quality < frame.quality:
        metrics.REENCODES.inc()
        data = await executors.run("jpeg", reencode, frame.jpeg, quality)
    if encoding == "base64":
        data = b"data:image/jpeg;base64," + base64.b64encode(data)
    return data
