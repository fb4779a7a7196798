"""A delta client's pacer: key frame first, then updates against the picture it holds.

``DeltaSubscriber`` is a ``Subscriber`` (same settings, statistics and hub membership) with its
own send loop; full-frame clients keep the ``Subscriber`` loop untouched. Per client it keeps
the seq of the picture the client holds and, per 8x8 cell, how much error copies piled up in
it (``drift``); the pictures themselves are the hub's ``DeltaSource``'s, shared by all.

Pacing is by the client's link (``frames/link.py``): an update goes once the client has
acknowledged all but about one bandwidth-delay product, so frames that arrive meanwhile are
skipped, never queued; JPEG quality follows the link's throughput (adaptive mode).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from jiomosa import metrics
from jiomosa.core.validation import BadRequest
from jiomosa.frames import tiles
from jiomosa.frames.delta import (
    DEFAULT_FORMATS,
    DEFAULT_TILE,
    FORMATS,
    TILES,
    DeltaSource,
    DeltaUpdate,
    Picture,
)
from jiomosa.frames.hub import Frame, FrameHub
from jiomosa.frames.link import Link
from jiomosa.frames.pacer import Subscriber, Transport

QUALITY_HOLD = 2.0  # seconds between link-driven quality changes


class DeltaTransport(Transport, Protocol):
    """A transport that can carry key frames and delta updates."""

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber,
                         key: bool = False) -> None: ...

    async def send_delta(self, update: DeltaUpdate, sub: Subscriber) -> None: ...

    def link_socket(self) -> Any:
        """The client's TCP socket (for TCP_INFO), or None."""
        ...

    def queued_bytes(self) -> int:
        """Bytes this process still holds for the client."""
        ...


