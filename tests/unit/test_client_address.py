"""The client address: the peer's, or x-forwarded-for's only through trusted proxies."""

from __future__ import annotations

import pytest

from server.interceptors.client_address import client_address, parse_networks, peer_address

PROXIES = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/tmp/storefront.sock", "unix:/tmp/storefront.sock"),
        ("", ""),
    ],
)
def test_peer_address_is_the_ip_without_the_port(peer: str, expected: str) -> None:
    assert peer_address(peer) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # An untrusted peer's header is ignored.
        ("ipv4:203.0.113.5:1", ["198.51.100.1"], "203.0.113.5"),
        # A trusted proxy vouches for the hop it saw.
        ("ipv4:10.1.2.3:1", ["198.51.100.1"], "198.51.100.1"),
        # Hops a caller prepended are not believed: the first untrusted from the right wins.
        ("ipv4:10.1.2.3:1", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        ("ipv4:10.1.2.3:1", ["1.1.1.1, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),
        ("ipv4:10.1.2.3:1", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),
        # A garbled hop stops the walk at the last address a trusted proxy vouched for.
        ("ipv4:10.1.2.3:1", ["198.51.100.1, not-an-ip"], "10.1.2.3"),
        ("ipv4:10.1.2.3:1", [], "10.1.2.3"),
        ("ipv6:[::1]:1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_x_forwarded_for_only_through_trusted_proxies(
    peer: str, forwarded_for: list[str], expected: str
) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer_always() -> None:
    assert client_address("ipv4:10.1.2.3:1", ["198.51.100.1"], ()) == "10.1.2.3"
