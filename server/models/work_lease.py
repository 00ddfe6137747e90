"""Leases on units of background work, so that each is done by one process at a time."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class WorkLease(BaseModel):
    """One unit of work (`kind`, `item`: a pending order to reconcile, a refund to send, a job's
    pass) held by the process instance `owner` until `expire_time`."""

    kind = peewee.CharField(max_length=32)
    item = peewee.CharField(max_length=64)
    owner = peewee.CharField(max_length=36)
    expire_time = peewee.DateTimeField()

    class Meta:
        table_name = "work_leases"
        primary_key = peewee.CompositeKey("kind", "item")
