"""Creates users, login failures, sessions, refresh tokens and service accounts."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class User(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    email = peewee.CharField(max_length=254, unique=True)
    display_name = peewee.CharField(max_length=100, default="")
    role = peewee.CharField(
        max_length=16, constraints=[peewee.Check("role IN ('CUSTOMER', 'STAFF', 'ADMIN')")]
    )
    password_hash = peewee.TextField()
    disabled = peewee.BooleanField(default=False)
    email_verified = peewee.BooleanField(default=False)
    version = peewee.IntegerField(default=1, constraints=[peewee.Check("version >= 1")])
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "users"
        indexes = ((("create_time", "id"), False),)


class LoginFailure(_Frozen):
    id = peewee.BigAutoField()
    email = peewee.CharField(max_length=254)
    attempt_time = peewee.DateTimeField()

    class Meta:
        table_name = "login_failures"
        indexes = ((("email", "attempt_time"), False),)


class Session(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", index=True)
    create_time = peewee.DateTimeField()
    expire_time = peewee.DateTimeField()
    revoke_time = peewee.DateTimeField(null=True)
    revoke_reason = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "sessions"


class RefreshToken(_Frozen):
    token_hash = peewee.CharField(max_length=64, primary_key=True)
    session = peewee.ForeignKeyField(Session, on_delete="CASCADE", index=True)
    create_time = peewee.DateTimeField()
    use_time = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "refresh_tokens"


class ServiceAccount(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    client_id = peewee.CharField(max_length=64, unique=True)
    secret_hash = peewee.CharField(max_length=64)
    display_name = peewee.CharField(max_length=100)
    disabled = peewee.BooleanField(default=False)
    created_by = peewee.CharField(max_length=36)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "service_accounts"


TABLES = [User, LoginFailure, Session, RefreshToken, ServiceAccount]


def up(db: peewee.Database) -> None:
    """Creates the identity tables."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
