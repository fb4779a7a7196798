"""The URL policy decides by what an address *is*: IPv6 forms that embed an IPv4 address
(mapped, compatible, translated, 6to4, Teredo, NAT64) are judged by the embedded address,
special-purpose ranges are refused, and the machine's own addresses are never reachable."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from jiomosa.core.urlpolicy import UrlPolicy, UrlRejected

# The outside review's examples, and their relatives.
REFUSED_URLS = [
    "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64 (RFC 8215) of 169.254.169.254
    "http://[64:ff9b::a9fe:a9fe]/",  # well-known NAT64 of 169.254.169.254
    "http://[64:ff9b::127.0.0.1]/",
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
    "http://[::ffff:0:169.254.169.254]/",  # IPv4-translated (RFC 2765)
    "http://[::ffff:0:a00:1]/",  # IPv4-translated 10.0.0.1
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[::a9fe:a9fe]/",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[2001::5601:5601]/",  # Teredo: client = ~0x56015601 = 169.254.169.254
    "http://[2001:0:808:808::5601:5601]/",  # Teredo, public server, metadata client
    "http://[2001:0:a00:1:0:0:f7f7:f7f7]/",  # Teredo, private server 10.0.0.1, public client
    "http://192.0.2.2/",  # TEST-NET-1 (this test machine's own address)
    "http://198.51.100.7/",  # TEST-NET-2
    "http://203.0.113.80/",  # TEST-NET-3
    "http://198.18.0.1/",  # benchmarking
    "http://192.88.99.1/",  # 6to4 relay anycast (deprecated)
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "http://233.252.0.1/",  # multicast (MCAST-TEST-NET)
    "http://[ff0e::1]/",  # global-scope multicast
    "http://[fec0::1]/",  # site-local (deprecated)
    "http://[2001:db8::1]/",  # documentation
    "http://[3fff::1]/",  # documentation (RFC 9637)
    "http://[100::1]/",  # discard-only
    "http://[2001:2::1]/",  # benchmarking
    "http://[5f00::1]/",  # SRv6 SIDs
    "http://[4000::1]/",  # not global unicast (outside 2000::/3)
    "http://[::]/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_embedded_and_special_addresses_are_refused(url: str) -> None:
    with pytest.raises(UrlRejected, match="private or reserved"):
        await UrlPolicy().check(url)


@pytest.mark.parametrize("ip", [
    "8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public
    "64:ff9b::808:808",  # well-known NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
    "2001:0:808:808::f7f7:f7f7",  # Teredo: server 8.8.8.8, client ~0xf7f7f7f7 = 8.8.8.8
])
def test_public_addresses_and_their_embeddings_are_allowed(ip: str) -> None:
    assert UrlPolicy().ip_allowed(ipaddress.ip_address(ip)) is True


def test_local_use_nat64_is_refused_whatever_it_embeds() -> None:
    """Its layout (RFC 6052 prefix length) is the operator's choice, so what it maps to is not
    known here: the whole /48 is refused unless allow-listed."""
    assert not UrlPolicy().ip_allowed(ipaddress.ip_address("64:ff9b:1::808:808"))
    allowed = UrlPolicy.from_allow_list(["64:ff9b:1::/48"])
    assert allowed.ip_allowed(ipaddress.ip_address("64:ff9b:1::808:808"))


@pytest.mark.parametrize("ip,embedded", [
    ("::ffff:10.0.0.1", ["10.0.0.1"]),
    ("::ffff:0:10.0.0.1", ["10.0.0.1"]),
    ("::10.0.0.1", ["10.0.0.1"]),
    ("64:ff9b::10.0.0.1", ["10.0.0.1"]),
    ("2002:a00:1::", ["10.0.0.1"]),
    ("2001:0:102:304::5601:5601", ["1.2.3.4", "169.254.169.254"]),
    ("2606:4700::1111", None),
    ("::1", ["0.0.0.1"]),
])
def test_embedded_ipv4(ip: str, embedded: list[str] | None) -> None:
    from jiomosa.core.urlpolicy import embedded_ipv4

    found = embedded_ipv4(ipaddress.IPv6Address(ip))
    assert (None if found is None else [str(a) for a in found]) == embedded


def test_allow_list_applies_to_embedded_addresses_too() -> None:
    policy = UrlPolicy.from_allow_list(["127.0.0.5"])
    for ip in ("127.0.0.5", "::ffff:127.0.0.5", "2002:7f00:5::", "64:ff9b::7f00:5"):
        assert policy.ip_allowed(ipaddress.ip_address(ip)), ip
    for ip in ("127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::"):
        assert not policy.ip_allowed(ipaddress.ip_address(ip)), ip


def _own_addresses() -> list[str]:
    """This machine's non-loopback addresses, found by connecting a UDP socket (no packet
    leaves: connect only picks a route)."""
    found: list[str] = []
    for family, target in ((socket.AF_INET, "192.0.2.200"), (socket.AF_INET6, "2001:db8::1")):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.connect((target, 9))
            except OSError:
                continue
            found.append(str(s.getsockname()[0]).split("%", 1)[0])
    return found


def test_the_machines_own_addresses_are_refused() -> None:
    own = _own_addresses()
    if not own:
        pytest.skip("this machine has no non-loopback address")
    for ip in own:
        assert not UrlPolicy().ip_allowed(ipaddress.ip_address(ip)), ip


async def test_ip_literals_do_not_need_dns() -> None:
    """An allowed literal is decided without a lookup (the resolver is never asked)."""
    policy = UrlPolicy.from_allow_list(["127.0.0.5"])
    await policy.check("http://127.0.0.5:8080/x")
    await policy.check("http://[2606:4700::1111]/")
