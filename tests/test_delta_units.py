"""Delta frames without a browser: the pixel work (frames/tiles.py), the update pipeline of a
hub (frames/delta.py) on JPEGs made here, the wire format read back by the test client, the
request checks and the link estimate (frames/link.py) on a real loopback connection."""

from __future__ import annotations

import asyncio
import io
import itertools
import socket

import numpy as np
import pytest
from deltaclient import DeltaState, decode, parse_jmd, psnr, update_of_event
from PIL import Image

from jiomosa.core.errors import BadRequest
from jiomosa.frames import tiles
from jiomosa.frames.delta import DeltaSource, DeltaUpdate, pack
from jiomosa.frames.deltasub import delta_options, delta_query
from jiomosa.frames.hub import FrameHub
from jiomosa.frames.link import Link, tcp_sample

W, H = 240, 320


def page(offset: int, height: int = 2000, seed: int = 7) -> np.ndarray:
    """A tall 'page' of dark text-like strokes on white, seen from ``offset`` down."""
    rng = np.random.default_rng(seed)
    tall = np.full((height, W, 3), 255, np.uint8)
    for y in range(10, height - 20, 18):
        for x in range(6, W - 40, 9):
            if rng.random() < 0.7:
                tall[y:y + 11, x:x + rng.integers(2, 7)] = rng.integers(0, 90)
    tall[600:700, 40:200] = [30, 120, 200]  # a coloured block
    return tall[offset:offset + H].copy()


def jpeg(pixels: np.ndarray, quality: int = 80) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_rects_cover_the_mask_without_overlap() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((12, 9)) < 0.4
        covered = np.zeros((12 * 8, 9 * 8), int)
        for x, y, w, h in tiles.rects(mask, 8, 9 * 8, 12 * 8 - 3):
            covered[y:y + h, x:x + w] += 1
        assert covered.max() <= 1
        # Every marked cell is covered (the last row only down to the frame's edge).
        assert np.array_equal(covered.reshape(12, 8, 9, 8).any(axis=(1, 3)), mask)


def test_pack_places_parts_apart_on_the_grid() -> None:
    sizes = [(32, 64), (16, 16), (240, 32), (48, 8), (64, 64)]
    positions, aw, ah = pack(sizes, 16)
    taken = np.zeros((ah + 64, aw + 64), int)
    for (x, y), (w, h) in zip(positions, sizes, strict=True):
        assert x % 16 == 0 and y % 16 == 0 and x + w <= aw and y + h <= ah
        taken[y:y + h, x:x + w] += 1
    assert taken.max() == 1


def test_changed_cells_and_a_verified_shift() -> None:
    a = tiles.decode(jpeg(page(0)))
    b = tiles.decode(jpeg(page(48)))  # scrolled by 48 (a multiple of 16): same JPEG blocks
    changed = tiles.changed_cells(b, a)
    assert changed.mean() > 0.5
    assert not tiles.changed_cells(a, a.copy()).any()
    match = tiles.verify_shift(b, a, W, H, 0, -48, changed)
    rows = H // 8
    # Cells whose source lies inside the old frame match (the last 48 rows are new).
    inside = match.mse[: rows - 6][changed[: rows - 6]]
    assert np.isfinite(inside).all() and np.median(inside) <= 1.0
    assert np.isinf(match.mse[rows - 6:]).all()
    assert tiles.shift_candidates(None, None, b, a, H, changed)[:1] == [(0, -48)]


