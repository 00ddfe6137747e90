"""Numbered, append-only schema migrations and the runner that applies them.

Each migration is a module `mNNNN_name.py` with `up(db)`. Its table definitions are frozen copies
made for that migration, never imports from `server.models`, so later model changes cannot alter
what an old migration does.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import peewee

from server.db import utcnow

log = logging.getLogger(__name__)

_NAME = re.compile(r"^m(\d{4})_[a-z0-9_]+$")
# Arbitrary constant naming storefront's migration lock among PostgreSQL advisory locks.
_PG_ADVISORY_LOCK_KEY = 7_305_001


class SchemaOutOfDate(Exception):
    """The database schema is older (or newer) than this code expects."""


@dataclass(frozen=True)
class Migration:
    """One numbered migration."""

    version: int
    name: str
    up: Callable[[peewee.Database], None]


def _history_model(db: peewee.Database) -> type[peewee.Model]:
    """Returns the migration-history model bound to `db` (a class per call: bind_ctx is not
    thread-safe, and several migrators may run at once)."""

    class AppliedMigration(peewee.Model):
        version = peewee.IntegerField(primary_key=True)
        name = peewee.TextField()
        applied_time = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "schema_migrations"

    return AppliedMigration


def discover() -> list[Migration]:
    """Returns every migration in this package, in version order."""
    found: list[Migration] = []
    for info in pkgutil.iter_modules(__path__):
        match = _NAME.match(info.name)
        if not match:
            continue
        module: ModuleType = importlib.import_module(f"{__name__}.{info.name}")
        found.append(Migration(int(match.group(1)), info.name, module.up))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration numbers must run 1..n without gaps, found {versions}")
    return found


def table_exists(db: peewee.Database, name: str) -> bool:
    """Whether `name` exists where unqualified queries look (PostgreSQL's search_path)."""
    if isinstance(db, peewee.PostgresqlDatabase):
        row = db.execute_sql("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row[0])
    return bool(db.table_exists(name))


def applied_versions(db: peewee.Database) -> set[int]:
    """Returns the versions recorded as applied in `db`."""
    if not table_exists(db, "schema_migrations"):
        return set()
    return {row[0] for row in db.execute_sql("SELECT version FROM schema_migrations")}


def migrate(db: peewee.Database) -> list[str]:
    """Applies every pending migration, each in its own transaction; returns the names applied.

    Safe to run from several processes at once: the first takes a lock, the others wait and then
    find nothing left to do.
    """
    applied: list[str] = []
    history = _history_model(db)
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    with db.connection_context():
        if postgres:
            # Held for the whole run: even CREATE TABLE IF NOT EXISTS races on PostgreSQL.
            db.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_ADVISORY_LOCK_KEY,))
        try:
            db.create_tables([history], safe=True)
            for migration in discover():
                with db.atomic():  # BEGIN IMMEDIATE on SQLite: one migrator at a time
                    if history.get_or_none(version=migration.version) is not None:
                        continue
                    log.info("applying migration %s", migration.name)
                    migration.up(db)
                    history.create(
                        version=migration.version, name=migration.name, applied_time=utcnow()
                    )
                    applied.append(migration.name)
        finally:
            if postgres:
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_ADVISORY_LOCK_KEY,))
    return applied


def check_schema(db: peewee.Database) -> None:
    """Raises SchemaOutOfDate unless exactly the known migrations have been applied."""
    expected = {m.version for m in discover()}
    with db.connection_context():
        current = applied_versions(db)
    if current == expected:
        return
    if current - expected:
        raise SchemaOutOfDate(
            f"the database schema (version {max(current)}) is newer than this code "
            f"(version {max(expected, default=0)}): deploy the newer code"
        )
    raise SchemaOutOfDate(
        f"the database schema is at version {max(current, default=0)}, this code needs version "
        f"{max(expected, default=0)}: run `storefront migrate` first"
    )
