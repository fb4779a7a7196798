"""A real DNS server on loopback UDP for tests: answers the names it is given, never answers
the names it is told to ignore (a black-holed authority), and says NXDOMAIN to the rest.

Only what a stub resolver asks is understood: one question, class IN, types A and AAAA.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
from collections import Counter
from typing import Self

A, AAAA = 1, 28


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels).lower(), offset
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length


class FakeDns(asyncio.DatagramProtocol):
    """Start with :meth:`start` (in its own thread and loop, so that it answers even while the
    test's loop is busy); ``address`` is ``ip:port`` for ``JIOMOSA_DNS_SERVERS``."""

    def __init__(self, answers: dict[str, list[str]], silent: set[str] | None = None,
                 ttl: int = 60, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.answers = {k.lower(): v for k, v in answers.items()}
        self.silent = {s.lower() for s in (silent or set())}
        self.ttl = ttl
        self.queries: Counter[str] = Counter()
        self.port = port
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fake-dns")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        future.result(10)
        return self

    async def _open(self) -> None:
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port), family=socket.AF_INET)
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    def stop(self) -> None:
        if self._transport is not None:
            self._loop.call_soon_threadsafe(self._transport.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        try:
            qid, _flags, qdcount = struct.unpack("!HHH", data[:6])
            name, end = _read_name(data, 12)
            qtype, _qclass = struct.unpack("!HH", data[end:end + 4])
        except (struct.error, IndexError):
            return
        self.queries[name] += 1
        if qdcount != 1 or name in self.silent or any(name.endswith("." + s)
                                                       for s in self.silent):
            return  # a black hole: the client can only time out
        question = data[12:end + 4]
        records = b""
        count = 0
        known = name in self.answers
        for ip_text in self.answers.get(name, []):
            ip = ipaddress.ip_address(ip_text)
            rtype = A if ip.version == 4 else AAAA
            if rtype != qtype:
                continue
            # Name as a pointer to the question (offset 12).
            records += struct.pack("!HHHIH", 0xC00C, rtype, 1, self.ttl, len(ip.packed))
            records += ip.packed
            count += 1
        rcode = 0 if known else 3  # NXDOMAIN for names we do not know
        flags = 0x8000 | 0x0400 | 0x0100 | 0x0080 | rcode  # response, AA, RD, RA
        header = struct.pack("!HHHHHH", qid, flags, 1, count, 0, 0)
        assert self._transport is not None
        self._transport.sendto(header + question + records, addr)
