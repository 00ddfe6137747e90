"""Sign-in sessions and their single-use refresh tokens."""

from __future__ import annotations

import datetime as dt

import peewee

from server.db import BaseModel, PreparedSelect, utcnow
from server.models.user import User


class Session(BaseModel):
    """One sign-in: a family of refresh tokens; revoking it ends all of them."""

    id = peewee.CharField(max_length=36, primary_key=True)
    user = peewee.ForeignKeyField(User, backref="sessions", on_delete="CASCADE", index=True)
    create_time = peewee.DateTimeField(default=utcnow)
    expire_time = peewee.DateTimeField()
    revoke_time = peewee.DateTimeField(null=True)
    revoke_reason = peewee.CharField(max_length=32, null=True)
    user_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "sessions"


class RefreshToken(BaseModel):
    """A refresh token, stored only as its SHA-256; use_time is set when it is exchanged."""

    token_hash = peewee.CharField(max_length=64, primary_key=True)
    session = peewee.ForeignKeyField(
        Session, backref="refresh_tokens", on_delete="CASCADE", index=True
    )
    create_time = peewee.DateTimeField(default=utcnow)
    use_time = peewee.DateTimeField(null=True)
    session_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "refresh_tokens"


def revoke(condition: peewee.Expression, *, reason: str, now: dt.datetime) -> int:
    """Revokes the live sessions matching `condition`; returns how many."""
    return int(
        Session.update(revoke_time=now, revoke_reason=reason)
        .where(condition & Session.revoke_time.is_null())
        .execute()
    )


def live_session(
    *, session_id: str, now: dt.datetime, user_id: str | None = None
) -> Session | None:
    """Returns the session, with its user loaded, if it is live and the user enabled, else None."""
    condition = (
        (Session.id == session_id)
        & Session.revoke_time.is_null()
        & (Session.expire_time > now)
        & (User.disabled == False)  # noqa: E712 (peewee expression)
    )
    if user_id is not None:
        condition &= Session.user == user_id
    return Session.select(Session, User).join(User).where(condition).first()


_LIVE_SESSION_ROLE = PreparedSelect(
    lambda session_id, expire_after, user_id, disabled: (
        Session.select(User.role)
        .join(User)
        .where(
            (Session.id == session_id)
            & (Session.expire_time > expire_after)
            & (Session.user == user_id)
            & (User.disabled == disabled)
            & Session.revoke_time.is_null()
        )
    )
)


def live_session_role(*, session_id: str, user_id: str, now: dt.datetime) -> str | None:
    """Returns the role of the session's user if the session is live, belongs to that user and
    the user is enabled, else None. Runs on every authenticated call, hence prepared."""
    row = _LIVE_SESSION_ROLE.first_row(
        session_id, Session.expire_time.db_value(now), user_id, False
    )
    return None if row is None else str(row[0])
