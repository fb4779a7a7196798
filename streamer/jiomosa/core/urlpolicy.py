"""Which URLs a session's browser may fetch (SSRF defence).

The same policy is applied twice: to the URL a client asks to load (so the client gets a clear
400), and inside the browser to every request the page makes, redirects and subresources
included (``jiomosa.browser.page`` pauses each request through CDP ``Fetch`` and asks here),
and by the egress proxy at connect time (``jiomosa.browser.egress``).

An address is allowed when it is allow-listed or public: globally routable, outside every
special-purpose range, not this machine's own. IPv6 forms that embed an IPv4 address (mapped,
translated, compatible, NAT64, 6to4, Teredo) are judged by the address they embed.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jiomosa.core import dns
from jiomosa.core.errors import ClientError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# The IANA special-purpose registries' ranges that are not globally reachable, plus multicast
# and the deprecated ones. Written out rather than left to ``ipaddress.is_global``, whose tables
# differ between Python releases (3.11.7 calls 64:ff9b:1::/48 and ff00::/8 global).
_BLOCKED_V4 = _nets(
    "0.0.0.0/8",  # "this" network
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, incl. 169.254.169.254 cloud metadata
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments (incl. 192.0.0.192 Oracle metadata)
    "192.0.2.0/24",  # TEST-NET-1
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, incl. 255.255.255.255 broadcast
)
_BLOCKED_V6 = _nets(
    "::/128",  # unspecified
    "::1/128",  # loopback
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): its layout, so its target, is local
    "100::/64",  # discard-only
    "100:0:0:1::/64",  # dummy prefix (RFC 9780)
    "2001::/23",  # IETF protocol assignments (Teredo inside is judged by what it embeds)
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # SRv6 SIDs
    "fc00::/7",  # unique local, incl. fd00:ec2::254 AWS metadata
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)
# Only global unicast is reachable on the IPv6 internet; everything outside it is reserved.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

# IPv6 forms that carry an IPv4 address: a connection to them may end at that IPv4 address
# (through the kernel, a NAT64 gateway, a 6to4 or Teredo relay), so they are judged by it.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix (RFC 6052)
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address carries (both Teredo ends), or None if none."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_MAPPED or ip in _IPV4_TRANSLATED or ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return (low32,)
    if ip in _SIX_TO_FOUR:
        return (ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF),)
    if ip in _TEREDO:
        # Server in bits 32-63, client (obfuscated: inverted) in the low 32 bits.
        server = ipaddress.IPv4Address((int(ip) >> 64) & 0xFFFFFFFF)
        return (server, ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF))
    return None


def is_public(ip: IPAddress) -> bool:
    """True for an address a public web page may live at: globally routable, not special
    purpose, not one of this machine's own (those reach services bound to 0.0.0.0)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip not in _GLOBAL_UNICAST or any(ip in net for net in _BLOCKED_V6):
            return False
    elif any(ip in net for net in _BLOCKED_V4):
        return False
    if ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_link_local:
        return False
    return not _own.has(ip)


class _OwnAddresses:
    """Whether an address is this machine's: the kernel lets a socket bind only to its own
    addresses (any interface, local routes included). Answers are kept for a minute."""

    TTL = 60.0

    def __init__(self) -> None:
        self._known: dict[IPAddress, tuple[bool, float]] = {}
        self._usable: dict[int, bool] = {}

    def has(self, ip: IPAddress) -> bool:
        now = time.monotonic()
        cached = self._known.get(ip)
        if cached is not None and cached[1] > now:
            return cached[0]
        if len(self._known) > 4096:
            self._known.clear()
        mine = self._usable_for(ip.version) and _binds(ip)
        self._known[ip] = (mine, now + self.TTL)
        return mine

    def _usable_for(self, version: int) -> bool:
        # With ip_nonlocal_bind (or IP_FREEBIND defaults) every bind succeeds; then binding
        # proves nothing and would refuse the whole internet.
        if version not in self._usable:
            probe = ipaddress.ip_address("198.51.100.254" if version == 4 else "2001:db8::fe")
            self._usable[version] = not _binds(probe)
            if not self._usable[version]:
                log.warning("non-local bind is enabled: this machine's own IPv%d addresses "
                            "cannot be told apart", version)
        return self._usable[version]


