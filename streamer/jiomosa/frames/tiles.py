"""Pixel work of delta frames: decoding, which cells changed, and where content moved.

Everything here is plain numpy on decoded frames and runs in a worker thread. The unit of
comparison is an 8x8 *cell* (a JPEG block): a frame is decoded once, compared once with the
frame analysed before it (``changed_cells``), and any client's tile size (16, 32, 64) is a
union of cells. numpy is needed because a per-tile comparison in Python (or PIL's
``ImageChops`` per tile) costs tens of milliseconds per frame; vectorised over 64-bit words it
is well under a millisecond at 240x320.

Chrome's screencast is itself JPEG, so a region that scrolled by a number of pixels that is not
a multiple of 8 comes back with other compression noise: a copy of the old pixels is close to
the new frame, not equal (PSNR about 30 dB on text). ``verify_shift`` therefore measures each
cell's error and the caller decides which cells a copy may serve.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

CELL = 8
"""Edge of a comparison cell in frame pixels (a JPEG block)."""

Pixels = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Grid = npt.NDArray[np.float32]


def cells_of(width: int, height: int) -> tuple[int, int]:
    """Rows and columns of cells covering a ``width`` x ``height`` frame."""
    return -(-height // CELL), -(-width // CELL)


def decode(jpeg: bytes) -> Pixels:
    """The frame as RGB pixels, padded with black to whole cells (so that every cell is made
    of whole 64-bit words: 8 pixels x 3 bytes = 3 words)."""
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    rows, cols = cells_of(width, height)
    if (rows * CELL, cols * CELL) == (height, width):
        return np.ascontiguousarray(rgb)
    padded = np.zeros((rows * CELL, cols * CELL, 3), np.uint8)
    padded[:height, :width] = rgb
    return padded


def _words(pixels: Pixels) -> npt.NDArray[np.uint64]:
    return pixels.reshape(pixels.shape[0], -1).view(np.uint64)


def changed_cells(new: Pixels, old: Pixels) -> Mask:
    """Cells whose pixels differ at all (exact: compared as 64-bit words)."""
    rows, cols = new.shape[0] // CELL, new.shape[1] // CELL
    diff = _words(new) != _words(old)
    return diff.reshape(rows, CELL, cols, 3).any(axis=(1, 3))


@dataclass(frozen=True)
class Scroll:
    """What the screencast metadata says of the page's scroll position, in frame pixels."""

    x: float
    y: float

    @staticmethod
    def of(meta: Mapping[str, Any] | None, width: int) -> Scroll | None:
        if not meta:
            return None
        try:
            sx, sy = float(meta["scrollOffsetX"]), float(meta["scrollOffsetY"])
            device_width = float(meta.get("deviceWidth") or width)
            scale = float(meta.get("pageScaleFactor") or 1.0) * width / device_width
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        return Scroll(sx * scale, sy * scale)


def shift_candidates(old_scroll: Scroll | None, new_scroll: Scroll | None,
                     new: Pixels, old: Pixels, height: int, changed: Mask
                     ) -> list[tuple[int, int]]:
    """Moves ``(dx, dy)`` of the content to try, most likely first: what the metadata says
    (rounded both ways: Chrome snaps fractional scroll offsets), else, when much of the
    picture changed, a vertical move found by correlating row profiles (a scrolled ``div``
    leaves the page's scroll offset alone)."""
    out: list[tuple[int, int]] = []
    if old_scroll is not None and new_scroll is not None:
        mx, my = old_scroll.x - new_scroll.x, old_scroll.y - new_scroll.y
        if abs(mx) >= 0.5 or abs(my) >= 0.5:
            for dx in dict.fromkeys((round(mx), int(np.floor(mx)), int(np.ceil(mx)))):
                for dy in dict.fromkeys((round(my), int(np.floor(my)), int(np.ceil(my)))):
                    if (dx, dy) != (0, 0):
                        out.append((dx, dy))
            return out
    if changed.mean() < 0.25:
        return out
    return [(0, dy) for dy in _profile_shifts(new, old, height)]


