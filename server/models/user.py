"""User accounts and failed-login records."""

from __future__ import annotations

import datetime as dt

import peewee

from server.db import BaseModel, utcnow

EMAIL_MAX_LENGTH = 254
DISPLAY_NAME_MAX_LENGTH = 100


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
    """One failed sign-in attempt for an email (registered or not), for throttling."""

    id = peewee.BigAutoField()
    email = peewee.CharField(max_length=EMAIL_MAX_LENGTH)
    attempt_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "login_failures"
        indexes = ((("email", "attempt_time"), False),)


def get_by_email(email: str) -> User | None:
    """Returns the user with the given normalised email, or None."""
    return User.get_or_none(User.email == email)


def get(user_id: str) -> User | None:
    """Returns the user with the given id, or None."""
    return User.get_or_none(User.id == user_id)


def count_recent_failures(email: str, *, since: dt.datetime) -> int:
    """Returns how many failed sign-ins `email` has had since `since`."""
    return int(
        LoginFailure.select()
        .where((LoginFailure.email == email) & (LoginFailure.attempt_time >= since))
        .count()
    )


def record_failure(email: str) -> None:
    """Records a failed sign-in for `email`."""
    LoginFailure.create(email=email)


def clear_failures(email: str, *, before: dt.datetime | None = None) -> None:
    """Forgets failed sign-ins for `email` (all, or those older than `before`)."""
    condition = LoginFailure.email == email
    if before is not None:
        condition &= LoginFailure.attempt_time < before
    LoginFailure.delete().where(condition).execute()
