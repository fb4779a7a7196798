"""Name lookups for the URL policy and the egress proxy: asynchronous, bounded and cached.

``loop.getaddrinfo`` runs glibc's blocking resolver on asyncio's default executor; a timeout
around it frees the caller, not the thread, which stays in glibc for its own 2 x 5 s. A dozen
never-answered names held every thread, and with them every other lookup, JPEG re-encodes and
browser starts. Here c-ares (through aiodns) sends the queries from its own sockets and one
event thread, so an abandoned lookup holds nothing:

- at most ``max_lookups`` lookups are in flight (a semaphore); a lookup's ``timeout`` covers
  its wait for a slot and the query, and when it passes the slot is free again;
- concurrent lookups of one name share one query;
- answers are cached for their records' TTL (at most ``max_ttl``), failures and timeouts for
  ``negative_ttl``;
- c-ares reads /etc/resolv.conf (search domains, ndots) and /etc/hosts like glibc does, unless
  ``servers`` names the DNS servers (``JIOMOSA_DNS_SERVERS``; tests point it at their own).

One resolver per event loop (c-ares calls back into the loop that asked); ``configure`` sets
what new ones are built with, ``shutdown`` closes the running loop's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any

import aiodns

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ENTRIES = 10_000  # cached names; the oldest go first beyond this
MIN_TTL = 1.0  # hosts-file answers carry TTL 0: still worth a second


@dataclass(frozen=True)
class DnsConfig:
    """How lookups are made (from ``Settings``: ``JIOMOSA_DNS_*``)."""

    servers: tuple[str, ...] = ()
    timeout: float = 5.0
    max_lookups: int = 64
    max_ttl: float = 300.0
    negative_ttl: float = 5.0


class Resolver:
    """Lookups of one event loop."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self._cache: dict[str, tuple[float, tuple[Address, ...]]] = {}
        self._inflight: dict[str, asyncio.Future[tuple[Address, ...]]] = {}
        self._slots = asyncio.Semaphore(config.max_lookups)
        self._channel: aiodns.DNSResolver | None = None
        self.timeouts = 0

    async def resolve(self, host: str) -> list[Address]:
        """Every address of ``host`` (empty when it does not resolve in time)."""
        host = host.rstrip(".").lower()
        hit = self._cache.get(host)
        if hit is not None:
            if hit[0] > time.monotonic():
                return list(hit[1])
            del self._cache[host]
        future = self._inflight.get(host)
        if future is None:
            future = asyncio.ensure_future(self._lookup(host))
            self._inflight[host] = future
            future.add_done_callback(lambda f: self._forget(host, f))
        # Shielded: one caller giving up must not cancel the lookup the others wait for.
        return list(await asyncio.shield(future))

    def _forget(self, host: str, future: asyncio.Future[tuple[Address, ...]]) -> None:
        if self._inflight.get(host) is future:
            del self._inflight[host]

    async def _lookup(self, host: str) -> tuple[Address, ...]:
        addresses: tuple[Address, ...] = ()
        ttl = self.config.negative_ttl
        try:
            async with asyncio.timeout(self.config.timeout), self._slots:
                result = await self._resolver().getaddrinfo(host, type=socket.SOCK_STREAM)
        except TimeoutError:
            self.timeouts += 1
            log.info("DNS lookup of %s timed out", host)
        except (aiodns.error.DNSError, UnicodeError, ValueError, TypeError):
            pass  # NXDOMAIN, SERVFAIL, a name c-ares cannot encode: does not resolve
        else:
            addresses, ttls = _addresses(result.nodes)
            if addresses:
                ttl = max(MIN_TTL, min([self.config.max_ttl, *ttls]))
        self._store(host, addresses, ttl)
        return addresses

    def _store(self, host: str, addresses: tuple[Address, ...], ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._cache) >= MAX_ENTRIES:
            now = time.monotonic()
            for name in [n for n, (exp, _) in self._cache.items() if exp <= now]:
                del self._cache[name]
            while len(self._cache) >= MAX_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[host] = (time.monotonic() + ttl, addresses)

    def _resolver(self) -> aiodns.DNSResolver:
        if self._channel is None:
            # c-ares retries with a doubling timeout, shortened by the latency it has seen from
            # the server (250 ms at least): three tries of at most timeout/3 give a slow
            # recursive resolver a second and third chance, and end soon after our own
            # deadline when nothing answers (an abandoned query holds no thread meanwhile).
            self._channel = aiodns.DNSResolver(
                nameservers=list(self.config.servers) or None,
                timeout=max(0.25, self.config.timeout / 3), tries=3)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
        for future in self._inflight.values():
            future.cancel()


def _addresses(nodes: Any) -> tuple[tuple[Address, ...], list[float]]:
    out: list[Address] = []
    ttls: list[float] = []
    for node in nodes:
        raw = node.addr[0]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if ip not in out:
            out.append(ip)
            ttls.append(float(node.ttl))
    return tuple(out), ttls


_config = DnsConfig()
_resolvers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Resolver] = (
    weakref.WeakKeyDictionary())
_closing: set[asyncio.Task[None]] = set()  # strong references until the close is done


def configure(config: DnsConfig) -> None:
    """Resolvers built from now on use ``config`` (the app calls this at start)."""
    global _config
    _config = config


def default() -> Resolver:
    """The running loop's resolver, built on first use with the configured settings."""
    loop = asyncio.get_running_loop()
    resolver = _resolvers.get(loop)
    if resolver is None or resolver.config is not _config:
        if resolver is not None:
            task = loop.create_task(resolver.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        resolver = _resolvers[loop] = Resolver(_config)
    return resolver


async def resolve(host: str) -> list[Address]:
    """Every address of ``host`` through the running loop's resolver."""
    return await default().resolve(host)


async def shutdown() -> None:
    """Close the running loop's resolver (its c-ares channel and thread)."""
    resolver = _resolvers.pop(asyncio.get_running_loop(), None)
    if resolver is not None:
        await resolver.close()
