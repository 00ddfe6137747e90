"""Records the client address of each failed sign-in, so throttling counts per email and address.

Existing rows get "" (address unknown); they age out of the 15-minute window like any other.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate

TABLE = "login_failures"
# Frozen: the column as this migration adds it.
CLIENT_ADDRESS = peewee.CharField(max_length=64, default="")


def up(db: peewee.Database) -> None:
    """Adds login_failures.client_address and the indexes the throttle's counts use."""
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column(TABLE, "client_address", CLIENT_ADDRESS),
        migrator.add_index(TABLE, ("email", "client_address", "attempt_time"), False),
        migrator.add_index(TABLE, ("client_address", "attempt_time"), False),
    )
