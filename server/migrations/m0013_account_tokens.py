"""Single-use account tokens: password resets and e-mail verifications, stored hashed."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class AccountToken(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    user_id = peewee.CharField(max_length=36)
    purpose = peewee.CharField(max_length=24)
    token_hash = peewee.CharField(max_length=64, unique=True)
    expire_time = peewee.DateTimeField()
    use_time = peewee.DateTimeField(null=True)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "account_tokens"
        # Counting a user's recent tokens of a purpose (the rate limit), and finding theirs.
        indexes = ((("user_id", "purpose", "create_time"), False),)


TABLES = [AccountToken]


def up(db: peewee.Database) -> None:
    """Creates account_tokens."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
