"""In-process tests of the frame hub and the per-client pacer (no browser, no network).

Timing: the machine running these may be slow and noisy, so rates are checked with generous
bounds, waits are bounded by deadlines, and the multi-second quality hysteresis is driven by
shifting the pacer's clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from fakes import FakeTransport, distinct_jpeg, jpeg
from PIL import Image

from jiomosa.core.types import MAX_FPS, MAX_QUALITY, MIN_FPS, MIN_QUALITY
from jiomosa.frames import hub as hub_module
from jiomosa.frames import pacer
from jiomosa.frames.hub import Frame, FrameHub
from jiomosa.frames.pacer import QUALITY_STEP, STALL_SLICE, Subscriber

W, H = 64, 48


# ----------------------------------------------------------------------------- helpers
async def until(condition: Callable[[], object], what: str, timeout: float = 3.0) -> None:
    """Wait (bounded) until ``condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def publish(hub: FrameHub) -> Frame:
    frame = hub.publish(distinct_jpeg(W, H), W, H)
    assert frame is not None
    return frame


def seqs(transport: FakeTransport) -> list[int]:
    return [frame.seq for frame, _ in transport.sent]


@contextlib.asynccontextmanager
async def publishing(hub: FrameHub, every: float = 0.02) -> AsyncIterator[list[Frame]]:
    """Publish a new picture every ``every`` seconds while the block runs."""
    frames: list[Frame] = []

    async def run() -> None:
        while True:
            frames.append(publish(hub))
            await asyncio.sleep(every)

    task = asyncio.create_task(run())
    try:
        yield frames
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class QualityChanges:
    """An ``on_quality_change`` callback that records (reason, quality) per call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def __call__(self, sub: Subscriber, reason: str) -> None:
        self.seen.append((reason, sub.quality))


class ShiftedClock:
    """Stands in for the pacer module's ``time``: real time plus jumps the test makes, so the
    3 s headroom hysteresis can pass without sleeping 3 s (the event loop keeps real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ShiftedClock:
    shifted = ShiftedClock()
    monkeypatch.setattr(pacer, "time", shifted)
    return shifted


@pytest.fixture
async def hubs() -> AsyncIterator[Callable[..., FrameHub]]:
    """Make hubs; every hub (and so every subscriber task) is closed after the test."""
    made: list[FrameHub] = []

    def make(source_quality: int = 80, first_seq: int = 1) -> FrameHub:
        hub = FrameHub(f"session-{len(made)}", source_quality, first_seq)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.close()


@pytest.fixture
def gated_reencode(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event,
                                                                      threading.Event]]:
    """Make re-encodes block until the test opens the gate: (entered, gate)."""
    entered, gate = threading.Event(), threading.Event()
    real = hub_module.reencode

    def slow(data: bytes, quality: int) -> bytes:
        entered.set()
        gate.wait(5.0)
        return real(data, quality)

    monkeypatch.setattr(hub_module, "reencode", slow)
    try:
        yield entered, gate
    finally:
        gate.set()  # never leave a worker thread blocked


