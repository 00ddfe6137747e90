"""Domain exceptions; exactly one interceptor maps them to gRPC status codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (e.g. "user.display_name") and what is wrong."""

    field: str
    description: str


@dataclass
class DomainError(Exception):
    """Base of every error a domain function raises on purpose.

    `reason` is a stable UPPER_SNAKE identifier clients may branch on; `message` is safe to show
    to the caller; `metadata` adds string facts to the ErrorInfo detail.
    """

    message: str
    reason: str = "ERROR"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass
class InvalidArgument(DomainError):
    """Malformed input; carries one violation per bad field.

    Its status message is the violations themselves (see `violations_summary`), so that any tool
    shows which fields are wrong without decoding the BadRequest detail.
    """

    reason: str = "FIELD_INVALID"
    violations: list[FieldViolation] = field(default_factory=list)


def violations_summary(violations: Sequence[FieldViolation]) -> str:
    """The violations as one line: "request_id: must be a UUID; quantity: must be 1 to 99"."""
    return "; ".join(
        f"{v.field}: {v.description}" if v.field else v.description for v in violations
    )


@dataclass
class Unauthenticated(DomainError):
    """Missing, invalid, expired or revoked credentials."""

    reason: str = "UNAUTHENTICATED"


@dataclass
class PermissionDenied(DomainError):
    """Authenticated, but the role may not do this."""

    reason: str = "PERMISSION_DENIED"


@dataclass
class NotFound(DomainError):
    """Missing, or owned by someone else (the two are indistinguishable on purpose)."""

    reason: str = "NOT_FOUND"


@dataclass
class AlreadyExists(DomainError):
    """A unique value is taken."""

    reason: str = "ALREADY_EXISTS"


@dataclass
class FailedPrecondition(DomainError):
    """The request is valid but the system is not in a state that allows it."""

    reason: str = "FAILED_PRECONDITION"


@dataclass
class Aborted(DomainError):
    """A concurrency conflict: stale etag, serialization failure, same request in flight."""

    reason: str = "ABORTED"


@dataclass
class ResourceExhausted(DomainError):
    """A rate limit, throttle or capacity limit was hit.

    `retry_delay_seconds`, when known, tells the caller how long to wait (a google.rpc.RetryInfo).
    """

    reason: str = "RESOURCE_EXHAUSTED"
    retry_delay_seconds: float | None = None


@dataclass
class Unavailable(DomainError):
    """A dependency is down or the server is draining; the caller may retry."""

    reason: str = "UNAVAILABLE"
