"""Creates plaintext, TLS and mutual-TLS channels with storefront's limits."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's default STOREFRONT_MAX_MESSAGE_BYTES

PemSource = bytes | str | os.PathLike[str]
"""PEM data as bytes, or the path of a PEM file as str or Path."""


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_options(
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    keepalive_seconds: float | None = None,
    server_name_override: str | None = None,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Returns the channel arguments the SDK uses; keepalive pings stay off unless asked for."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Connections of its own: grpc otherwise shares them among a process's channels to the
        # same address, and a new client would fail fast on another's connection that is
        # backing off after a server on that address went away (even if one is serving now).
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if keepalive_seconds is not None:
        # The server's default policy answers pings more often than every 5 minutes with GOAWAY.
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    if server_name_override is not None:
        options.append(("grpc.ssl_target_name_override", server_name_override))
    options += extra
    return options


def create_channel(
    target: str,
    *,
    tls: bool = False,
    root_certificates: PemSource | None = None,
    client_certificate: PemSource | None = None,
    client_key: PemSource | None = None,
    server_name_override: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    keepalive_seconds: float | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """Returns a grpc.Channel to "host:port"; TLS if `tls` or any certificate is given.

    Without `root_certificates` TLS trusts the system roots. `client_certificate` and `client_key`
    together enable mutual TLS.
    """
    if (client_certificate is None) != (client_key is None):
        raise ValueError("client_certificate and client_key must be given together")
    args = channel_options(
        max_message_bytes=max_message_bytes,
        keepalive_seconds=keepalive_seconds,
        server_name_override=server_name_override,
        extra=options,
    )
    if not (tls or root_certificates is not None or client_certificate is not None):
        return grpc.insecure_channel(target, options=args)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(root_certificates),
        private_key=_read_pem(client_key),
        certificate_chain=_read_pem(client_certificate),
    )
    return grpc.secure_channel(target, credentials, options=args)