# ----------------------------------------------------------------------------- the hub
async def test_publish_numbers_frames_and_drops_repeats(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs(source_quality=70, first_seq=5)
    assert hub.latest is None
    picture = jpeg(W, H, color=(1, 2, 3))

    first = hub.publish(picture, W, H)
    assert first is not None
    assert (first.seq, first.jpeg, first.width, first.height, first.quality) == (
        5, picture, W, H, 70)
    assert hub.latest is first

    # A byte-identical repeat (even as another bytes object) is dropped.
    assert hub.publish(picture, W, H) is None
    assert hub.publish(bytes(bytearray(picture)), W, H) is None
    assert hub.latest is first

    second = publish(hub)
    assert second.seq == 6
    assert hub.latest is second
    # The first picture again is a change relative to the latest: a new frame.
    third = hub.publish(picture, W, H)
    assert third is not None and third.seq == 7


async def test_image_never_reencodes_upwards(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs(source_quality=80)
    frame = publish(hub)
    assert await hub.image(frame, 80) is frame.jpeg
    assert await hub.image(frame, MAX_QUALITY) is frame.jpeg
    assert await hub.image(frame, 1000) is frame.jpeg


async def test_image_reencodes_once_and_shares_it(hubs: Callable[..., FrameHub],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hub_module.reencode

    def counting(data: bytes, quality: int) -> bytes:
        calls.append(quality)
        time.sleep(0.02)  # long enough for the callers to overlap
        return real(data, quality)

    monkeypatch.setattr(hub_module, "reencode", counting)
    hub = hubs(source_quality=80)
    frame = publish(hub)

    first, second, third = await asyncio.gather(
        hub.image(frame, 40), hub.image(frame, 40), hub.image(frame, 40))
    assert calls == [40]
    assert first is second is third
    assert first != frame.jpeg
    with Image.open(io.BytesIO(first)) as image:
        assert (image.format, image.size) == ("JPEG", (W, H))
    # Later callers get the same bytes without another encode.
    assert await hub.image(frame, 40) is first
    assert calls == [40]

    # A new frame: the old frame's variant is not served for it.
    newer = publish(hub)
    again = await hub.image(newer, 40)
    assert calls == [40, 40]
    assert again != first


async def test_image_base64_is_a_data_url(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs(source_quality=80)
    frame = publish(hub)
    data = await hub.image(frame, 80, "base64")
    prefix = b"data:image/jpeg;base64,"
    assert data.startswith(prefix)
    assert base64.b64decode(data[len(prefix):]) == frame.jpeg

    lower = await hub.image(frame, 30, "base64")
    assert lower.startswith(prefix)
    assert base64.b64decode(lower[len(prefix):]) == await hub.image(frame, 30)


async def test_wait_newer(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    started = time.monotonic()
    assert await hub.wait_newer(0, 0.05) is None
    assert 0.04 <= time.monotonic() - started < 2.0

    first = publish(hub)
    assert await asyncio.wait_for(hub.wait_newer(0, 5.0), 1.0) is first  # at once
    assert await hub.wait_newer(first.seq, 0.02) is None

    waiters = [asyncio.create_task(hub.wait_newer(first.seq, 10.0)) for _ in range(2)]
    await asyncio.sleep(0.02)
    assert not any(w.done() for w in waiters)
    second = publish(hub)
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [second, second]


async def test_listen_and_stop(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    got: list[Frame] = []
    stop = hub.listen(got.append)
    picture = distinct_jpeg(W, H)
    first = hub.publish(picture, W, H)
    assert hub.publish(picture, W, H) is None  # a repeat is no new frame
    second = publish(hub)
    relayed = Frame(second.seq + 1, distinct_jpeg(W, H), W, H, 80, time.time())
    hub.publish_frame(relayed)
    assert got == [first, second, relayed]

    stop()
    publish(hub)
    assert got == [first, second, relayed]
    stop()  # twice is harmless


async def test_close_wakes_waiters_and_stops_subscribers(
        hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    transport = FakeTransport()
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=80, adaptive=False)
    hub.add(sub)
    first = publish(hub)
    await until(lambda: len(transport.sent) == 1, "the first frame")
    task = sub._task
    assert task is not None
    got: list[Frame] = []
    hub.listen(got.append)
    waiter = asyncio.create_task(hub.wait_newer(first.seq, 30.0))
    await asyncio.sleep(0.02)
    assert not waiter.done()

    await asyncio.wait_for(hub.close(), 2.0)
    assert await asyncio.wait_for(waiter, 1.0) is None
    assert hub.closed
    assert hub.subscribers == {}
    assert task.done() and sub._task is None
    # A waiter that comes after the close does not wait either.
    assert await asyncio.wait_for(hub.wait_newer(first.seq, 30.0), 1.0) is None

    publish(hub)
    await asyncio.sleep(0.05)
    assert got == []
    assert seqs(transport) == [first.seq]


# ----------------------------------------------------------------------------- the pacer
async def test_the_current_picture_goes_out_at_once(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    frame = publish(hub)
    transport = FakeTransport()
    sub = Subscriber("c", hub, transport, fps=1, quality=80, adaptive=False)
    hub.add(sub)
    await until(lambda: transport.sent, "the current picture", timeout=1.0)
    assert transport.sent[0] == (frame, frame.jpeg)
    # Being woken without a newer frame sends nothing again.
    sub.wake()
    await asyncio.sleep(0.05)
    assert seqs(transport) == [frame.seq]
    assert sub.sent_seq == frame.seq and sub.frames_sent == 1


async def test_gcra_caps_the_frame_rate(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    transport = FakeTransport()
    sub = Subscriber("c", hub, transport, fps=10, quality=80, adaptive=False)
    hub.add(sub)
    published: list[Frame] = []
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        published.append(publish(hub))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.25)  # a frame held back by the cap goes out within one interval

    sent = seqs(transport)
    assert len(published) >= 30, "the publisher did not outrun the cap"
    # 1 s at 10 fps with a tolerance of one interval: 10 + the burst of 1 + the frame held
    # at the end; slowness only lowers the count.
    assert 9 <= len(sent) <= 12, sent
    assert sent == sorted(set(sent))
    assert sent[-1] == published[-1].seq  # the newest frame is the last one that went out
    assert sub.frames_sent == len(sent)
    assert sub.frames_sent + sub.frames_skipped == len(published)


class TimedTransport(FakeTransport):
    """Also records when each frame was sent."""

    def __init__(self, drain_delay: float = 0.0) -> None:
        super().__init__(drain_delay)
        self.times: list[float] = []

    async def send_frame(self, frame: Frame, image: bytes, sub: Subscriber) -> None:
        self.times.append(time.monotonic())
        await super().send_frame(frame, image, sub)


async def test_gcra_tolerates_one_early_frame(hubs: Callable[..., FrameHub]) -> None:
    """The tolerance is one interval: a frame right after another goes out at once (it is not
    held back), the one after that waits for the interval."""
    hub = hubs()
    transport = TimedTransport()
    sub = Subscriber("c", hub, transport, fps=2, quality=80, adaptive=False)
    hub.add(sub)
    publish(hub)
    await until(lambda: len(transport.sent) == 1, "the first frame")
    early = publish(hub)
    await until(lambda: len(transport.sent) == 2, "the early frame", timeout=0.3)
    assert transport.sent[1][0] is early

    held = publish(hub)
    await asyncio.sleep(0.15)
    assert len(transport.sent) == 2, "a second early frame was not held back"
    await until(lambda: len(transport.sent) == 3, "the held frame", timeout=2.0)
    assert transport.sent[2][0] is held
    assert transport.times[2] - transport.times[0] >= 0.45  # one interval (0.5 s) apart


async def test_under_the_cap_every_frame_goes_out(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    transport = FakeTransport()
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=80, adaptive=False)
    hub.add(sub)
    published = [publish(hub)]
    for _ in range(15):
        await asyncio.sleep(0.03)  # slower than 60 fps: nothing needs to be held back
        published.append(publish(hub))
    await until(lambda: sub.sent_seq == published[-1].seq, "the last frame")
    sent = seqs(transport)
    assert sent == sorted(set(sent))
    assert len(sent) >= len(published) - 2, (sent, [f.seq for f in published])
    assert sub.frames_sent + sub.frames_skipped == len(published)


async def test_latest_frame_wins(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    transport = FakeTransport()
    transport.hold = True  # the client takes the first frame, then nothing until released
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=80, adaptive=False)
    hub.add(sub)
    first = publish(hub)
    await until(lambda: len(transport.sent) == 1, "the first frame")

    backlog = []
    for _ in range(4):
        backlog.append(publish(hub))
        await asyncio.sleep(0.01)
    assert seqs(transport) == [first.seq], "sent while the previous frame had not drained"

    transport.release()
    await until(lambda: len(transport.sent) == 2, "the frame after the release")
    assert transport.sent[1][0] is backlog[-1]  # the newest, none of the intermediate ones
    assert sub.frames_skipped == 3

    last = publish(hub)
    await until(lambda: len(transport.sent) == 3, "the next frame")
    await asyncio.sleep(0.05)
    assert seqs(transport) == [first.seq, backlog[-1].seq, last.seq]
    assert sub.frames_sent == 3 and sub.frames_skipped == 3
    assert sub.stats()["framesSkipped"] == 3 and sub.stats()["framesSent"] == 3


async def test_slow_drain_lowers_adaptive_quality_only(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs(source_quality=80)
    fps, drain = 20, 0.15  # each frame takes 3x the 50 ms a frame may take at 20 fps
    adaptive_changes, manual_changes, fast_changes = (
        QualityChanges(), QualityChanges(), QualityChanges())
    slow = FakeTransport(drain_delay=drain)
    adaptive = Subscriber("adaptive", hub, slow, fps, 80, True,
                          on_quality_change=adaptive_changes)
    manual = Subscriber("manual", hub, FakeTransport(drain_delay=drain), fps, 80, False,
                        on_quality_change=manual_changes)
    manual.set_quality(60)
    fast = Subscriber("fast", hub, FakeTransport(), fps, 80, True,
                      on_quality_change=fast_changes)
    for sub in (adaptive, manual, fast):
        hub.add(sub)

    async with publishing(hub, every=0.02):
        await until(lambda: adaptive_changes.seen, "the adaptive client to lower quality")
        assert adaptive_changes.seen == [("congested", 80 - QUALITY_STEP)]
        assert adaptive.quality == 80 - QUALITY_STEP
        # The frames it sends from now on are re-encoded at the lower quality.
        after = len(slow.sent)
        await until(lambda: len(slow.sent) > after, "a frame at the lower quality")
        frame, image = slow.sent[-1]
        assert image == await hub.image(frame, 80 - QUALITY_STEP) != frame.jpeg

    assert manual.quality == 60 and manual.manual_quality == 60
    assert manual_changes.seen == []
    assert fast.quality == 80 and fast_changes.seen == []
    assert fast.frames_sent > adaptive.frames_sent


async def test_quality_climbs_back_after_congestion(hubs: Callable[..., FrameHub],
                                                    clock: ShiftedClock) -> None:
    hub = hubs(source_quality=80)
    changes = QualityChanges()
    transport = FakeTransport(drain_delay=0.15)
    sub = Subscriber("c", hub, transport, fps=20, quality=80, adaptive=True,
                     on_quality_change=changes)
    hub.add(sub)

    async with publishing(hub, every=0.02):
        await until(lambda: changes.seen, "congestion")
        assert changes.seen == [("congested", 70)]

        transport.drain_delay = 0.0  # the client keeps up again
        sent = sub.frames_sent
        await until(lambda: sub.frames_sent >= sent + 3, "fast frames")
        await asyncio.sleep(0.1)
        assert sub.quality == 70, "raised before 3 s without congestion"

        clock.advance(3.5)
        await until(lambda: len(changes.seen) == 2, "headroom")
        assert changes.seen[1] == ("headroom", 80)

        # At the source quality it stays there, however long the headroom.
        clock.advance(3.5)
        sent = sub.frames_sent
        await until(lambda: sub.frames_sent >= sent + 3, "more fast frames")
        await asyncio.sleep(0.05)
    assert sub.quality == 80 == hub.source_quality
    assert len(changes.seen) == 2


async def test_quality_rules(hubs: Callable[..., FrameHub], clock: ShiftedClock) -> None:
    """The adaptation rules, driven directly: 3 congestions within 1 s (or 1 stall) lower the
    quality by one step, at most once a second, never below MIN_QUALITY; 3 s without a change
    or congestion raise it by one step, never above the source quality."""
    hub = hubs(source_quality=80)
    sub = Subscriber("c", hub, FakeTransport(), fps=10, quality=80, adaptive=True)

    now = clock.monotonic()
    sub._congestion(now)
    sub._congestion(now + 0.1)
    assert sub.quality == 80
    sub._congestion(now + 0.2)
    assert sub.quality == 70

    clock.advance(0.5)  # 3 congestions, but the last change is only 0.5 s old
    for _ in range(3):
        sub._congestion(clock.monotonic())
    assert sub.quality == 70
    clock.advance(0.6)
    sub._congestion(clock.monotonic())
    assert sub.quality == 60

    clock.advance(1.1)
    sub._congestion(clock.monotonic(), stalled=True)  # one stall is enough
    assert sub.quality == 50

    # No raise while the last change or congestion is recent.
    clock.advance(2.0)
    sub._maybe_raise(clock.monotonic())
    assert sub.quality == 50
    clock.advance(1.1)
    sub._congested.append(clock.monotonic() - 1.0)
    sub._maybe_raise(clock.monotonic())
    assert sub.quality == 50
    clock.advance(2.1)
    sub._maybe_raise(clock.monotonic())
    assert sub.quality == 60
    for expected in (70, 80):
        sub._maybe_raise(clock.monotonic())
        assert sub.quality == expected - QUALITY_STEP  # the last raise is too recent
        clock.advance(3.1)
        sub._maybe_raise(clock.monotonic())
        assert sub.quality == expected
    clock.advance(3.1)
    sub._maybe_raise(clock.monotonic())
    assert sub.quality == 80  # the source quality is the ceiling

    floor = Subscriber("f", hub, FakeTransport(), fps=10, quality=MIN_QUALITY, adaptive=True)
    floor._congestion(clock.monotonic(), stalled=True)
    assert floor.quality == MIN_QUALITY

    manual = Subscriber("m", hub, FakeTransport(), fps=10, quality=80, adaptive=False)
    manual.set_quality(40)
    manual._congestion(clock.monotonic(), stalled=True)
    clock.advance(10)
    manual._maybe_raise(clock.monotonic())
    assert manual.quality == 40


async def test_stalled_transport_counts_as_congestion(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs(source_quality=80)
    changes, manual_changes = QualityChanges(), QualityChanges()
    stalled, stalled_manual = FakeTransport(), FakeTransport()
    stalled.hold = stalled_manual.hold = True  # drains never complete until released
    sub = Subscriber("c", hub, stalled, fps=10, quality=80, adaptive=True,
                     on_quality_change=changes)
    manual = Subscriber("m", hub, stalled_manual, fps=10, quality=80, adaptive=False,
                        on_quality_change=manual_changes)
    manual.set_quality(80)
    hub.add(sub)
    hub.add(manual)
    first = publish(hub)
    await until(lambda: stalled.sent and stalled_manual.sent, "the first frame")
    sent_at = time.monotonic()

    await until(lambda: changes.seen, "the stall to lower quality")
    assert time.monotonic() - sent_at >= STALL_SLICE * 0.8
    assert changes.seen == [("congested", 70)]
    assert manual.quality == 80 and manual_changes.seen == []

    # Nothing else went out meanwhile; once the client takes frames again, the newest goes.
    newer = publish(hub)
    assert seqs(stalled) == [first.seq]
    stalled.release()
    stalled_manual.release()
    await until(lambda: len(stalled.sent) == 2 and len(stalled_manual.sent) == 2,
                "the frame after the stall")
    assert stalled.sent[1][0] is newer
    assert stalled.sent[1][1] == await hub.image(newer, 70)


async def test_a_frame_that_never_drains_is_written_off(
        hubs: Callable[..., FrameHub], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacer, "STALL_SLICE", 0.05)
    monkeypatch.setattr(pacer, "DRAIN_GIVE_UP", 0.3)
    hub = hubs()
    transport = FakeTransport()
    transport.hold = True  # never released
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=80, adaptive=False)
    hub.add(sub)
    publish(hub)
    await until(lambda: transport.sent, "the first frame")
    sent_at = time.monotonic()
    newer = publish(hub)
    await until(lambda: len(transport.sent) == 2, "the frame after the give-up")
    assert time.monotonic() - sent_at >= 0.25
    assert transport.sent[1][0] is newer


async def test_stop_ends_the_task(hubs: Callable[..., FrameHub]) -> None:
    hub = hubs()
    transport = FakeTransport()
    transport.hold = True  # stop it while it waits for a drain
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=80, adaptive=False)
    hub.add(sub)
    publish(hub)
    await until(lambda: transport.sent, "the first frame")
    task = sub._task
    assert task is not None and not task.done()

    await asyncio.wait_for(sub.stop(), 1.0)
    assert task.done() and sub._task is None
    await sub.stop()  # twice is harmless

    transport.release()
    publish(hub)
    sub.wake()
    await asyncio.sleep(0.05)
    assert len(transport.sent) == 1
    assert sub.frames_skipped == 0  # a stopped client does not count what it misses


@pytest.mark.parametrize(("asked", "expected"), [
    (0, MIN_FPS), (-5, MIN_FPS), (MIN_FPS, MIN_FPS), (24, 24), (MAX_FPS, MAX_FPS),
    (MAX_FPS + 1, MAX_FPS), (10_000, MAX_FPS)])
async def test_set_fps_clamps(hubs: Callable[..., FrameHub], asked: int, expected: int) -> None:
    sub = Subscriber("c", hubs(), FakeTransport(), fps=10, quality=80)
    sub.set_fps(asked)
    assert sub.fps == expected


@pytest.mark.parametrize(("asked", "expected"), [
    (0, MIN_QUALITY), (MIN_QUALITY - 1, MIN_QUALITY), (MIN_QUALITY, MIN_QUALITY), (55, 55),
    (MAX_QUALITY, MAX_QUALITY), (MAX_QUALITY + 1, MAX_QUALITY), (1000, MAX_QUALITY)])
async def test_set_quality_clamps(hubs: Callable[..., FrameHub], asked: int,
                                  expected: int) -> None:
    sub = Subscriber("c", hubs(), FakeTransport(), fps=10, quality=80)
    assert sub.manual_quality is None
    sub.set_quality(asked)
    assert sub.quality == sub.manual_quality == expected


# ----------------------------------------------------------------------------- found bugs
async def test_a_frame_replaced_while_being_sent_is_not_counted_as_skipped(
        hubs: Callable[..., FrameHub],
        gated_reencode: tuple[threading.Event, threading.Event]) -> None:
    """framesSkipped / jiomosa_frames_skipped_total count frames a client *never got*. A frame
    replaced while the pacer is still encoding (or writing) it is delivered all the same."""
    entered, gate = gated_reencode
    hub = hubs(source_quality=80)
    transport = FakeTransport()
    sub = Subscriber("c", hub, transport, fps=MAX_FPS, quality=50, adaptive=False)
    hub.add(sub)
    first = publish(hub)
    await until(entered.is_set, "the re-encode of the first frame")
    second = publish(hub)  # arrives while the first is being encoded for this client
    gate.set()
    await until(lambda: len(transport.sent) == 2, "both frames")
    assert seqs(transport) == [first.seq, second.seq]
    assert sub.frames_sent == 2
    assert sub.frames_skipped == 0, "a delivered frame was counted as skipped"


async def test_stopping_one_client_mid_reencode_leaves_the_others_streaming(
        hubs: Callable[..., FrameHub],
        gated_reencode: tuple[threading.Event, threading.Event]) -> None:
    """Two clients at one quality share one re-encode. Stopping (cancelling) the one that
    started it must not cancel the other, which awaits the shared result."""
    entered, gate = gated_reencode
    hub = hubs(source_quality=80)
    leaving, staying = FakeTransport(), FakeTransport()
    a = Subscriber("a", hub, leaving, fps=MAX_FPS, quality=50, adaptive=False)
    b = Subscriber("b", hub, staying, fps=MAX_FPS, quality=50, adaptive=False)
    hub.add(a)
    hub.add(b)
    publish(hub)
    await until(entered.is_set, "the shared re-encode")
    await asyncio.sleep(0.05)  # both clients now wait for it

    await asyncio.wait_for(hub.remove("a"), 1.0)
    gate.set()
    newer = publish(hub)
    task = b._task
    assert task is not None
    await until(lambda: (staying.sent and staying.sent[-1][0] is newer) or task.done(),
                "the staying client's next frame", timeout=2.0)
    assert not task.done(), "the staying client's task ended when the other client stopped"
    assert staying.sent[-1][0] is newer
