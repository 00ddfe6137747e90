"""The units a refund by lines refunded: order_refunds.lines, a JSON array of
{"line_id", "quantity"}; "[]" for refunds of an amount (all earlier ones)."""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate

# Frozen: the column as this migration adds it.
LINES = peewee.TextField(default="[]")


def up(db: peewee.Database) -> None:
    """Adds order_refunds.lines."""
    migrate(SchemaMigrator.from_database(db).add_column("order_refunds", "lines", LINES))