def _binds(ip: IPAddress) -> bool:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError as exc:
        # EADDRNOTAVAIL: not ours; no IPv6 at all and the like: not ours either.
        return exc.errno == errno.EADDRINUSE


_own = _OwnAddresses()

# Names that resolve to metadata services inside clouds whatever DNS says elsewhere.
_BLOCKED_NAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_URL_LENGTH = 8192


class UrlRejected(ClientError, ValueError):
    """The URL may not be loaded; the message is safe to show to the client."""

    status = 400


@dataclass(frozen=True)
class UrlPolicy:
    """Decides whether a URL may be fetched. Build one with :meth:`from_allow_list`."""

    allow_names: frozenset[str] = frozenset()
    allow_nets: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_allow_list(cls, entries: Iterable[str]) -> UrlPolicy:
        names: set[str] = set()
        nets: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(nets))

    def ip_allowed(self, ip: IPAddress) -> bool:
        """Allow-listed, or public; an IPv6 form that embeds IPv4 is judged by what it embeds
        (every embedded address, by these same rules)."""
        if any(ip in net for net in self.allow_nets):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = embedded_ipv4(ip)
            if embedded is not None:
                return all(self.ip_allowed(v4) for v4 in embedded)
        return is_public(ip)

    def check_syntax(self, url: str) -> tuple[str, str]:
        """Check scheme and shape; return (scheme, host). Raise UrlRejected."""
        if not isinstance(url, str) or not url.strip():
            raise UrlRejected("URL is required")
        if len(url) > MAX_URL_LENGTH:
            raise UrlRejected(f"URL is longer than {MAX_URL_LENGTH} characters")
        if any(ord(c) < 0x21 for c in url.strip()):
            raise UrlRejected("URL contains whitespace or control characters")
        try:
            parts = urlsplit(url.strip())
            port = parts.port  # raises on a bad port
        except ValueError as exc:
            raise UrlRejected(f"URL is malformed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise UrlRejected("only http and https URLs can be loaded")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise UrlRejected("URL has no host")
        if parts.username or parts.password:
            raise UrlRejected("URLs with credentials are not allowed")
        del port
        return scheme, host

    def host_allowed_by_name(self, host: str) -> bool | None:
        """True/False when the host alone decides; None when its addresses must be checked."""
        host = host.rstrip(".").lower()
        if host in self.allow_names:
            return True
        ip = literal_ip(host)
        if ip is not None:
            return self.ip_allowed(ip)
        if host in _BLOCKED_NAMES or host.endswith(".localhost"):
            return False
        return None

    async def check(self, url: str) -> None:
        """Raise UrlRejected unless every address the URL's host resolves to is allowed."""
        _, host = self.check_syntax(url)
        verdict = self.host_allowed_by_name(host)
        if verdict is True:
            return
        if verdict is False:
            raise UrlRejected(f"host {host} is on a private or reserved network")
        addresses = await resolve(host)
        if not addresses:
            raise UrlRejected(f"host {host} does not resolve")
        for ip in addresses:
            if not self.ip_allowed(ip):
                raise UrlRejected(f"host {host} resolves to a private or reserved address")


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a browser reads as an IP literal."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Browsers also read IPv4 in shorthand/decimal/hex forms (http://2130706433/ = 127.0.0.1);
    # inet_aton accepts exactly those, so a host it parses is an IP literal.
    if all(c in "0123456789abcdefxABCDEFX." for c in host) and host[:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (empty when it does not resolve in time)."""
    literal = literal_ip(host)
    if literal is not None:
        return [literal]
    return await dns.resolve(host)