class DeltaSubscriber(Subscriber):
    """One delta client of one session."""

    def __init__(
        self,
        sub_id: str,
        hub: FrameHub,
        transport: DeltaTransport,
        fps: int,
        quality: int,
        adaptive: bool,
        formats: Sequence[str],
        tile: int,
        on_quality_change: Callable[[Subscriber, str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        super().__init__(sub_id, hub, transport, fps, quality, adaptive, "binary",
                         on_quality_change)
        self.delta_transport = transport
        self.formats = tuple(formats)
        self.tile = tile
        self.source = DeltaSource.of(hub)
        self.link = Link(transport.link_socket, transport.queued_bytes)
        self.held_seq = 0
        self.want_key = True
        self.key_frames = 0
        self.updates = 0
        self.bytes_sent = 0
        self._drift: tiles.Grid | None = None
        self._joined = False

    # --------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.source.join(self)
        self._joined = True
        super().start()

    async def stop(self) -> None:
        await super().stop()
        if self._joined:
            self._joined = False
            self.source.leave(self)

    def request_key(self) -> None:
        """The client asked for a key frame (it lost track): the next picture is one."""
        self.want_key = True
        self.wake()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "delta": True, "keyFrames": self.key_frames,
                "updates": self.updates, "rttMs": round(self.link.rtt * 1000, 1)}

    # --------------------------------------------------------------- the send loop
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            picture = self.source.latest
            if picture is None or (picture.seq <= self.held_seq and not self.want_key):
                continue
            interval = 1.0 / self.fps
            delay = self._tat - interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            picture = self.source.latest or picture  # latest-frame-wins
            self._sending_seq = picture.seq
            try:
                size = await self._send(picture)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.info("delta send failed; stopping this client's stream", exc_info=True)
                return
            if size is None:
                continue
            emit_at = time.monotonic()
            self._tat = max(self._tat, emit_at) + interval
            self.sent_seq = picture.seq
            self.frames_sent += 1
            self._send_times.append(emit_at)
            self._last_size = size
            self.bytes_sent += size
            metrics.FRAMES_DELIVERED.labels(self.transport.name).inc()
            metrics.BYTES_SENT.labels(self.transport.name).inc(size)
            await self.link.room(self.transport.drained)
            if not self.link.kernel:
                self.link.learn_drain(size, time.monotonic() - emit_at)
            self.throughput_bps = self.link.rate
            self._follow_link()
            latest = self.source.latest
            if latest is not None and latest.seq > self.held_seq:
                self._wake.set()

    async def _send(self, picture: Picture) -> int | None:
        """Send what brings the client to ``picture``; its size, or None if nothing went."""
        quality = min(self.quality, picture.frame.quality)
        if not self.want_key and self._drift is not None:
            outcome, drift = await self.source.update(
                self.held_seq, picture.seq, self.tile, self.formats, quality, self._drift)
            if outcome == "same":
                return None
            if isinstance(outcome, DeltaUpdate):
                await self.delta_transport.send_delta(outcome, self)
                self.held_seq, self._drift = picture.seq, drift
                self.updates += 1
                return outcome.size
        # A key frame: the first picture, on request, or when an update cannot be had.
        self.want_key = False
        image = await self.hub.image(picture.frame, quality)
        await self.delta_transport.send_frame(picture.frame, image, self, key=True)
        self.held_seq = picture.seq
        rows, cols = tiles.cells_of(picture.frame.width, picture.frame.height)
        self._drift = np.zeros((rows, cols), np.float32)
        self.key_frames += 1
        return len(image)

    def _follow_link(self) -> None:
        if not self.adaptive:
            return
        wanted = self.link.quality(self.hub.source_quality)
        now = time.monotonic()
        if wanted != self.quality and now - self._last_quality_change > QUALITY_HOLD:
            self._change_quality(wanted, "congested" if wanted < self.quality else "headroom")


# --------------------------------------------------------------------------- what a client asks
class DeltaOptions:
    """A client's delta request: ``formats`` it decodes, comparison ``tile`` edge."""

    __slots__ = ("formats", "tile")

    def __init__(self, formats: Sequence[str] = DEFAULT_FORMATS, tile: int = DEFAULT_TILE
                 ) -> None:
        self.formats = tuple(formats)
        self.tile = tile

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeltaOptions) and (self.formats, self.tile) == (
            other.formats, other.tile)

    def __hash__(self) -> int:
        return hash((self.formats, self.tile))

    def describe(self) -> dict[str, Any]:
        """What ``subscribe:response`` tells of it."""
        return {"delta": True, "formats": list(self.formats), "tile": self.tile}


def delta_options(payload: dict[str, Any]) -> DeltaOptions | None:
    """The delta request of a ``subscribe`` payload (None: full frames); BadRequest if bad."""
    delta = payload.get("delta", False)
    if not isinstance(delta, bool):
        raise BadRequest("delta must be true or false")
    if not delta:
        if "formats" in payload or "tile" in payload:
            raise BadRequest("formats and tile apply to delta frames: add delta: true")
        return None
    formats = payload.get("formats", list(DEFAULT_FORMATS))
    if (not isinstance(formats, list) or not formats or len(formats) > len(FORMATS)
            or not all(isinstance(f, str) for f in formats)):
        raise BadRequest(f"formats must be a non-empty list of {', '.join(FORMATS)}")
    return DeltaOptions(_formats(formats), _tile(payload.get("tile", DEFAULT_TILE)))


def delta_query(query: Mapping[str, str]) -> DeltaOptions | None:
    """The same from a plain WebSocket's query: ``delta=1[&formats=jpeg,png][&tile=32]``."""
    raw = query.get("delta", "")
    if raw in ("", "0", "false"):
        if query.get("formats") or query.get("tile"):
            raise BadRequest("formats and tile apply to delta frames: add delta=1")
        return None
    if raw not in ("1", "true"):
        raise BadRequest("delta must be 1 or 0")
    formats = [f.strip() for f in query.get("formats", ",".join(DEFAULT_FORMATS)).split(",")]
    tile: Any = query.get("tile") or DEFAULT_TILE
    if isinstance(tile, str):
        if not tile.isdigit() or len(tile) > 4:
            raise BadRequest(f"tile must be one of {', '.join(map(str, TILES))}")
        tile = int(tile)
    return DeltaOptions(_formats(formats), _tile(tile))


def _formats(formats: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise BadRequest(f"unknown image format {unknown[0][:16]!r}; known: "
                         f"{', '.join(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise BadRequest("formats lists a format twice")
    return tuple(f for f in FORMATS if f in formats)  # one canonical order: shared encodes


def _tile(tile: Any) -> int:
    if isinstance(tile, bool) or tile not in TILES:
        raise BadRequest(f"tile must be one of {', '.join(map(str, TILES))}")
    return int(tile)
