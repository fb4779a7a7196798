"""The egress proxy local browsers connect through, over real sockets: it refuses every
destination the URL policy refuses (IPv6 forms that embed a private IPv4 included), forwards
exactly one checked request per plain-HTTP connection (a pipelined or smuggled second request
never leaves), and tunnels a CONNECT to the one address it checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from helpers import PAGE_HOST, TRAP_HOST
from netfixtures import (
    GLOBAL_OWN_ADDRESS,
    LOCAL_NAT64_METADATA,
    LenientServer,
    loopback_address,
)

from jiomosa.browser.egress import EgressProxy
from jiomosa.core.urlpolicy import UrlPolicy


@pytest.fixture
async def proxy() -> AsyncIterator[EgressProxy]:
    egress = EgressProxy(UrlPolicy.from_allow_list([PAGE_HOST]))
    await egress.start()
    yield egress
    await egress.stop()


@pytest.fixture
async def server() -> AsyncIterator[LenientServer]:
    """The same lenient server on the allowed test address and on the trap address."""
    srv = await LenientServer().listen(PAGE_HOST, TRAP_HOST)
    yield srv
    await srv.close()


async def exchange(proxy: EgressProxy, data: bytes, deadline: float = 10.0,
                   until: bytes = b"") -> bytes:
    """Send ``data`` to the proxy; everything it answers until it closes, ``until`` arrives,
    or the deadline passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(data)
    await writer.drain()
    out = b""
    end = time.monotonic() + deadline
    try:
        while (left := end - time.monotonic()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if until and until in out:
                break
    except ConnectionError:
        pass
    writer.close()
    return out


def get(url: str, host: str, extra: str = "") -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def test_a_pipelined_second_request_never_leaves(
        proxy: EgressProxy, server: LenientServer) -> None:
    """Second request to the trap address, pipelined behind an allowed one: it was piped raw
    to the first host, which (keeping connections alive as many servers do) answered it."""
    allowed = server.url(PAGE_HOST, "/first")
    blocked = server.url(TRAP_HOST, "/secret-pipelined")
    answer = await exchange(proxy, get(allowed, f"{PAGE_HOST}:{server.port}")
                            + get(blocked, f"{TRAP_HOST}:{server.port}"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"GET /first" in answer
    assert server.paths() == ["/first"], server.seen
    assert b"secret" not in answer


async def test_a_request_smuggled_in_a_body_never_leaves(
        proxy: EgressProxy, server: LenientServer) -> None:
    """Bytes after the first request's body (by its Content-Length) are not forwarded."""
    smuggled = f"GET /secret-smuggled HTTP/1.1\r\nHost: {TRAP_HOST}\r\n\r\n"
    first = (f"POST {server.url(PAGE_HOST, '/form')} HTTP/1.1\r\n"
             f"Host: {PAGE_HOST}:{server.port}\r\nContent-Length: 4\r\n\r\nabcd").encode()
    answer = await exchange(proxy, first + smuggled.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert [(s.method, s.path, s.body) for s in server.seen] == [("POST", "/form", b"abcd")]


async def test_one_request_per_connection_and_the_client_is_told(
        proxy: EgressProxy, server: LenientServer) -> None:
    """The answer says Connection: close and the proxy closes, so a browser opens a new
    connection (checked again) for its next request instead of reusing this one."""
    answer = await exchange(proxy, get(server.url(PAGE_HOST, "/a"), f"{PAGE_HOST}:1"))
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in head
    assert answer.endswith(b"GET /a 0")
    # The server saw a request in origin form with the target's own Host, no proxy headers.
    assert server.seen[0].path == "/a" and server.seen[0].host == f"{PAGE_HOST}:{server.port}"


async def test_a_chunked_body_is_forwarded_whole(
        proxy: EgressProxy, server: LenientServer) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    request = (f"POST {server.url(PAGE_HOST, '/upload')} HTTP/1.1\r\n"
               f"Host: {PAGE_HOST}\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + body
    answer = await exchange(proxy, request + get(server.url(TRAP_HOST, "/secret"), TRAP_HOST))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert [(s.path, s.body) for s in server.seen] == [("/upload", b"hello world")]


async def test_expect_100_continue_is_answered_by_the_proxy(
        proxy: EgressProxy, server: LenientServer) -> None:
    """The body is forwarded whole before any answer, so the proxy says 100 itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"PUT {server.url(PAGE_HOST, '/put')} HTTP/1.1\r\nHost: {PAGE_HOST}\r\n"
                 "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n".encode())
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 \r\n\r\n")
    writer.write(b"abc")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"PUT /put 3")


async def test_connect_tunnels_to_the_checked_address_only(
        proxy: EgressProxy, server: LenientServer) -> None:
    """A tunnel is opaque: whatever follows CONNECT goes to the one destination checked."""
    pipelined = get("/in-tunnel", f"{TRAP_HOST}:{server.port}")
    answer = await exchange(
        proxy, f"CONNECT {PAGE_HOST}:{server.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        + pipelined, until=b"GET /in-tunnel 0")
    assert answer.startswith(b"HTTP/1.1 200 Connection Established"), answer[:200]
    assert [(s.local, s.path) for s in server.seen] == [(PAGE_HOST, "/in-tunnel")]
    refused = await exchange(proxy, f"CONNECT {TRAP_HOST}:{server.port} HTTP/1.1\r\n"
                             f"Host: x\r\n\r\n".encode() + pipelined)
    assert refused.startswith(b"HTTP/1.1 403"), refused[:200]
    assert len(server.seen) == 1


BLOCKED_DESTINATIONS = [
    "64:ff9b:1::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "::ffff:0:a9fe:a9fe",
    "::127.0.0.1", "::a9fe:a9fe", "2001::5601:5601", "::ffff:127.0.0.1", "::1",
    "192.0.2.2", "198.51.100.1", "203.0.113.1", "127.0.0.1", "169.254.169.254",
]


@pytest.mark.parametrize("dest", BLOCKED_DESTINATIONS)
async def test_embedded_and_special_destinations_are_refused(
        proxy: EgressProxy, dest: str) -> None:
    """403 (refused by policy), never 502 (tried and failed to connect)."""
    authority = f"[{dest}]:80" if ":" in dest else f"{dest}:80"
    tunnel = await exchange(
        proxy, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    plain = await exchange(proxy, get(f"http://{authority}/", authority))
    assert tunnel.startswith(b"HTTP/1.1 403"), tunnel[:100]
    assert plain.startswith(b"HTTP/1.1 403"), plain[:100]
    assert proxy.refused == 2


@pytest.mark.parametrize("address", [
    LOCAL_NAT64_METADATA,  # the review's fake metadata server (64:ff9b:1::a9fe:a9fe)
    GLOBAL_OWN_ADDRESS,  # a global address of this machine's own
])
async def test_a_listener_on_such_an_address_is_not_reached(
        proxy: EgressProxy, address: str) -> None:
    """The review's reproduction: a real server on that address, through the real proxy."""
    with loopback_address(address):
        srv = await LenientServer("metadata").listen(address)
        try:
            authority = f"[{address}]:{srv.port}"
            plain = await exchange(proxy, get(f"http://{authority}/latest", authority))
            tunnel = await exchange(
                proxy, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
                + get("/latest-tunnel", authority), until=b"/latest-tunnel")
        finally:
            await srv.close()
    assert plain.startswith(b"HTTP/1.1 403"), plain[:100]
    assert tunnel.startswith(b"HTTP/1.1 403"), tunnel[:100]
    assert srv.seen == []


async def test_an_allowed_page_still_loads(proxy: EgressProxy, server: LenientServer) -> None:
    answer = await exchange(proxy, get(server.url(PAGE_HOST, "/ok?x=1"), PAGE_HOST))
    assert answer.startswith(b"HTTP/1.1 200") and b"<title>lenient</title>" in answer
    assert server.paths() == ["/ok?x=1"]
