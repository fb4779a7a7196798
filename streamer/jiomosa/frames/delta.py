"""Delta frames (docs/protocol.md, *Delta frames*): after a key frame, only what changed.

One ``DeltaSource`` per hub that has delta clients (none otherwise: full-frame clients cost
nothing new). It listens to the hub's frames and analyses each one **once**, in a worker
thread: decode, and which 8x8 cells differ from the frame analysed before it
(``tiles.changed_cells``). It keeps the last ``HISTORY`` analyses (the change maps; pixels
only of the newest ``PIXELS_KEPT``). A client holds the picture of some ``base`` seq; its
update to ``seq`` is the union of the change maps in between (the frames it skipped), minus
what a copy of its own picture can serve (a scroll: ``tiles.verify_shift``), as rectangles of
its tile size packed into one image per format (``encode``). Encodes are cached by what they
contain, so clients at the same base share one.

A base that left the history, a change of frame size, or an update that would cost more
than the frame itself: the client gets a key frame instead (``KEY``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import struct
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from jiomosa.core import executors
from jiomosa.frames import tiles
from jiomosa.frames.hub import Frame, FrameHub
from jiomosa.frames.tiles import CELL, Grid, Mask, Pixels, Rect

log = logging.getLogger(__name__)

FORMATS = ("jpeg", "png", "webp")
FORMAT_CODES = {"jpeg": 1, "png": 2, "webp": 3}
DEFAULT_FORMATS = ("jpeg", "png")
TILES = (16, 32, 64)
DEFAULT_TILE = 32

HISTORY = 48
"""Analysed frames remembered: a client further behind gets a key frame."""
PIXELS_KEPT = 4
"""Of those, the newest whose pixels are kept (a copy's source must be verified on them)."""
COPY_MSE = 3.0
"""Largest mean squared error of a cell a copy may serve at the source's quality (PSNR above
43 dB, what a re-encode of the cell costs anyway). Content moved by a multiple of 8 pixels
passes; other moves carry other JPEG noise (~30 dB on text) and are sent as tiles."""
REENCODE_MSE = ((70, 40.0), (60, 90.0), (50, 120.0), (0, 150.0))
"""Below the source's quality a re-encoded cell of text is this far off anyway (measured:
q70 31 dB, q60 27.5 dB, q50 26.5 dB): a copy no worse than that is the better deal."""
DRIFT_FACTOR = 2.0
"""Copies of copies must not drift away from the frame: the error they pile up in one cell
of a client's picture stays within this many times the copy limit (PSNR above 40 dB at the
source's quality) before the cell is sent again."""
MIN_COPY_CELLS = 4
SMALL_AREA = 8192
"""Updates up to this many pixels are encoded both lossless and as JPEG; the smaller wins."""
FLAT_COLOURS = 16
"""Regions of at most this many colours go lossless in larger updates (flat UI, blank page)."""
KEY_AREA = 0.7
"""Share of the frame above which a tiles-only update is sent as a key frame: Chrome's own
JPEG is exact and costs no encode."""

JMD = struct.Struct(">3sBHHIIHHQ")
JMD_MAGIC = b"JMD"
assert JMD.size == 28
COPY = struct.Struct(">HHHHhh")
RECT = struct.Struct(">HHHHHH")


@dataclass
class Picture:
    """One analysed frame."""

    frame: Frame
    pixels: Pixels | None
    changed: Mask | None
    """Cells that differ from the picture analysed before it; None: all of them (the first
    picture, or the frame size changed)."""
    scroll: tiles.Scroll | None

    @property
    def seq(self) -> int:
        return self.frame.seq


@dataclass(frozen=True)
class Patch:
    """One image of an update and where its parts go."""

    format: str
    data: bytes
    rects: tuple[tuple[int, int, int, int, int, int], ...]
    """(x, y, w, h, ax, ay): draw the image's (ax, ay, w, h) at (x, y)."""


Copy = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class DeltaUpdate:
    seq: int
    base_seq: int
    width: int
    height: int
    timestamp: float
    copies: tuple[Copy, ...]
    images: tuple[Patch, ...]

    @property
    def size(self) -> int:
        return sum(len(p.data) for p in self.images) + 12 * len(self.copies)

    def event(self, session_id: str) -> dict[str, Any]:
        """The Socket.IO ``frame:delta`` payload (images as binary attachments)."""
        return {"session_id": session_id, "seq": self.seq, "base_seq": self.base_seq,
                "width": self.width, "height": self.height, "timestamp": self.timestamp,
                "copies": [list(c) for c in self.copies],
                "images": [{"format": p.format, "data": p.data,
                            "rects": [list(r) for r in p.rects]} for p in self.images]}

    def binary(self) -> bytes:
        """The plain WebSocket ``JMD`` message."""
        parts = [JMD.pack(JMD_MAGIC, 1, JMD.size, 0, self.seq & 0xFFFFFFFF,
                          self.base_seq & 0xFFFFFFFF, self.width, self.height,
                          int(self.timestamp * 1000)),
                 struct.pack(">H", len(self.copies))]
        parts += [COPY.pack(*c) for c in self.copies]
        parts.append(struct.pack(">H", len(self.images)))
        for p in self.images:
            parts.append(struct.pack(">BH", FORMAT_CODES[p.format], len(p.rects)))
            parts += [RECT.pack(*r) for r in p.rects]
            parts.append(struct.pack(">I", len(p.data)))
            parts.append(p.data)
        return b"".join(parts)


Outcome = DeltaUpdate | Literal["key", "same"]


@dataclass
class Layout:
    """What an update is made of, before encoding (computed per client, cheap)."""

    copies: list[Copy]
    image_tiles: Mask
    dirty: Mask
    drift: Grid
    """The client's drift after the copies (cells the images draw are cleared once it is
    known which: lossless rects are trimmed)."""
    key: bool = False
    empty: bool = False


# --------------------------------------------------------------------------- analysis
def analyse(frame: Frame, previous: Picture | None) -> Picture:
    """Decode ``frame`` and find the cells that changed since ``previous`` (worker thread)."""
    pixels = tiles.decode(frame.jpeg)
    changed: Mask | None = None
    if (previous is not None and previous.pixels is not None
            and previous.pixels.shape == pixels.shape
            and (previous.frame.width, previous.frame.height) == (frame.width, frame.height)):
        changed = tiles.changed_cells(pixels, previous.pixels)
    return Picture(frame, pixels, changed, tiles.Scroll.of(frame.meta, frame.width))


def shifted_drift(drift: Grid, dx: int, dy: int) -> Grid:
    """Per destination cell, the worst drift among the cells its copy source overlaps."""
    rows, cols = drift.shape
    r = np.arange(rows) * CELL
    c = np.arange(cols) * CELL
    ra = np.clip((r - dy) // CELL, 0, rows - 1)
    rb = np.clip((r + CELL - 1 - dy) // CELL, 0, rows - 1)
    ca = np.clip((c - dx) // CELL, 0, cols - 1)
    cb = np.clip((c + CELL - 1 - dx) // CELL, 0, cols - 1)
    return np.maximum.reduce([drift[ra][:, ca], drift[ra][:, cb], drift[rb][:, ca],
                              drift[rb][:, cb]])


def copy_limit(quality: int, source_quality: int) -> float:
    """The error a copied cell may have when the client gets JPEG at ``quality``."""
    if quality >= source_quality:
        return COPY_MSE
    return next(mse for q, mse in REENCODE_MSE if quality >= q)


def layout(base: Picture, target: Picture, dirty: Mask, tile: int, drift: Grid,
           matches: Sequence[tiles.ShiftMatch], quality: int = 100) -> Layout:
    """Choose copies and image tiles for one client (worker thread)."""
    width, height = target.frame.width, target.frame.height
    limit = copy_limit(quality, target.frame.quality)
    best: tuple[int, tiles.ShiftMatch, Mask, Grid] | None = None
    for match in matches:
        moved = shifted_drift(drift, match.dx, match.dy) + match.mse
        usable = dirty & (match.mse <= limit) & (moved <= DRIFT_FACTOR * limit)
        count = int(usable.sum())
        if count >= MIN_COPY_CELLS and (best is None or count > best[0]):
            best = (count, match, usable, moved)
    usable = best[2] if best else np.zeros_like(dirty)
    image_tiles = tiles.tile_mask(dirty & ~usable, tile)
    in_images = tiles.expand(image_tiles, tile, *dirty.shape)
    copy_cells = usable & ~in_images
    copies: list[Copy] = []
    new_drift = drift.copy()
    if best is not None and copy_cells.any():
        _, match, _, moved = best
        for x, y, w, h in tiles.rects(copy_cells, CELL, width, height):
            copies.append((x - match.dx, y - match.dy, w, h, match.dx, match.dy))
        new_drift[copy_cells] = moved[copy_cells]
    area = int(in_images.sum()) * CELL * CELL
    key = not copies and area >= KEY_AREA * width * height
    return Layout(copies, image_tiles, dirty, new_drift, key=key,
                  empty=not copies and not image_tiles.any())


# --------------------------------------------------------------------------- encoding
def encode(pixels: Pixels, image_rects: Sequence[Rect], dirty: Mask,
           formats: Sequence[str], quality: int) -> tuple[Patch, ...]:
    """The images of an update (worker thread): flat regions lossless, the rest JPEG; a small
    update is encoded both ways and the smaller kept."""
    lossless = "webp" if "webp" in formats else ("png" if "png" in formats else None)
    if "jpeg" not in formats:
        assert lossless is not None
        return (_atlas(pixels, [_trim(r, dirty) for r in image_rects], lossless, quality),)
    area = sum(w * h for _, _, w, h in image_rects)
    if lossless is not None and area <= SMALL_AREA:
        as_jpeg = (_atlas(pixels, image_rects, "jpeg", quality),)
        as_lossless = (_atlas(pixels, [_trim(r, dirty) for r in image_rects], lossless,
                              quality),)
        return min(as_jpeg, as_lossless, key=lambda ps: sum(len(p.data) for p in ps))
    flat: list[Rect] = []
    photo: list[Rect] = []
    for rect in image_rects:
        x, y, w, h = rect
        if lossless is not None and tiles.colours(
                pixels[y:y + h, x:x + w], FLAT_COLOURS) is not None:
            flat.append(_trim(rect, dirty))
        else:
            photo.append(rect)
    out: list[Patch] = []
    if photo:
        out.append(_atlas(pixels, photo, "jpeg", quality))
    if flat and lossless is not None:
        out.append(_atlas(pixels, flat, lossless, quality))
    return tuple(out)


def _trim(rect: Rect, dirty: Mask) -> Rect:
    """A lossless rect shrunk to the changed cells in it (JPEG rects keep their tile: its
    16-pixel grid must stay the source's, see ``_atlas``)."""
    x, y, w, h = rect
    sub = dirty[y // CELL:-(-(y + h) // CELL), x // CELL:-(-(x + w) // CELL)]
    rows, cols = np.nonzero(sub)
    if rows.size == 0:
        return rect
    x0, y0 = x + int(cols.min()) * CELL, y + int(rows.min()) * CELL
    x1 = min(x + w, x + (int(cols.max()) + 1) * CELL)
    y1 = min(y + h, y + (int(rows.max()) + 1) * CELL)
    return (x0, y0, x1 - x0, y1 - y0)


def pack(sizes: Sequence[tuple[int, int]], align: int) -> tuple[list[tuple[int, int]], int, int]:
    """Shelf packing: each size's position in an atlas, and the atlas' size. Positions are
    multiples of ``align``."""
    def up(n: int) -> int:
        return -(-n // align) * align
    total = sum(up(w) * up(h) for w, h in sizes)
    atlas_w = max(max(up(w) for w, _ in sizes), up(int(math.sqrt(total))))
    positions = [(0, 0)] * len(sizes)
    x = y = shelf = used_w = 0
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i][1]):
        w, h = sizes[i]
        if x + up(w) > atlas_w:
            x, y, shelf = 0, y + shelf, 0
        positions[i] = (x, y)
        used_w = max(used_w, x + w)
        x += up(w)
        shelf = max(shelf, up(h))
    used_h = max(positions[i][1] + sizes[i][1] for i in range(len(sizes)))
    return positions, used_w, used_h


def _atlas(pixels: Pixels, rects: Sequence[Rect], fmt: str, quality: int) -> Patch:
    # JPEG parts sit at multiples of 16 in the atlas as in the frame, so that they are cut
    # into the same 8x8 blocks and 16x16 chroma blocks as Chrome's JPEG: re-encoded at its
    # quality they come out nearly unchanged (PSNR ~43 dB instead of ~31 dB off the grid).
    positions, aw, ah = pack([(w, h) for _, _, w, h in rects], 16 if fmt == "jpeg" else 1)
    x0, y0 = rects[0][0], rects[0][1]
    atlas = np.empty((ah, aw, 3), np.uint8)
    atlas[:] = pixels[y0, x0]  # filler of a colour the image has anyway
    placed = []
    for (x, y, w, h), (ax, ay) in zip(rects, positions, strict=True):
        atlas[ay:ay + h, ax:ax + w] = pixels[y:y + h, x:x + w]
        placed.append((x, y, w, h, ax, ay))
    return Patch(fmt, encode_image(atlas, fmt, quality), tuple(placed))


def encode_image(rgb: Pixels, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        # Optimised Huffman tables halve a small image (its tables are most of it) but cost
        # 2.5x the time of a large one for 3 %.
        small = rgb.shape[0] * rgb.shape[1] <= 65536
        Image.fromarray(rgb).save(out, "JPEG", quality=quality, subsampling=2, optimize=small)
    elif fmt == "webp":
        method = 4 if rgb.shape[0] * rgb.shape[1] <= 16384 else 0
        Image.fromarray(rgb).save(out, "WEBP", lossless=True, quality=100, method=method)
    else:
        found = tiles.colours(rgb, 256)
        if found is None:
            Image.fromarray(rgb).save(out, "PNG", compress_level=6)
        else:
            palette, index = found
            image = Image.frombytes("P", (rgb.shape[1], rgb.shape[0]),
                                    index.astype(np.uint8).tobytes())
            rgb_palette = np.stack([(palette >> 16) & 255, (palette >> 8) & 255,
                                    palette & 255], axis=1).astype(np.uint8)
            image.putpalette(rgb_palette.tobytes())
            bits = next(b for b in (1, 2, 4, 8) if palette.size <= 1 << b)
            image.save(out, "PNG", bits=bits, compress_level=9)
    return out.getvalue()


# --------------------------------------------------------------------------- the source
@dataclass
class _Cache:
    matches: OrderedDict[tuple[Any, ...], asyncio.Future[tiles.ShiftMatch]] = field(
        default_factory=OrderedDict)
    encodes: OrderedDict[tuple[Any, ...], asyncio.Future[tuple[Patch, ...]]] = field(
        default_factory=OrderedDict)


class DeltaSource:
    """The analysed frames of one hub, shared by its delta clients."""

    def __init__(self, hub: FrameHub) -> None:
        self.hub = hub
        self.history: OrderedDict[int, Picture] = OrderedDict()
        self._clients: set[Any] = set()
        self._pending: Frame | None = None
        self._task: asyncio.Task[None] | None = None
        self._unlisten: Any = None
        self._cache = _Cache()

    # ------------------------------------------------------------- who uses it
    @staticmethod
    def of(hub: FrameHub) -> DeltaSource:
        source = _SOURCES.get(hub)
        if source is None:
            source = _SOURCES[hub] = DeltaSource(hub)
        return source

    def join(self, client: Any) -> None:
        """``client`` (with a ``wake()``) streams deltas of this hub from now on."""
        self._clients.add(client)
        _SOURCES.setdefault(self.hub, self)  # one a last client's leave had dropped
        if self._unlisten is None:
            self._unlisten = self.hub.listen(self._on_frame)
            if self.hub.latest is not None:
                self._on_frame(self.hub.latest)

    def leave(self, client: Any) -> None:
        self._clients.discard(client)
        if self._clients or self._unlisten is None:
            return
        self._unlisten()
        self._unlisten = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.history.clear()
        self._cache = _Cache()
        if _SOURCES.get(self.hub) is self:
            del _SOURCES[self.hub]

    # ------------------------------------------------------------- analysis, in order
    def _on_frame(self, frame: Frame) -> None:
        self._pending = frame
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._analyse(), name="delta-analysis")

    async def _analyse(self) -> None:
        # One at a time, latest first: a frame that arrives while one is analysed replaces
        # any other waiting one (its change map then spans both).
        while self._pending is not None:
            frame, self._pending = self._pending, None
            latest = self.latest
            if latest is not None and frame.seq <= latest.seq:
                continue
            try:
                picture = await executors.run("jpeg", analyse, frame, latest)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("frame %d could not be analysed for delta clients", frame.seq,
                            exc_info=True)
                continue
            self._add(picture)
            for client in list(self._clients):
                client.wake()

    def _add(self, picture: Picture) -> None:
        self.history[picture.seq] = picture
        while len(self.history) > HISTORY:
            self.history.popitem(last=False)
        for old in list(self.history.values())[:-PIXELS_KEPT]:
            old.pixels = None
        floor = next(iter(self.history))
        for cache in (self._cache.matches, self._cache.encodes):
            for key in [k for k in cache if k[0] < floor]:
                del cache[key]

    @property
    def latest(self) -> Picture | None:
        return next(reversed(self.history.values())) if self.history else None

    # ------------------------------------------------------------- updates
    def dirty(self, base_seq: int, seq: int) -> Mask | None:
        """Cells changed between the pictures ``base_seq`` and ``seq`` (the union of every
        change map in between); None if that cannot be known (key frame needed)."""
        if base_seq not in self.history or seq not in self.history:
            return None
        union: Mask | None = None
        for s, picture in reversed(self.history.items()):
            if s <= base_seq:
                break
            if s > seq:
                continue
            if picture.changed is None:
                return None
            union = picture.changed.copy() if union is None else union | picture.changed
        if union is None:
            picture = self.history[seq]
            rows, cols = tiles.cells_of(picture.frame.width, picture.frame.height)
            union = np.zeros((rows, cols), bool)
        return union

    async def update(self, base_seq: int, seq: int, tile: int, formats: Sequence[str],
                     quality: int, drift: Grid) -> tuple[Outcome, Grid]:
        """What a client holding ``base_seq`` is sent to hold ``seq``, and its new drift."""
        dirty = self.dirty(base_seq, seq)
        if dirty is None or dirty.shape != drift.shape:
            return "key", drift
        base, target = self.history[base_seq], self.history[seq]
        if target.pixels is None:
            return "key", drift
        if not dirty.any():
            return "same", drift
        limit = copy_limit(quality, target.frame.quality)
        matches = await self._matches(base, target, dirty, limit)
        plan = await executors.run("jpeg", layout, base, target, dirty, tile, drift, matches,
                                   quality)
        if plan.key:
            return "key", drift
        if plan.empty:
            return "same", drift
        frame = target.frame
        image_rects = tiles.rects(plan.image_tiles, tile, frame.width, frame.height)
        patches: tuple[Patch, ...] = ()
        if image_rects:
            patches = await self._encode(target, image_rects, dirty, formats, quality)
        result = DeltaUpdate(seq, base_seq, frame.width, frame.height, frame.timestamp,
                             tuple(plan.copies), patches)
        for patch in patches:
            for x, y, w, h, _, _ in patch.rects:
                plan.drift[y // CELL:-(-(y + h) // CELL), x // CELL:-(-(x + w) // CELL)] = 0.0
        key_size = len(frame.jpeg) if quality >= frame.quality else len(frame.jpeg) * 0.7
        if result.size >= key_size:  # a key frame is exact, and Chrome already encoded it
            return "key", drift
        return result, plan.drift

    async def _matches(self, base: Picture, target: Picture, dirty: Mask, limit: float
                       ) -> list[tiles.ShiftMatch]:
        old, new = base.pixels, target.pixels
        if old is None or new is None or old.shape != new.shape:
            return []
        candidates = tiles.shift_candidates(base.scroll, target.scroll, new, old,
                                            target.frame.height, dirty)
        out = []
        for dx, dy in candidates[:4]:
            key = (base.seq, target.seq, dx, dy, limit)
            future = self._cache.matches.get(key)
            if future is None:
                future = asyncio.ensure_future(executors.run(
                    "jpeg", tiles.verify_shift, new, old, target.frame.width,
                    target.frame.height, dx, dy, dirty, limit))
                self._cache.matches[key] = future
            out.append(await asyncio.shield(future))
        return out

    async def _encode(self, target: Picture, image_rects: list[Rect], dirty: Mask,
                      formats: Sequence[str], quality: int) -> tuple[Patch, ...]:
        pixels = target.pixels
        if pixels is None:
            raise LookupError("picture pixels dropped")
        # The images depend on the rects, the dirty cells (lossless rects are trimmed to
        # them) and the encoding: clients at the same base share one encode.
        key = (target.seq, tuple(formats), quality, tuple(image_rects),
               np.packbits(dirty).tobytes())
        future = self._cache.encodes.get(key)
        if future is None:
            future = asyncio.ensure_future(executors.run(
                "jpeg", encode, pixels, image_rects, dirty, tuple(formats), quality))
            self._cache.encodes[key] = future
            while len(self._cache.encodes) > 64:
                self._cache.encodes.popitem(last=False)
        return await asyncio.shield(future)


_SOURCES: weakref.WeakKeyDictionary[FrameHub, DeltaSource] = weakref.WeakKeyDictionary()
