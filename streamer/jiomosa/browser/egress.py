"""An egress proxy for local browsers: every connection Chromium opens goes through it.

CDP ``Fetch`` pauses HTTP requests for the URL policy, but not the WebSockets a page opens,
and Chromium resolves host names again after our check (DNS rebinding). With
``--proxy-server`` pointing here (and ``<-loopback>`` so that loopback is proxied too), this
proxy resolves each destination itself, refuses it unless every address is allowed by the same
``UrlPolicy``, and connects to the address it checked.

- HTTPS and WebSockets arrive as ``CONNECT``: one tunnel, one checked destination; what follows
  is opaque and goes only there.
- Plain HTTP arrives as absolute-form requests: **one request per connection**. The request is
  parsed with h11 (head and body framing), re-serialised to the upstream in origin form with
  ``Connection: close``, and the answer is sent back with ``Connection: close``; nothing the
  client sends after the first request's end (a pipelined request, bytes past its
  ``Content-Length``) is ever forwarded. Chromium opens a new connection, checked again, for the
  next request. The raw pipe this replaces forwarded a pipelined second request, unchecked, to
  the first host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import h11

from jiomosa.core.tasks import TaskSet
from jiomosa.core.urlpolicy import IPAddress, UrlPolicy, literal_ip, resolve

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536

# Hop-by-hop headers (RFC 9110 7.6.1) and the body framing, which we set ourselves.
_DROPPED_REQUEST_HEADERS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"upgrade", b"host", b"content-length",
    b"transfer-encoding", b"expect",
})
_DROPPED_RESPONSE_HEADERS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"trailer",
    b"upgrade",
})


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            request = await asyncio.wait_for(_next_event(client, reader), HEAD_TIMEOUT)
            if not isinstance(request, h11.Request):
                raise _Refused(400, "bad request")
            if request.method == b"CONNECT":
                await self._tunnel(client, reader, writer, request)
            else:
                await self._forward(client, reader, writer, request)
        except _Refused as exc:
            await _answer(writer, exc.status, exc.reason)
        except (h11.ProtocolError, TimeoutError):
            await _answer(writer, 400, "bad request")
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _tunnel(self, client: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, request: h11.Request) -> None:
        host, _, port_text = request.target.decode("ascii", "replace").rpartition(":")
        up_reader, up_writer = await self._open(host.strip("[]"), port_text)
        # Bytes the client sent after the CONNECT head belong to the tunnel, to the checked
        # destination only.
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        if client.trailing_data[0]:
            up_writer.write(client.trailing_data[0])
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def _forward(self, client: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, request: h11.Request) -> None:
        parts = urlsplit(request.target.decode("ascii", "replace"))
        try:
            port = parts.port or 80
        except ValueError:
            raise _Refused(400, "bad port") from None
        if parts.scheme != "http" or not parts.hostname:
            raise _Refused(400, "only absolute http:// requests or CONNECT")
        up_reader, up_writer = await self._open(parts.hostname, str(port))
        try:
            await self._exchange(client, reader, writer, request, parts.netloc.rpartition("@")[2],
                                 (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                                 up_reader, up_writer)
        finally:
            up_writer.close()

    async def _exchange(self, client: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, request: h11.Request, authority: str,
                        path: str, up_reader: asyncio.StreamReader,
                        up_writer: asyncio.StreamWriter) -> None:
        """One request up (re-framed by h11), one response down, then the end."""
        upstream = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        headers = [(k, v) for k, v in request.headers if k not in _DROPPED_REQUEST_HEADERS]
        framing = dict(request.headers)
        if b"transfer-encoding" in framing:
            headers.append((b"Transfer-Encoding", b"chunked"))  # h11 allows nothing else
        elif b"content-length" in framing:
            headers.append((b"Content-Length", framing[b"content-length"]))
        headers += [(b"Host", authority.encode("ascii")), (b"Connection", b"close")]
        up_writer.write(upstream.send(h11.Request(
            method=request.method, target=path.encode("ascii"), headers=headers)) or b"")
        if client.they_are_waiting_for_100_continue:
            # We forward the body whole before any answer, so we ask for it ourselves.
            writer.write(client.send(h11.InformationalResponse(status_code=100, headers=[]))
                         or b"")
        while True:
            event = await _next_event(client, reader)
            if isinstance(event, h11.Data):
                up_writer.write(upstream.send(h11.Data(data=event.data)) or b"")
                await up_writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                up_writer.write(upstream.send(h11.EndOfMessage()) or b"")
                await up_writer.drain()
                break
            else:
                raise _Refused(400, "bad request")
        # The request is complete; the client stream is not read again.
        try:
            await self._relay_response(upstream, up_reader, client, writer)
        except h11.ProtocolError:
            if client.our_state is h11.IDLE or client.our_state is h11.SEND_RESPONSE:
                raise _Refused(502, "bad answer from upstream") from None

    async def _relay_response(self, upstream: h11.Connection, up_reader: asyncio.StreamReader,
                              client: h11.Connection, writer: asyncio.StreamWriter) -> None:
        while True:
            event = await _next_event(upstream, up_reader)
            if isinstance(event, h11.InformationalResponse):
                writer.write(client.send(event) or b"")
            elif isinstance(event, h11.Response):
                headers = [(k, v) for k, v in event.headers
                           if k not in _DROPPED_RESPONSE_HEADERS]
                writer.write(client.send(h11.Response(
                    status_code=event.status_code, reason=event.reason,
                    headers=[*headers, (b"Connection", b"close")])) or b"")
            elif isinstance(event, h11.Data):
                writer.write(client.send(h11.Data(data=event.data)) or b"")
            elif isinstance(event, h11.EndOfMessage):
                writer.write(client.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                return
            else:  # ConnectionClosed before the answer ended
                raise h11.RemoteProtocolError("upstream closed early")
            await writer.drain()

    async def _open(self, host: str, port_text: str
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the checked address of ``host``; raise _Refused."""
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _Refused(400, "bad port")
        address = await self._allowed_address(host)
        if address is None:
            self.refused += 1
            log.info("egress refused to %s", host)
            raise _Refused(403, "blocked by the URL policy")
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(str(address), int(port_text), limit=MAX_HEAD),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            raise _Refused(502, "cannot connect") from None

    async def _allowed_address(self, host: str) -> IPAddress | None:
        """The address to connect to, if the policy allows every address of ``host``."""
        host = host.rstrip(".").lower()
        if not host:
            return None
        verdict = self._policy.host_allowed_by_name(host)
        if verdict is False:
            return None
        literal = literal_ip(host)
        if literal is not None:  # decided above, and no lookup for a literal
            return literal
        addresses = await resolve(host)
        if not addresses:
            return None
        if verdict is None and not all(self._policy.ip_allowed(ip) for ip in addresses):
            return None
        return addresses[0]


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    """The next h11 event, reading from ``reader`` as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(READ_SIZE))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
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
