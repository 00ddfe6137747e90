"""Domain exceptions; exactly one interceptor maps them to gRPC status codes."""

from __future__ import annotations

import unicodedata
import uuid
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
    """Malformed input; carries one violation per bad field."""

    reason: str = "INVALID_ARGUMENT"
    violations: list[FieldViolation] = field(default_factory=list)


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
    """A rate limit, throttle or capacity limit was hit."""

    reason: str = "RESOURCE_EXHAUSTED"


@dataclass
class Unavailable(DomainError):
    """A dependency is down or the server is draining; the caller may retry."""

    reason: str = "UNAVAILABLE"


def is_id(value: str) -> bool:
    """Whether `value` has the form of a server-generated id: a lower-case UUID."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


_NOT_TEXT = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})


def has_control_characters(text: str) -> bool:
    """Whether `text` holds control, format, private-use, unassigned or surrogate code points, or
    line/paragraph separators: nothing a name or an address is written with."""
    return any(unicodedata.category(ch) in _NOT_TEXT for ch in text)


class Validator:
    """Collects field violations and raises them together as one InvalidArgument."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        """Records that `field_path` is invalid."""
        self.violations.append(FieldViolation(field_path, description))

    def check(self, condition: bool, field_path: str, description: str) -> None:
        """Records a violation unless `condition` holds."""
        if not condition:
            self.add(field_path, description)

    def check_id(self, field_path: str, value: str, kind: str) -> None:
        """Records a violation unless `value` is present and has the form of a `kind` id."""
        if not value:
            self.add(field_path, "is required")
        elif not is_id(value):
            self.add(field_path, f"must be a {kind} id (a lower-case UUID)")

    def text(self, field_path: str, raw: str, max_length: int, *, required: bool = True) -> str:
        """Returns `raw` without surrounding whitespace; records a violation if it is missing (when
        `required`), longer than `max_length`, or holds control, format or line-break characters."""
        text = raw.strip()
        if not text:
            if required:
                self.add(field_path, "is required")
        elif len(text) > max_length:
            self.add(field_path, f"must be at most {max_length} characters")
        elif has_control_characters(text):
            self.add(field_path, "must not contain control characters")
        return text

    def raise_if_any(self, message: str = "The request has invalid fields.") -> None:
        """Raises InvalidArgument listing every recorded violation, if there are any."""
        if self.violations:
            raise InvalidArgument(message, violations=list(self.violations))