@pytest.mark.parametrize("formats", [("jpeg", "png"), ("png",), ("jpeg", "png", "webp")])
async def test_the_hub_pipeline_rebuilds_the_frame(formats: tuple[str, ...]) -> None:
    hub = FrameHub("s", 80)

    class Client:
        woken = 0

        def wake(self) -> None:
            self.woken += 1

    client = Client()
    source = DeltaSource.of(hub)
    source.join(client)
    state = DeltaState()
    offsets = [0, 0, 48, 96, 100, 100]
    seqs = []
    for i, offset in enumerate(offsets):
        pixels = page(offset)
        if i in (1, 5):
            pixels[100:120, 30 + i:40 + i] = 0  # a caret-sized change
        frame = hub.publish(jpeg(pixels), W, H, {"scrollOffsetX": 0, "scrollOffsetY": offset,
                                                  "pageScaleFactor": 1, "deviceWidth": W})
        assert frame is not None
        while source.latest is None or source.latest.seq != frame.seq:
            await asyncio.sleep(0.005)
        seqs.append(frame.seq)
    state.key(seqs[0], hub_frame_jpeg := source.history[seqs[0]].frame.jpeg)
    assert hub_frame_jpeg
    drift = np.zeros(tiles.cells_of(W, H), np.float32)
    copies = 0
    for base, seq in itertools.pairwise(seqs):
        outcome, drift = await source.update(base, seq, 32, formats, 80, drift)
        if outcome == "key":
            state.key(seq, source.history[seq].frame.jpeg)
            continue
        assert isinstance(outcome, DeltaUpdate)
        copies += len(outcome.copies)
        # Both wire forms carry the same update.
        from_binary = parse_jmd(outcome.binary())
        from_event = update_of_event(outcome.event("s"))
        assert from_binary.copies == from_event.copies and from_binary.images == [
            (f, d, r) for f, d, r in from_event.images]
        assert state.apply(from_binary), state.rejected
        reference = decode(source.history[seq].frame.jpeg)
        assert psnr(state.picture, reference) >= 38.0
        for x, y, w, h in state.lossless[seq]:
            assert np.array_equal(state.picture[y:y + h, x:x + w], reference[y:y + h, x:x + w])
    assert copies, "the scrolls were not sent as copies"
    caret, _ = await source.update(seqs[-2], seqs[-1], 16, formats, 80, np.zeros_like(drift))
    assert isinstance(caret, DeltaUpdate) and caret.size < 1200 and not caret.copies, caret
    # Too far back: a key frame.
    source.history.pop(seqs[0])
    assert (await source.update(seqs[0], seqs[-1], 32, formats, 80, drift))[0] == "key"
    source.leave(client)
    assert DeltaSource.of(hub) is not source and not source.history


def test_delta_requests_are_checked() -> None:
    assert delta_options({}) is None
    options = delta_options({"delta": True, "formats": ["png", "jpeg"], "tile": 16})
    assert options is not None and options.formats == ("jpeg", "png") and options.tile == 16
    for bad in ({"delta": "true"}, {"delta": True, "formats": ["tiff"]},
                {"delta": True, "formats": ["png", "png"]}, {"delta": True, "tile": 31},
                {"delta": True, "tile": True}, {"tile": 16}, {"delta": True, "formats": {}}):
        with pytest.raises(BadRequest):
            delta_options(bad)
    assert delta_query({}) is None
    options = delta_query({"delta": "1", "formats": "webp,jpeg", "tile": "64"})
    assert options is not None and options.formats == ("jpeg", "webp") and options.tile == 64
    for bad_query in ({"delta": "2"}, {"delta": "1", "tile": "x"}, {"delta": "1", "tile": "48"},
                      {"delta": "1", "formats": ""}, {"formats": "png"}):
        with pytest.raises(BadRequest):
            delta_query(bad_query)


async def test_link_reads_tcp_info_of_a_real_connection() -> None:
    if not hasattr(socket, "TCP_INFO"):
        pytest.skip("TCP_INFO is Linux only")
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    client.connect(server.getsockname())
    peer, _ = server.accept()
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        peer.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < 50_000_000:
                sent += peer.send(b"x" * 65536)
        sample = tcp_sample(peer)
        assert sample is not None and sample.in_flight > 0 and sample.rtt >= 0
        link = Link(lambda: peer, lambda: 0)
        assert link.outstanding() == sample.in_flight or link.outstanding() > 0
        received = 0
        while received < sent:
            received += len(client.recv(1 << 20))
        await asyncio.sleep(0.05)
        assert link.outstanding() == 0
    finally:
        for s in (client, peer, server):
            s.close()


def test_link_window_and_quality_follow_the_rate() -> None:
    link = Link(lambda: None, lambda: 0)
    assert link.outstanding() is None and not link.kernel
    assert link.quality(80) == 80  # never saturated: the source's quality
    link.rate, link.min_rtt = 32_000.0, 0.3  # 256 kbit/s, 300 ms
    assert 9_000 < link.window() < 20_000
    assert link.quality(80) == 50
    link.rate = 125_000.0  # 1 Mbit/s
    assert link.quality(80) == 70
    link.rate = 10_000_000.0
    assert link.quality(80) == 80
