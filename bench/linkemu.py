"""A mobile link in user space, for kernels without ``sch_netem`` (bench/link.py).

    python3 bench/linkemu.py NETNS_A ADDR_A NETNS_B ADDR_B RATE_BPS DELAY_MS [LIMIT_PACKETS]

Creates one TUN device in each of two network namespaces (``ip netns add``), gives them the
point-to-point addresses ADDR_A <-> ADDR_B and carries every IP packet between them as
``tc qdisc add dev X root netem rate RATE delay DELAY limit LIMIT`` would on both ends of a
veth pair: each direction serialises packets one after another at RATE_BPS bits/s, then
holds each for DELAY_MS, and drops what arrives when LIMIT_PACKETS (netem's default, 1000)
are already on their way. Packets are never reordered. TCP runs end to end through it (no
proxy), so the streamer sees the link's real pacing, queueing and losses.

Prints ``ready`` once both devices are up; on SIGTERM/SIGINT prints per direction the
packets and bytes carried and dropped, the most packets on their way at once and the longest
a packet waited for the wire (the link's queue), and exits (the devices go with it).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
DEVICE = "jmlink0"
MTU = 1500


def open_tun(netns: str) -> int:
    """A TUN device named DEVICE in ``netns``: a device belongs to the namespace of the
    process that opens /dev/net/tun, so this thread enters it for the open and comes back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(Path("/run/netns") / netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", DEVICE.encode(),
                                                   IFF_TUN | IFF_NO_PI))
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)
        os.close(target)
    return fd


def configure(netns: str, local: str, peer: str) -> None:
    for args in (["addr", "add", local, "peer", peer, "dev", DEVICE],
                 ["link", "set", DEVICE, "mtu", str(MTU), "up"]):
        subprocess.run(["ip", "-n", netns, *args], check=True)


class Direction:
    """One way of the link: a serialiser at ``rate`` bits/s, then a fixed delay."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out_fd: int, rate: float,
                 delay: float, limit: int) -> None:
        self.loop = loop
        self.out_fd = out_fd
        self.rate = rate
        self.delay = delay
        self.limit = limit
        self.busy_until = 0.0  # when the packets already accepted have been serialised
        self.in_flight = 0
        self.packets = self.bytes = self.dropped = 0
        self.peak_in_flight = 0
        self.peak_wait = 0.0  # longest a packet queued before its turn on the wire

    def accept(self, packet: bytes) -> None:
        if self.in_flight >= self.limit:
            self.dropped += 1
            return
        now = self.loop.time()
        self.peak_wait = max(self.peak_wait, self.busy_until - now)
        self.busy_until = max(now, self.busy_until) + len(packet) * 8 / self.rate
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.loop.call_at(self.busy_until + self.delay, self.deliver, packet)

    def deliver(self, packet: bytes) -> None:
        self.in_flight -= 1
        try:
            os.write(self.out_fd, packet)
        except OSError as e:  # the receiving stack is full: the packet is lost, as on a link
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                raise
            self.dropped += 1
            return
        self.packets += 1
        self.bytes += len(packet)


def pump(in_fd: int, way: Direction) -> None:
    while True:
        try:
            packet = os.read(in_fd, 65536)
        except BlockingIOError:
            return
        way.accept(packet)


async def run(argv: list[str]) -> None:
    ns_a, addr_a, ns_b, addr_b = argv[:4]
    rate, delay = float(argv[4]), float(argv[5]) / 1000
    limit = int(argv[6]) if len(argv) > 6 else 1000
    fd_a, fd_b = open_tun(ns_a), open_tun(ns_b)
    configure(ns_a, addr_a, addr_b)
    configure(ns_b, addr_b, addr_a)
    loop = asyncio.get_running_loop()
    a_to_b = Direction(loop, fd_b, rate, delay, limit)
    b_to_a = Direction(loop, fd_a, rate, delay, limit)
    loop.add_reader(fd_a, pump, fd_a, a_to_b)
    loop.add_reader(fd_b, pump, fd_b, b_to_a)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for name, way in ((f"{ns_a}->{ns_b}", a_to_b), (f"{ns_b}->{ns_a}", b_to_a)):
        print(f"{name}: {way.packets} packets, {way.bytes} bytes, {way.dropped} dropped, "
              f"at most {way.peak_in_flight} packets on the way, longest queue wait "
              f"{way.peak_wait:.2f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    asyncio.run(run(sys.argv[1:]))
