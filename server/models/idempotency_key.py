"""Idempotency keys: the first response to a request_id, per principal."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow


class IdempotencyKey(BaseModel):
    """A request_id seen from one principal: in flight, or done with its stored response."""

    principal = peewee.CharField(max_length=64)
    key = peewee.CharField(max_length=64)
    operation = peewee.CharField(max_length=100)
    request_hash = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=16)  # IN_FLIGHT or DONE
    response = peewee.BlobField(null=True)
    create_time = peewee.DateTimeField(default=utcnow)
    expire_time = peewee.DateTimeField()
    # The process instance that claimed the key (None: claimed outside a serving process).
    owner = peewee.CharField(max_length=36, null=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("principal", "key")
