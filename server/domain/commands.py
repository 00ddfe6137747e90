"""What the commands of retryable mutations carry, for the entry points that build them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestKey:
    """A mutation's request_id and the request's fingerprint: the request without its request_id,
    serialised deterministically by the entry point. Equal fingerprints make two calls with one
    key the same request (see domain/idempotency.py, which claims and replays them)."""

    request_id: str
    fingerprint: bytes
