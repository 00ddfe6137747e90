"""Single-use tokens that recover an account (password reset) or verify its e-mail."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class AccountToken(BaseModel):
    """One token, known to the database only by its SHA-256 (domain/account_recovery.py)."""

    id = peewee.CharField(max_length=36, primary_key=True)
    user_id = peewee.CharField(max_length=36)
    purpose = peewee.CharField(max_length=24)  # PASSWORD_RESET or EMAIL_VERIFICATION
    token_hash = peewee.CharField(max_length=64, unique=True)
    expire_time = peewee.DateTimeField()
    use_time = peewee.DateTimeField(null=True)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "account_tokens"
        indexes = ((("user_id", "purpose", "create_time"), False),)
