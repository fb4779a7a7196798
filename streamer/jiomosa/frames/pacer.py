"""Per-client pacing: each client of a session gets the latest frame at its own pace.

Each ``Subscriber`` runs one task that sends the *latest* frame when (a) there is one it has
not sent, (b) its fps cap allows (GCRA) and (c) its transport has drained the previous frame.
A slow client therefore skips frames and never builds a backlog, and how long the transport
takes to drain is the throughput measure that drives adaptive quality.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from jiomosa import metrics
from jiomosa.core.tasks import TaskSet
from jiomosa.core.types import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY
from jiomosa.frames.hub import Frame, FrameHub

log = logging.getLogger(__name__)

QUALITY_STEP = 10
STALL_SLICE = 0.5  # seconds of no drain at all that count as one stall
DRAIN_GIVE_UP = 30.0  # seconds after which a frame that never drains is written off


class Transport(Protocol):
    """How one client receives frames."""

    name: str

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber) -> None: ...

    async def drained(self) -> None:
        """Return once the transport has taken everything sent so far off its queue."""
        ...


class Subscriber:
    """One client of one session, with its own pacing, quality and statistics."""

    def __init__(
        self,
        sub_id: str,
        hub: FrameHub,
        transport: Transport,
        fps: int,
        quality: int,
        adaptive: bool = True,
        encoding: str = "binary",
        on_quality_change: Callable[[Subscriber, str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.id = sub_id
        self.hub = hub
        self.transport = transport
        self.fps = fps
        self.quality = quality
        self.adaptive = adaptive
        self.encoding = encoding
        self.manual_quality: int | None = None
        self._on_quality_change = on_quality_change
        self.log = logging.LoggerAdapter(log, {"session_id": hub.session_id, "client": sub_id})
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._notices = TaskSet(f"subscriber-{sub_id}")
        self.sent_seq = 0
        self._sending_seq = 0  # the frame being encoded or written now
        self.frames_sent = 0
        self.frames_skipped = 0
        self.throughput_bps = 0.0
        self._send_times: deque[float] = deque(maxlen=128)
        self._congested: deque[float] = deque(maxlen=16)
        self._last_quality_change = 0.0
        self._last_emit = 0.0
        self._tat = 0.0  # theoretical arrival time of the next frame (GCRA)
        self._last_drained = 0.0
        self._last_size = 0
        self._previous_size = 0

    # --------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"subscriber-{self.id}")
        self.wake()  # the current picture goes out at once

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    # --------------------------------------------------------------- settings
    def set_fps(self, fps: int) -> None:
        self.fps = max(MIN_FPS, min(MAX_FPS, fps))

    def set_quality(self, quality: int) -> None:
        self.quality = max(MIN_QUALITY, min(MAX_QUALITY, quality))
        self.manual_quality = self.quality

    @property
    def actual_fps(self) -> float:
        now = time.monotonic()
        return float(sum(1 for t in self._send_times if now - t <= 1.0))

    def describe(self) -> dict[str, Any]:
        return {"id": self.id[:8], "transport": self.transport.name, **self.stats()}

    def stats(self) -> dict[str, Any]:
        return {
            "size": self._last_size,
            "quality": self.quality,
            "fps": self.fps,
            "actualFps": self.actual_fps,
            "bandwidthMbps": round(self.throughput_bps * 8 / 1e6, 3),
            "adaptive": self.adaptive,
            "framesSent": self.frames_sent,
            "framesSkipped": self.frames_skipped,
        }

    # --------------------------------------------------------------- the send loop
    async def _run(self) -> None:
        hub = self.hub
        while True:
            await self._wake.wait()
            self._wake.clear()
            frame = hub.latest
            if frame is None or frame.seq <= self.sent_seq:
                continue
            # GCRA pacing (tolerance one interval): the long-run rate never exceeds the cap,
            # yet a frame that arrives early (vsync jitter) is not held back and then lost.
            interval = 1.0 / self.fps
            delay = self._tat - interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                frame = hub.latest or frame  # latest-frame-wins
            self._sending_seq = frame.seq
            try:
                image = await hub.image(frame, self.quality, self.encoding)
                self._last_size = len(image)
                emit_at = time.monotonic()
                await self.transport.send_frame(frame, image, self)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.info("frame send failed; stopping this client's stream", exc_info=True)
                return
            self._tat = max(self._tat, emit_at) + interval
            self.sent_seq = frame.seq
            self.frames_sent += 1
            self._send_times.append(emit_at)
            metrics.FRAMES_DELIVERED.labels(self.transport.name).inc()
            metrics.BYTES_SENT.labels(self.transport.name).inc(len(image))
            await self._wait_drained(len(image))
            self._last_emit = emit_at
            if hub.latest is not None and hub.latest.seq > self.sent_seq:
                self._wake.set()

    def note_replaced(self, frame: Frame) -> None:
        """``frame`` was replaced by a newer one; count it if this client never got it."""
        if (self.sent_seq < frame.seq != self._sending_seq) and self._task is not None:
            self.frames_skipped += 1
            metrics.FRAMES_SKIPPED.labels(self.transport.name).inc()

    async def _wait_drained(self, size: int) -> None:
        """Wait until the transport took the frame just sent, learning from how long that took:
        while it waits, the transport is still writing the previous frame to a client that
        cannot take more. That wait, not our own output rate, drives adaptive quality."""
        started = time.monotonic()
        drain = asyncio.ensure_future(self.transport.drained())
        budget = max(1.0 / self.fps, 1.0 / MAX_FPS)
        try:
            while True:
                done, _ = await asyncio.wait({drain}, timeout=STALL_SLICE)
                now = time.monotonic()
                if done:
                    break
                # Stalled: the client takes nothing at all. Lower quality while it lasts.
                self._congestion(now, stalled=True)
                if now - started > DRAIN_GIVE_UP:
                    self.log.info("client took no frame for %.0fs", now - started)
                    return
        finally:
            drain.cancel()
        wait = now - started
        busy_since = max(self._last_drained, self._last_emit)
        if wait > 0.002 and busy_since:
            # The writer was busy from when the previous frame left the queue until now.
            rate = self._previous_size / max(now - busy_since, 1e-3)
            self.throughput_bps = rate if not self.throughput_bps else (
                0.7 * self.throughput_bps + 0.3 * rate)
        else:
            # Unconstrained: report what actually went out over the last second.
            sent = sum(1 for t in self._send_times if now - t <= 1.0)
            self.throughput_bps = max(self.throughput_bps * 0.9, sent * size)
        self._previous_size = size
        self._last_drained = now
        if wait > budget:
            self._congestion(now)
        else:
            self._maybe_raise(now)

    def _congestion(self, now: float, stalled: bool = False) -> None:
        self._congested.append(now)
        if not self.adaptive or self.quality <= MIN_QUALITY:
            return
        recent = sum(1 for t in self._congested if now - t <= 1.0)
        if (stalled or recent >= 3) and now - self._last_quality_change > 1.0:
            self._change_quality(max(MIN_QUALITY, self.quality - QUALITY_STEP), "congested")

    def _maybe_raise(self, now: float) -> None:
        ceiling = self.hub.source_quality
        if (self.adaptive and self.quality < ceiling
                and now - self._last_quality_change > 3.0
                and (not self._congested or now - self._congested[-1] > 3.0)):
            self._change_quality(min(ceiling, self.quality + QUALITY_STEP), "headroom")

    def _change_quality(self, quality: int, reason: str) -> None:
        if quality == self.quality:
            return
        self.quality = quality
        self._last_quality_change = time.monotonic()
        self._congested.clear()
        metrics.QUALITY_CHANGES.labels(reason).inc()
        if self._on_quality_change is not None:
            self._notices.spawn(self._on_quality_change(self, reason), f"quality-{self.id}")
