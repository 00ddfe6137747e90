"""Who is calling: the authenticated identity a request runs as."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """A principal's role, as stored in the database and in token claims."""

    CUSTOMER = "CUSTOMER"
    STAFF = "STAFF"
    ADMIN = "ADMIN"
    SERVICE = "SERVICE"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (with a session) or a service account."""

    subject: str
    role: Role
    token_id: str
    session_id: str | None = None

    @property
    def is_service(self) -> bool:
        """Whether the caller is a service account rather than a user."""
        return self.role is Role.SERVICE
