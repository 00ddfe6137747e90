"""Numbers outbox events shop-wide, in the order the dispatcher hands them on.

`position` stays NULL until the dispatcher takes the event; rows already handed on keep NULL (they
came before any watcher could ask for them).
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate

TABLE = "outbox_events"
# Frozen: the column as this migration adds it.
POSITION = peewee.BigIntegerField(null=True)


def up(db: peewee.Database) -> None:
    """Adds outbox_events.position and its unique index (watchers read by it)."""
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column(TABLE, "position", POSITION),
        migrator.add_index(TABLE, ("position",), True),
    )
