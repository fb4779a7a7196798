"""Which URLs a session's browser may fetch (SSRF defence).

The same policy is applied twice: to the URL a client asks to load (so the client gets a clear
400), and inside the browser to every request the page makes, redirects and subresources
included (``jiomosa.browser.page`` pauses each request through CDP ``Fetch`` and asks here).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from jiomosa.core.errors import ClientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges a public web page has no business reaching from a cloud browser.
_BLOCKED_NETS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 cloud metadata
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments (incl. 192.0.0.192 Oracle metadata)
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: checked again as IPv4 below
        "64:ff9b::/96",  # NAT64: may map to a private IPv4
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "fd00:ec2::254/128",  # AWS metadata over IPv6 (inside fc00::/7, named for clarity)
    )
)

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
        if any(ip in net for net in self.allow_nets):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.ip_allowed(ip.ipv4_mapped)
        return not any(ip in net for net in _BLOCKED_NETS)

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
        ip = _literal_ip(host)
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


def _literal_ip(host: str) -> IPAddress | None:
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
    """Every address ``host`` resolves to (empty when it does not resolve)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=5.0
        )
    except (OSError, TimeoutError, UnicodeError):
        return []
    out: list[IPAddress] = []
    for info in infos:
        try:
            out.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    return out
