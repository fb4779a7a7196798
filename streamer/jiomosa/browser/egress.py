"""An egress proxy for local browsers: every connection Chromium opens goes through it.

CDP ``Fetch`` pauses HTTP requests for the URL policy, but not the WebSockets a page opens,
and Chromium resolves host names again after our check (DNS rebinding). With
``--proxy-server`` pointing here (and ``<-loopback>`` so that loopback is proxied too), this
proxy resolves each destination itself, refuses it unless every address is allowed by the same
``UrlPolicy``, and connects to the address it checked. HTTPS and WebSockets arrive as
``CONNECT``; plain HTTP as absolute-form requests, forwarded one per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

from jiomosa.core.tasks import TaskSet
from jiomosa.core.urlpolicy import IPAddress, UrlPolicy, resolve

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0


class EgressProxy:
    """A loopback HTTP proxy that enforces the URL policy at connect time."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._server: asyncio.Server | None = None
        self._tasks = TaskSet("egress")
        self.port = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chrome_args(self) -> tuple[str, ...]:
        # <-loopback> removes Chromium's implicit bypass of localhost/127.0.0.1.
        return (f"--proxy-server={self.url}", "--proxy-bypass-list=<-loopback>")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0,
                                                  limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.spawn(self._serve(reader, writer), "egress-connection")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await _answer(writer, 400, "bad request")
            return
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            await self._tunnel(reader, writer, host.strip("[]"), port_text, b"")
            return
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            await _answer(writer, 400, "only absolute http:// requests or CONNECT")
            return
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = [h for h in lines[1:] if h and not h.lower().startswith(
            ("proxy-", "connection:", "keep-alive:"))]
        request = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close",
                               "", ""]).encode("latin-1")
        await self._tunnel(reader, writer, parts.hostname, str(parts.port or 80), request)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str, port_text: str, first: bytes) -> None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            await _answer(writer, 400, "bad port")
            return
        address = await self._allowed_address(host)
        if address is None:
            self.refused += 1
            log.info("egress refused to %s", host)
            await _answer(writer, 403, "blocked by the URL policy")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(str(address), int(port_text)), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            await _answer(writer, 502, "cannot connect")
            return
        if first:
            up_writer.write(first)
        else:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _allowed_address(self, host: str) -> IPAddress | None:
        """The address to connect to, if the policy allows every address of ``host``."""
        host = host.rstrip(".").lower()
        verdict = self._policy.host_allowed_by_name(host)
        if verdict is False:
            return None
        addresses = await resolve(host)
        if not addresses:
            return None
        if verdict is None and not all(self._policy.ip_allowed(ip) for ip in addresses):
            return None
        return addresses[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = reason.encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
