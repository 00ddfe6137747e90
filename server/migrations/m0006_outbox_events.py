"""Creates the transactional outbox: events numbered per aggregate, with delivery bookkeeping."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class OutboxEvent(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    aggregate_type = peewee.CharField(max_length=32)
    aggregate_id = peewee.CharField(max_length=64)
    sequence = peewee.BigIntegerField(constraints=[peewee.Check("sequence >= 1")])
    type = peewee.CharField(max_length=64)
    payload = peewee.TextField()
    create_time = peewee.DateTimeField()
    attempts = peewee.IntegerField(default=0)
    next_attempt_time = peewee.DateTimeField(null=True)
    lease_owner = peewee.CharField(max_length=64, null=True)
    lease_expire_time = peewee.DateTimeField(null=True)
    delivered_time = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(null=True)

    class Meta:
        table_name = "outbox_events"
        indexes = (
            # One number per event of an aggregate: a second writer of the same number fails.
            (("aggregate_type", "aggregate_id", "sequence"), True),
            # The dispatcher's scan: undelivered events, oldest first.
            (("delivered_time", "create_time"), False),
        )


TABLES = [OutboxEvent]


def up(db: peewee.Database) -> None:
    """Creates outbox_events."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
