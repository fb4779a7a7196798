"""Network stand-ins for the egress and URL-policy tests: extra addresses on the loopback
interface (the way the review reproduced a fake metadata server on ``64:ff9b:1::a9fe:a9fe``) and
a lenient HTTP server that keeps every connection alive and answers every request it reads,
recording each one: a recorded request on a blocked address is an SSRF hole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Test runs on a shared machine must not add and remove each other's addresses: the 16 bits
# after the prefix are this process's.
_OWN = f"{os.getpid() & 0xFFFF:x}"
LOCAL_NAT64_METADATA = f"64:ff9b:1:{_OWN}::a9fe:a9fe"  # local-use NAT64 of 169.254.169.254
GLOBAL_OWN_ADDRESS = f"2001:db9:{_OWN}::77"  # a global address, made this machine's own


@contextlib.contextmanager
def loopback_address(ip: str) -> Iterator[str]:
    """Add ``ip`` to ``lo`` for the duration (root with CAP_NET_ADMIN; skips otherwise)."""
    ip_tool = shutil.which("ip")
    if ip_tool is None or os.geteuid() != 0:
        pytest.skip("adding a loopback address needs root and iproute2")
    v6 = ":" in ip
    # nodad: an IPv6 address is otherwise "tentative" (not bindable) for a moment.
    added = subprocess.run([ip_tool, "addr", "add", f"{ip}/{128 if v6 else 32}", "dev", "lo",
                            *(["nodad"] if v6 else [])], capture_output=True, text=True)
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.skip(f"cannot add {ip} to lo: {added.stderr.strip()}")
    prefix = "128" if v6 else "32"
    try:
        deadline = time.monotonic() + 5
        while not _bindable(ip):
            assert time.monotonic() < deadline, f"{ip} never became usable"
            time.sleep(0.01)
        yield ip
    finally:
        if added.returncode == 0:
            subprocess.run([ip_tool, "addr", "del", f"{ip}/{prefix}", "dev", "lo"],
                           capture_output=True)


def _bindable(ip: str) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


@dataclass
class Seen:
    """One request the lenient server read."""

    local: str  # the address it arrived on
    method: str
    path: str
    host: str
    body: bytes


class LenientServer:
    """HTTP/1.1 on several addresses, one port: never closes a connection on its own, answers
    pipelined requests in turn (as many embedded servers and caches do), records them all."""

    def __init__(self, title: str = "lenient") -> None:
        self.title = title
        self.seen: list[Seen] = []
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self, *hosts: str) -> LenientServer:
        for host in hosts:
            server = await asyncio.start_server(self._serve, host, self.port)
            self.port = int(server.sockets[0].getsockname()[1])
            self._servers.append(server)
        return self

    def url(self, host: str, path: str) -> str:
        return f"http://[{host}]:{self.port}{path}" if ":" in host else (
            f"http://{host}:{self.port}{path}")

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = str(writer.get_extra_info("sockname")[0])
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (h.partition(":") for h in lines[1:] if h)}
                body = b""
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        chunk = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += chunk[:-2]
                elif "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                self.seen.append(Seen(local, method, path, headers.get("host", ""), body))
                page = (f"<!doctype html><title>{self.title}</title>{method} {path} "
                        f"{len(body)}").encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(page), page))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError,
                asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
