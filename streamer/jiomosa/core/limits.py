"""Rate limits and quotas (issue #13): token buckets, buckets per key in bounded memory, live
connections per key, distinct re-encode qualities per session, and who a client is.

Pure logic: every function takes the time (``now``, seconds of a monotonic clock) from its
caller, so a test drives it with a fake clock. ``docs/security.md`` ("Abuse limits") lists
what each limit answers.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from jiomosa.core.errors import ClientError

K = TypeVar("K")
V = TypeVar("V")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV6_CLIENT_PREFIX = 64
"""An IPv6 client is its /64: a host usually gets a whole /64 and picks addresses in it at
will, so counting single IPv6 addresses would give one client 2**64 budgets."""


def retry_after(wait: float) -> int:
    """``Retry-After`` for a wait of ``wait`` seconds: whole seconds, at least 1."""
    return max(1, math.ceil(wait))


class RateLimited(ClientError):
    """429: a limit refused the request; ``retry_after`` (whole seconds) says when to retry."""

    status = 429

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message, retry_after=retry_after(wait))

    @property
    def retry_after(self) -> int:
        return int(self.extra["retry_after"])


@dataclass(frozen=True)
class Quota:
    """How many live sessions the creator ``tag`` (an API key, or an anonymous client's
    address) may hold at once; ``label`` names it in answers and logs (never a key)."""

    tag: str
    max_sessions: int
    label: str


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; it starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.tokens = self.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when allowed, else the seconds until it would be (and
        nothing is taken)."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (cost - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        """Nothing taken that has not grown back: the bucket is as good as a new one."""
        self._refill(now)
        return self.tokens >= self.burst


class BoundedMap(Generic[K, V]):
    """A dict of at most ``max_keys`` entries, least recently used first out."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max(1, max_keys)
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K, create: Callable[[], V]) -> V:
        """The entry of ``key`` (made by ``create`` if new), now the most recently used."""
        item = self._items.get(key)
        if item is None:
            item = create()
            self._items[key] = item
            while len(self._items) > self.max_keys:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item

    def prune(self, idle: Callable[[V], bool], at_most: int = 2) -> None:
        """Drop up to ``at_most`` of the oldest entries while ``idle`` says they hold nothing.
        Called on every use, so idle entries go at about the rate new ones come, at O(1)."""
        for _ in range(at_most):
            if not self._items:
                return
            key, item = next(iter(self._items.items()))
            if not idle(item):
                return
            del self._items[key]


class KeyedLimiter:
    """One token bucket per key (a client address, a session id), ``rate`` a second with
    ``burst``, in bounded memory: at most ``max_keys`` buckets, full ones dropped as they come
    to the front, the least recently used dropped past the cap (which only forgives its key:
    a flood of new keys cannot make anyone else refused). ``rate`` <= 0: no limit."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: BoundedMap[str, TokenBucket] = BoundedMap(max_keys)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0.0 when ``key`` may go on, else seconds until it may."""
        if not self.enabled:
            return 0.0
        wait = self._buckets.get(key, lambda: TokenBucket(self.rate, self.burst, now)).take(now)
        self._buckets.prune(lambda bucket: bucket.full(now))
        return wait


class MessageLimit:
    """One connection's messages: ``rate`` a second with ``burst``. Each refused message
    costs one of ``strikes`` (which grow back one a second); a connection that has none left
    keeps flooding after being told, and is to be closed. ``strikes`` 0: never closed."""

    STRIKE_REFILL = 1.0  # strikes that grow back per second

    def __init__(self, rate: float, burst: float, strikes: int, now: float) -> None:
        self.rate = rate
        self._messages = TokenBucket(rate, burst, now)
        self._strikes = TokenBucket(self.STRIKE_REFILL, strikes, now) if strikes > 0 else None

    def check(self, now: float) -> tuple[float, bool]:
        """(0.0 allowed, or seconds until a message is; whether to close the connection)."""
        wait = self._messages.take(now)
        if wait == 0.0:
            return 0.0, False
        return wait, self._strikes is not None and self._strikes.take(now) > 0


class ConnectionCounter:
    """Live connections per key (a client address), at most ``max_per_key`` each (0: no
    limit). Memory follows the live connections: a key without any is forgotten."""

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._keys: dict[str, set[str]] = {}
        self._owner: dict[str, str] = {}

    def count(self, key: str) -> int:
        return len(self._keys.get(key, ()))

    def full(self, key: str) -> bool:
        return self.max_per_key > 0 and self.count(key) >= self.max_per_key

    def open(self, key: str, conn_id: str) -> None:
        """Count ``conn_id`` as a live connection of ``key`` (check ``full`` first)."""
        self.close(conn_id)
        self._keys.setdefault(key, set()).add(conn_id)
        self._owner[conn_id] = key

    def close(self, conn_id: str) -> None:
        """``conn_id`` ended (closing an unknown or already closed one does nothing)."""
        key = self._owner.pop(conn_id, None)
        if key is None:
            return
        conns = self._keys.get(key)
        if conns is not None:
            conns.discard(conn_id)
            if not conns:
                del self._keys[key]

    def __len__(self) -> int:
        return len(self._owner)


class RecentQualities:
    """The re-encode qualities one session's frame requests used within the last ``window``
    seconds, at most ``max_distinct`` of them. A request for another quality is snapped to
    the nearest one already in use or already encoded (``free``), so that a client cycling
    through qualities gets images, not a CPU core: each frame is re-encoded at most
    ``max_distinct`` times for these requests."""

    def __init__(self, max_distinct: int, window: float = 1.0) -> None:
        self.max_distinct = max_distinct
        self.window = window
        self._used: dict[int, float] = {}  # quality -> when last asked

    def choose(self, quality: int, now: float, free: Collection[int]) -> int:
        """The quality to serve a request for ``quality``; ``free``: qualities that cost no
        encode now (the source's, re-encodes of this frame already made)."""
        for q, when in list(self._used.items()):
            if now - when > self.window:
                del self._used[q]
        if quality in self._used:  # kept while asked for, encoded or not
            self._used[quality] = now
            return quality
        if quality in free:
            return quality  # costs nothing: takes no place
        if len(self._used) < self.max_distinct:
            self._used[quality] = now
            return quality
        return nearest(quality, [*self._used, *free])

    def idle(self, now: float) -> bool:
        return all(now - when > self.window for when in self._used.values())


def nearest(quality: int, candidates: Iterable[int]) -> int:
    """The candidate closest to ``quality``; of two as close, the lower (the smaller image)."""
    return min(candidates, key=lambda q: (abs(q - quality), q))


# ----------------------------------------------------------------------------- addresses
def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names a bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return tuple(out)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The key a client's limits are kept under: its IPv4 address, or its IPv6 /64."""
    if isinstance(address, ipaddress.IPv6Address):
        net = ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False)
        return str(net)
    return str(address)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: Collection[Network]) -> str:
    """Who a request comes from, as a limits key (``client_key``).

    The TCP peer, unless it is a trusted proxy: then ``X-Forwarded-For`` is read from the
    right (each proxy appends the address it got the request from) and the first address
    that is not a trusted proxy is the client. Entries left of it were written by the client
    itself and are never believed. A peer that is not trusted cannot claim anything."""
    address = _ip(peer) if peer else None
    if address is None:
        return "unknown"
    if not trusted or not forwarded_for or not _in(address, trusted):
        return client_key(address)
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _ip(hop)
        if hop_address is None:
            break  # a proxy wrote something that is no address: trust nothing beyond it
        address = hop_address
        if not _in(address, trusted):
            break
    return client_key(address)


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        networks: Collection[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)
