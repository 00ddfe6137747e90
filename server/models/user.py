"""User accounts and failed-login records."""

from __future__ import annotations

import datetime as dt

import peewee

from server.db import BaseModel, PreparedSelect, utcnow

EMAIL_MAX_LENGTH = 254
DISPLAY_NAME_MAX_LENGTH = 100
CLIENT_ADDRESS_MAX_LENGTH = 64


class User(BaseModel):
    """A person with an account; role is CUSTOMER, STAFF or ADMIN."""

    id = peewee.CharField(max_length=36, primary_key=True)
    email = peewee.CharField(max_length=EMAIL_MAX_LENGTH, unique=True)
    display_name = peewee.CharField(max_length=DISPLAY_NAME_MAX_LENGTH, default="")
    role = peewee.CharField(max_length=16)
    password_hash = peewee.TextField()
    disabled = peewee.BooleanField(default=False)
    email_verified = peewee.BooleanField(default=False)
    version = peewee.IntegerField(default=1)
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "users"


class LoginFailure(BaseModel):
    """One failed sign-in attempt for an email (registered or not) from a client address."""

    id = peewee.BigAutoField()
    email = peewee.CharField(max_length=EMAIL_MAX_LENGTH)
    # "" when the address was not known (calls from outside a server).
    client_address = peewee.CharField(max_length=CLIENT_ADDRESS_MAX_LENGTH, default="")
    attempt_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "login_failures"
        indexes = (
            (("email", "attempt_time"), False),
            (("email", "client_address", "attempt_time"), False),
            (("client_address", "attempt_time"), False),
        )


def get_by_email(email: str) -> User | None:
    """Returns the user with the given normalised email, or None."""
    return User.get_or_none(User.email == email)


_BY_ID = PreparedSelect(lambda user_id: User.select().where(User.id == user_id))


def get(user_id: str) -> User | None:
    """Returns the user with the given id, or None (prepared: GetCurrentUser reads it)."""
    return _BY_ID.first_model(User, user_id)


def _failures(email: str | None, client_address: str | None) -> peewee.ColumnBase:
    condition: peewee.ColumnBase = peewee.Value(True)
    if email is not None:
        condition &= LoginFailure.email == email
    if client_address is not None:
        condition &= LoginFailure.client_address == client_address
    return condition


def recent_failures(
    *, since: dt.datetime, email: str | None = None, client_address: str | None = None
) -> tuple[int, dt.datetime | None]:
    """Returns how many failed sign-ins since `since` match the email and/or the address, and
    when the oldest of them was."""
    count, oldest = (
        LoginFailure.select(
            peewee.fn.COUNT(LoginFailure.id), peewee.fn.MIN(LoginFailure.attempt_time)
        )
        .where(_failures(email, client_address) & (LoginFailure.attempt_time >= since))
        .scalar(as_tuple=True)
    )
    return int(count or 0), oldest


def record_failure(email: str, client_address: str) -> None:
    """Records a failed sign-in for `email` from `client_address`."""
    LoginFailure.create(email=email, client_address=client_address[:CLIENT_ADDRESS_MAX_LENGTH])


def clear_failures(
    *,
    email: str | None = None,
    client_address: str | None = None,
    before: dt.datetime | None = None,
) -> int:
    """Forgets failed sign-ins matching the email and/or the address (all, or those older than
    `before`); returns how many."""
    condition = _failures(email, client_address)
    if before is not None:
        condition &= LoginFailure.attempt_time < before
    return int(LoginFailure.delete().where(condition).execute())
