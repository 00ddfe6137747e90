"""Events written by domain changes in their own transaction, for delivery after commit."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class OutboxEvent(BaseModel):
    """One event about one aggregate (an order, a product), numbered per aggregate from 1.

    Written in the transaction that makes the change it describes, so it exists exactly when the
    change does. The delivery columns are bookkeeping for the dispatcher that sends events on.
    """

    id = peewee.CharField(max_length=36, primary_key=True)
    aggregate_type = peewee.CharField(max_length=32)
    aggregate_id = peewee.CharField(max_length=64)
    sequence = peewee.BigIntegerField()
    type = peewee.CharField(max_length=64)
    payload = peewee.TextField()
    create_time = peewee.DateTimeField()
    attempts = peewee.IntegerField(default=0)
    next_attempt_time = peewee.DateTimeField(null=True)
    lease_owner = peewee.CharField(max_length=64, null=True)
    lease_expire_time = peewee.DateTimeField(null=True)
    delivered_time = peewee.DateTimeField(null=True)
    last_error = peewee.TextField(null=True)
    # Shop-wide number given when the dispatcher hands the event on (WatchOrders reads by it).
    position = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "outbox_events"
        indexes = (
            (("aggregate_type", "aggregate_id", "sequence"), True),
            (("delivered_time", "create_time"), False),
            (("position",), True),
        )
