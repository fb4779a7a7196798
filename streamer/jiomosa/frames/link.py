"""How fast a client's link is, and how much may be on its way to it at once.

Per delta client: its throughput and round trip, read from the kernel's own estimates for the
client's TCP connection (``TCP_INFO``: smoothed and minimum RTT, delivery rate, bytes in
flight and not yet sent). Those count what the *client* acknowledged, not what left this
process, which is what keeps a standing queue out of a slow link: the next update goes out
only once what is still unacknowledged fits about one bandwidth-delay product (``window``),
so a client never has more than one update queued behind the link; frames in between are
skipped (the next update is the union of their changes).

Without ``TCP_INFO`` (not Linux, Socket.IO long-polling) the estimate falls back to how long
the transport took to drain each message, as the full-frame pacer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TCP_INFO = getattr(socket, "TCP_INFO", None)
MIN_WINDOW = 8 * 1024
"""Bytes always allowed in flight (a few segments: a tiny BDP must not stall small updates)."""
UNKNOWN_WINDOW = 64 * 1024
"""In flight while the link was never seen saturated (it is faster than what we send)."""
POLL = (0.002, 0.02)
GIVE_UP = 30.0


@dataclass(frozen=True)
class TcpSample:
    rtt: float
    """Smoothed round trip, seconds."""
    min_rtt: float
    in_flight: int
    """Bytes sent and not yet acknowledged by the peer, plus bytes the kernel holds unsent."""
    acked: int
    """Bytes the peer acknowledged since the connection opened."""
    delivery_rate: float
    """The kernel's latest delivery rate sample, bytes/s."""
    app_limited: bool
    """That sample was taken while we had nothing to send: a lower bound only."""


def tcp_sample(sock: Any) -> TcpSample | None:
    """Read ``TCP_INFO`` (struct tcp_info of linux/tcp.h) of a connected socket."""
    if TCP_INFO is None or sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 232)
    except (OSError, AttributeError):
        return None
    if len(raw) < 168:
        return None
    flags = raw[7]
    mss, unacked = struct.unpack_from("=I", raw, 16)[0], struct.unpack_from("=I", raw, 24)[0]
    rtt_us, = struct.unpack_from("=I", raw, 68)
    acked, = struct.unpack_from("=Q", raw, 120)
    notsent, min_rtt_us = struct.unpack_from("=II", raw, 144)
    rate, = struct.unpack_from("=Q", raw, 160)
    in_flight = unacked * mss
    if len(raw) >= 216:
        sent, retrans = struct.unpack_from("=QQ", raw, 200)
        in_flight = max(0, sent - retrans - acked)
    return TcpSample(rtt_us / 1e6, (min_rtt_us or rtt_us) / 1e6, in_flight + notsent, acked,
                     float(rate), bool(flags & 1))


class Link:
    """One client's link: throughput, RTT, and the wait for room to send."""

    def __init__(self, sock: Callable[[], Any], queued: Callable[[], int]) -> None:
        self._sock = sock
        self._queued = queued
        self.rate = 0.0
        """Estimated throughput, bytes/s (0: never saturated, so unknown but ample)."""
        self.rtt = 0.0
        self.min_rtt = 0.0
        self.kernel = True

    def window(self) -> int:
        """Bytes that may be unacknowledged at once: about one bandwidth-delay product."""
        if not self.rate:
            return UNKNOWN_WINDOW
        return max(MIN_WINDOW, int(1.5 * self.rate * max(self.min_rtt, 0.001)))

    def outstanding(self) -> int | None:
        """Bytes handed over and not yet acknowledged by the client (None if unknown)."""
        sample = tcp_sample(self._sock())
        if sample is None:
            self.kernel = False
            return None
        self.kernel = True
        self._learn(sample)
        return sample.in_flight + self._queued()

    def _learn(self, s: TcpSample) -> None:
        self.rtt, self.min_rtt = s.rtt, s.min_rtt
        if not s.app_limited and s.delivery_rate > 0:
            sample = s.delivery_rate
            self.rate = sample if not self.rate else 0.8 * self.rate + 0.2 * sample
        elif self.rate and s.delivery_rate > self.rate:
            self.rate = s.delivery_rate  # faster than we thought, even while idle

    def learn_drain(self, size: int, seconds: float) -> None:
        """Without TCP_INFO: ``size`` bytes took ``seconds`` to leave the transport."""
        if seconds > 0.002:
            sample = size / seconds
            self.rate = sample if not self.rate else 0.7 * self.rate + 0.3 * sample

    async def room(self, drained: Callable[[], Any]) -> None:
        """Return once the next update may go: the transport drained what it holds and the
        client acknowledged all but about one window of it."""
        started = time.monotonic()
        drain = asyncio.ensure_future(drained())
        try:
            await asyncio.wait_for(asyncio.shield(drain), GIVE_UP)
        except TimeoutError:
            return
        finally:
            drain.cancel()
            with contextlib.suppress(BaseException):
                await drain
        delay = POLL[0]
        while time.monotonic() - started < GIVE_UP:
            outstanding = self.outstanding()
            if outstanding is None or outstanding <= self.window():
                return
            await asyncio.sleep(delay)
            delay = min(POLL[1], max(POLL[0], self.rtt / 4, delay * 1.5))

    def quality(self, ceiling: int) -> int:
        """The JPEG quality this link affords: the source's while it carries 2 Mbit/s or is
        never saturated; down to 50 around 256 kbit/s (text costs ~35 % less at 50)."""
        if not self.rate or self.rate >= 250_000:
            return ceiling
        if self.rate >= 120_000:
            return min(ceiling, 70)
        if self.rate >= 60_000:
            return min(ceiling, 60)
        return min(ceiling, 50)
