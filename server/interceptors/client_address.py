"""The calling client's address: the peer's, or x-forwarded-for's when the peer is a trusted proxy.

Rate limits and sign-in throttling count per client address, so the address must not be
something a caller can choose: `x-forwarded-for` is believed only when the connection comes from
one of STOREFRONT_TRUSTED_PROXIES, and then only up to the first hop no trusted proxy vouches for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

import grpc

FORWARDED_FOR_HEADER = "x-forwarded-for"
# Longest text kept as an address (an IPv6 address with a zone needs at most this much).
MAX_ADDRESS_LENGTH = 64

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Returns the networks of addresses or CIDR ranges; raises ValueError for a bad one."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def peer_address(peer: str) -> str:
    """Returns the IP in a grpc peer ("ipv4:1.2.3.4:5", "ipv6:[::1]:5"), else the peer cut short.

    Unix-socket and unknown peers keep their text (cut to MAX_ADDRESS_LENGTH) so they are still
    counted together.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]")
    return peer[:MAX_ADDRESS_LENGTH]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in network for network in proxies)


def client_address(
    peer: str, forwarded_for: Sequence[str], trusted_proxies: Sequence[Network]
) -> str:
    """Returns the client's address from the peer and the x-forwarded-for values received.

    From a trusted peer, the x-forwarded-for hops are read right to left (each proxy appends the
    address it saw): the first hop that is not itself a trusted proxy is the client. A malformed
    hop stops the walk at the last address a trusted proxy vouched for.
    """
    address = peer_address(peer)
    if not trusted_proxies or not _trusted(address, trusted_proxies):
        return address
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        address = str(ip)
        if not any(ip in network for network in trusted_proxies):
            break
    return address


def from_context(
    context: grpc.ServicerContext, trusted_proxies: Sequence[Network], *, peer: str | None = None
) -> str:
    """Returns the client's address for the call `context` belongs to (`peer`: its
    context.peer(), when the caller has it already)."""
    forwarded = [
        value
        for key, value in context.invocation_metadata() or ()
        if key == FORWARDED_FOR_HEADER and isinstance(value, str)
    ]
    if peer is None:
        peer = context.peer() or ""
    return client_address(peer, forwarded, trusted_proxies)
