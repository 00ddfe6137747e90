"""Lets many processes share the work: live instances, leases on background work, and the owner
of each idempotency claim (so a claim of a dead process is taken over at once).

Existing claims get no owner; they are taken over after the stale-claim timeout, as before.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class ServerInstance(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    host = peewee.CharField(max_length=255)
    pid = peewee.IntegerField()
    start_time = peewee.DateTimeField()
    heartbeat_time = peewee.DateTimeField()

    class Meta:
        table_name = "server_instances"


class WorkLease(_Frozen):
    kind = peewee.CharField(max_length=32)
    item = peewee.CharField(max_length=64)
    owner = peewee.CharField(max_length=36)
    expire_time = peewee.DateTimeField()

    class Meta:
        table_name = "work_leases"
        primary_key = peewee.CompositeKey("kind", "item")


TABLES = [ServerInstance, WorkLease]
# Frozen: the column as this migration adds it.
CLAIM_OWNER = peewee.CharField(max_length=36, null=True)


def up(db: peewee.Database) -> None:
    """Creates server_instances and work_leases; adds idempotency_keys.owner."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.add_column("idempotency_keys", "owner", CLAIM_OWNER))
