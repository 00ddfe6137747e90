"""POSTs webhook requests to endpoints outside, and refuses the addresses it must not reach.

A URL is checked (https only unless plain http is allowed, no user info, a host), its host
resolved once, every address checked, and the connection made to that checked address, so a DNS
answer that changes between the check and the connect (rebinding) cannot redirect the request.
Private, loopback, link-local, multicast, reserved and unspecified addresses (IPv4-mapped IPv6
included) are refused unless the development setting allows them. Redirects are never followed,
and connect time, read time and the response size read are bounded.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
MAX_RESPONSE_BYTES = 64 * 1024

Resolver = Callable[[str, int], Sequence[str]]


class Refused(ValueError):
    """A URL or address that may not be called; nothing was sent."""


@dataclass(frozen=True)
class AddressPolicy:
    """Where webhook requests may go."""

    allow_http: bool = False
    allow_private_addresses: bool = False


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect, and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str


def check_url(url: str, policy: AddressPolicy) -> Target:
    """Returns the URL's parts; raises Refused for a URL webhooks may not use."""
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("must be an absolute https URL") from None
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise Refused("must be an https URL" if not policy.allow_http else "must be http(s)")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("must not contain user information")
    if not parts.hostname:
        raise Refused("must name a host")
    if parts.fragment:
        raise Refused("must not have a fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path
    )


def is_forbidden(address: str) -> bool:
    """Returns whether `address` is one no webhook may reach without the development setting."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def resolve(host: str, port: int) -> list[str]:
    """Returns the addresses `host` resolves to now, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"host {host!r} does not resolve") from exc
    return [str(info[4][0]) for info in infos]


def checked_address(target: Target, policy: AddressPolicy, resolver: Resolver = resolve) -> str:
    """Resolves the target's host once and returns the address to connect to; raises Refused if
    any address it resolves to is forbidden."""
    addresses = list(resolver(target.host, target.port))
    if not addresses:
        raise Refused(f"host {target.host!r} does not resolve")
    if not policy.allow_private_addresses:
        for address in addresses:
            if is_forbidden(address):
                raise Refused(f"resolves to a private or reserved address ({address})")
    return addresses[0]


@dataclass(frozen=True)
class Response:
    """What the endpoint answered (the start of the body only)."""

    status: int
    body: bytes


class Sender:
    """POSTs to checked URLs at checked addresses."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        connect_timeout: float,
        read_timeout: float,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Creates a sender; `resolver` and `ssl_context` are replaceable in tests."""
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.resolver = resolver
        self.ssl_context = ssl_context or ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Sends the request; raises Refused before connecting anywhere it may not, OSError or
        http.client.HTTPException when the exchange fails."""
        target = check_url(url, self.policy)
        address = checked_address(target, self.policy, self.resolver)
        connection = self._connection(target, address)
        try:
            connection.request("POST", target.path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return Response(response.status, response.read(MAX_RESPONSE_BYTES))
        finally:
            connection.close()

    def _connection(self, target: Target, address: str) -> http.client.HTTPConnection:
        if target.scheme == "https":
            return _PinnedHTTPSConnection(
                target.host,
                target.port,
                address=address,
                connect_timeout=self.connect_timeout,
                timeout=self.read_timeout,
                context=self.ssl_context,
            )
        return _PinnedHTTPConnection(
            target.host,
            target.port,
            address=address,
            connect_timeout=self.connect_timeout,
            timeout=self.read_timeout,
        )


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name would resolve to now."""

    def __init__(
        self, host: str, port: int, *, address: str, connect_timeout: float, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self._connect_timeout)
        self.sock.settimeout(self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As _PinnedHTTPConnection, with TLS verified against the URL's host name."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        address: str,
        connect_timeout: float,
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._connect_timeout = connect_timeout
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self._connect_timeout)
        raw.settimeout(self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