def _profile_shifts(new: Pixels, old: Pixels, height: int, count: int = 2) -> list[int]:
    """The vertical moves that best line up the two frames' row brightness profiles (least
    mean squared difference over the overlap, which is at least half the frame; computed for
    every move at once with an FFT). Text repeats line after line, so a few are returned and
    the pixels decide."""
    a = new[:height].mean(axis=(1, 2))
    b = old[:height].mean(axis=(1, 2))
    size = 2 * height
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    shifts = np.arange(-(height // 2), height // 2 + 1)
    # new[y] against old[y - k] for y in [max(0, k), min(height, height + k)).
    lo, hi = np.maximum(0, shifts), np.minimum(height, height + shifts)
    ca = np.concatenate(([0.0], np.cumsum(a * a)))
    cb = np.concatenate(([0.0], np.cumsum(b * b)))
    ssd = (ca[hi] - ca[lo]) + (cb[hi - shifts] - cb[lo - shifts]) - 2 * corr[shifts % size]
    msd = ssd / (hi - lo)
    still = float(msd[height // 2])
    order = [int(k) for k in shifts[np.argsort(msd)] if k != 0]
    return [k for k in order[:count] if msd[k + height // 2] < 0.5 * still]


@dataclass(frozen=True)
class ShiftMatch:
    """How well the old frame moved by ``(dx, dy)`` reproduces each cell of the new one."""

    dx: int
    dy: int
    mse: Grid
    """Per cell: mean squared error of the moved old pixels (inf where the source would lie
    outside the old frame)."""


SAMPLE = 48
"""Inexact cells measured first: if hardly any is within the limit, the rest are not."""


def verify_shift(new: Pixels, old: Pixels, width: int, height: int, dx: int, dy: int,
                 wanted: Mask, limit: float = np.inf) -> ShiftMatch:
    """Measure, for the ``wanted`` cells, the error of copying old[y - dy, x - dx] to
    new[y, x]. Exact cells are found on 64-bit words; only the others are measured, and not
    at all when a sample of them shows that few would be within ``limit`` (content moved off
    the JPEG grid, at full quality: measuring every cell of a 720p frame costs ~10 ms)."""
    rows, cols = wanted.shape
    mse = np.full((rows, cols), np.inf, np.float32)
    # Cells whose whole source lies inside the old frame's real pixels.
    ys = np.arange(rows) * CELL
    xs = np.arange(cols) * CELL
    row_ok = (ys - dy >= 0) & (np.minimum(ys + CELL, height) - dy <= height) & (ys < height)
    col_ok = (xs - dx >= 0) & (np.minimum(xs + CELL, width) - dx <= width) & (xs < width)
    target = wanted & row_ok[:, None] & col_ok[None, :]
    if not target.any():
        return ShiftMatch(dx, dy, mse)
    moved = np.zeros_like(new)
    ph, pw = new.shape[:2]
    y0, y1 = max(0, dy), min(ph, ph + dy)
    x0, x1 = max(0, dx), min(pw, pw + dx)
    moved[y0:y1, x0:x1] = old[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    if dx % CELL == 0:
        exact = ~changed_cells(new, moved)
    else:
        exact = ~(new != moved).reshape(rows, CELL, cols, CELL * 3).any(axis=(1, 3))
    mse[target & exact] = 0.0
    todo = target & ~exact
    if todo.sum() > 4 * SAMPLE and np.isfinite(limit):
        r_idx, c_idx = np.nonzero(todo)
        pick = np.linspace(0, r_idx.size - 1, SAMPLE).astype(int)
        sample = _cell_mse(new, moved, r_idx[pick], c_idx[pick])
        if (sample <= limit).mean() < 0.1:
            return ShiftMatch(dx, dy, mse)
    if todo.any():
        r_idx, c_idx = np.nonzero(todo)
        mse[r_idx, c_idx] = _cell_mse(new, moved, r_idx, c_idx)
    return ShiftMatch(dx, dy, mse)


def _cell_mse(new: Pixels, moved: Pixels, r_idx: npt.NDArray[np.intp],
              c_idx: npt.NDArray[np.intp]) -> Grid:
    rows, cols = new.shape[0] // CELL, new.shape[1] // CELL
    blocks_new = new.reshape(rows, CELL, cols, CELL, 3)[r_idx, :, c_idx]
    blocks_old = moved.reshape(rows, CELL, cols, CELL, 3)[r_idx, :, c_idx]
    diff = blocks_new.astype(np.int16) - blocks_old.astype(np.int16)
    return np.asarray((diff.astype(np.int32) ** 2).mean(axis=(1, 2, 3)), np.float32)


def tile_mask(cells: Mask, tile: int) -> Mask:
    """Tiles of ``tile`` pixels that contain a marked cell."""
    k = tile // CELL
    rows, cols = cells.shape
    tr, tc = -(-rows // k), -(-cols // k)
    padded = np.zeros((tr * k, tc * k), bool)
    padded[:rows, :cols] = cells
    return np.asarray(padded.reshape(tr, k, tc, k).any(axis=(1, 3)), dtype=bool)


def expand(tiles: Mask, tile: int, rows: int, cols: int) -> Mask:
    """The cells of the marked tiles."""
    k = tile // CELL
    return np.repeat(np.repeat(tiles, k, axis=0), k, axis=1)[:rows, :cols]


Rect = tuple[int, int, int, int]
"""(x, y, w, h) in frame pixels."""


def rects(mask: Mask, unit: int, width: int, height: int) -> list[Rect]:
    """Cover the marked units of a grid with few rectangles (runs of each row, merged with
    identical runs of the rows below), clipped to the frame; they never overlap."""
    out: list[Rect] = []
    open_runs: dict[tuple[int, int], int] = {}  # (c0, c1) -> first row
    rows = mask.shape[0]
    for r in range(rows + 1):
        runs: set[tuple[int, int]] = set()
        if r < rows:
            line = np.concatenate(([False], mask[r], [False])).astype(np.int8)
            edges = np.flatnonzero(np.diff(line))
            runs = {(int(edges[i]), int(edges[i + 1])) for i in range(0, len(edges), 2)}
        for run in [run for run in open_runs if run not in runs]:
            start = open_runs.pop(run)
            x, y = run[0] * unit, start * unit
            w = min(run[1] * unit, width) - x
            h = min(r * unit, height) - y
            if w > 0 and h > 0:
                out.append((x, y, w, h))
        for run in runs:
            open_runs.setdefault(run, r)
    return out


Palette = tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]


def colours(region: Pixels, limit: int) -> Palette | None:
    """The distinct colours of ``region`` and each pixel's index among them, or None if there
    are more than ``limit`` (a strided sample is checked first: it usually tells at once)."""
    packed = (region[..., 0].astype(np.uint32) << 16) | (
        region[..., 1].astype(np.uint32) << 8) | region[..., 2]
    flat = packed.reshape(-1)
    if flat.size > 4096 and np.unique(flat[::7]).size > limit:
        return None
    palette, index = np.unique(flat, return_inverse=True)
    if palette.size > limit:
        return None
    return palette, index.reshape(region.shape[:2])
