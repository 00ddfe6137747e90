"""Serving processes, alive while their heartbeat is fresh."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class ServerInstance(BaseModel):
    """One running process (a `storefront serve` worker or replica) that may own claims.

    It refreshes `heartbeat_time` every few seconds; one whose heartbeat is older than
    `instances.DEAD_AFTER`, or whose row is gone, is dead, and what it claimed may be taken over.
    """

    id = peewee.CharField(max_length=36, primary_key=True)
    host = peewee.CharField(max_length=255)
    pid = peewee.IntegerField()
    start_time = peewee.DateTimeField()
    heartbeat_time = peewee.DateTimeField()

    class Meta:
        table_name = "server_instances"
