"""Backups: a consistent copy of the whole database, taken while servers run, and its restore.

SQLite: the online backup API copies the database page by page under its own locking (writers
keep going; the copy is one consistent state), then `PRAGMA integrity_check` must answer ok.
PostgreSQL: `pg_dump --format=custom` (one snapshot) and `pg_restore --single-transaction`,
PostgreSQL's own client tools, which must be installed (Debian: postgresql-client).

A restore refuses a backup from a newer schema than this code knows, and a target database that
holds data (users, products or orders) unless forced; after restoring a backup from an older
schema it applies the missing migrations. Stop the servers before restoring.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import peewee

from server import migrations

# Tables whose rows make a database "hold data": restoring over them needs --force.
DATA_TABLES = ("users", "products", "orders")
_SEARCH_PATH = re.compile(r"search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)")


class BackupError(Exception):
    """A backup or restore that cannot be done as asked; the message says why."""


class ToolMissing(BackupError):
    """PostgreSQL's client tools are not installed."""


@dataclass(frozen=True)
class Report:
    """What a backup or restore did: the file, the schema version in it, its size."""

    path: Path
    schema_version: int
    size_bytes: int
    migrations_applied: tuple[str, ...] = ()


def backup(url: str, target: Path) -> Report:
    """Writes a consistent copy of the database at `url` to `target` (replaced if present)."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        if _is_sqlite(url):
            version = _sqlite_backup(_sqlite_path(url), partial)
        else:
            version = _postgres_backup(url, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return Report(target, version, target.stat().st_size)


def restore(url: str, source: Path, db: peewee.Database, *, force: bool) -> Report:
    """Replaces the database at `url` (opened as `db`) with the backup in `source`."""
    source = source.resolve()
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    version = _sqlite_version(source) if _is_sqlite(url) else _postgres_version(source)
    newest = migrations.discover()[-1].version
    if version > newest:
        raise BackupError(
            f"the backup's schema (version {version}) is newer than this code (version "
            f"{newest}): restore it with the newer code"
        )
    if not force and _holds_data(db):
        raise BackupError(
            "the database holds data (users, products or orders); restoring would replace it: "
            "pass --force to do so"
        )
    if _is_sqlite(url):
        db.close()
        _sqlite_copy(source, Path(_sqlite_path(url)))
    else:
        schema = _search_path_schema(url)
        if schema is not None:
            # pg_restore --schema restores what is in the schema, not the schema itself: a
            # fresh database needs it made first.
            with db.connection_context(), db.atomic():
                db.execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')  # type: ignore[no-untyped-call]
        _postgres_restore(url, source)
    applied = migrations.migrate(db)
    return Report(source, version, source.stat().st_size, tuple(applied))


def _holds_data(db: peewee.Database) -> bool:
    with db.connection_context():
        for table in DATA_TABLES:
            if not migrations.table_exists(db, table):
                continue
            # `table` is one of DATA_TABLES, never input.
            sql = f'SELECT 1 FROM "{table}" LIMIT 1'  # noqa: S608
            cursor = db.execute_sql(sql)  # type: ignore[no-untyped-call]
            if cursor.fetchone() is not None:
                return True
    return False


# --- SQLite ---------------------------------------------------------------------------------------


def _is_sqlite(url: str) -> bool:
    return urlparse(url).scheme == "sqlite"


def _sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return path


def _sqlite_backup(path: str, target: Path) -> int:
    if not Path(path).is_file():
        raise BackupError(f"no SQLite database at {path}")
    source = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        # One self-contained file: the copy keeps the source's WAL mode otherwise.
        copy.execute("PRAGMA journal_mode=DELETE")
        _check_integrity(copy, target)
        return _versions_in(copy)
    finally:
        copy.close()
        source.close()


def _sqlite_copy(source: Path, target: Path) -> None:
    backup_file = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    database_file = sqlite3.connect(target, timeout=30)
    try:
        _check_integrity(backup_file, source)
        backup_file.backup(database_file)
    finally:
        database_file.close()
        backup_file.close()


def _check_integrity(connection: sqlite3.Connection, path: Path) -> None:
    answer = connection.execute("PRAGMA integrity_check").fetchall()
    if answer != [("ok",)]:
        raise BackupError(f"{path} fails SQLite's integrity check: {answer[0][0]}")


def _sqlite_version(path: Path) -> int:
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            return _versions_in(connection)
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a SQLite backup: {exc}") from None


def _versions_in(connection: sqlite3.Connection) -> int:
    try:
        row = connection.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    except sqlite3.DatabaseError:
        raise BackupError("the backup holds no storefront schema (no schema_migrations)") from None
    return int(row[0] or 0)


# --- PostgreSQL -----------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(
            f"{name} is not installed: PostgreSQL backups use its client tools (Debian: apt-get "
            "install postgresql-client, the same major version as the server or newer)"
        )
    return found


def _connection(url: str) -> tuple[str, list[str]]:
    """The libpq URL (without our psycopg3+pool scheme) and the --schema options of its
    search_path, if it sets one."""
    libpq = urlparse(url)._replace(scheme="postgresql").geturl()
    schema = _search_path_schema(url)
    return libpq, ([f"--schema={schema}"] if schema else [])


def _search_path_schema(url: str) -> str | None:
    """The schema a PostgreSQL URL's options put first on the search_path (a plain identifier),
    or None."""
    options = unquote(" ".join(parse_qs(urlparse(url).query).get("options", [])))
    match = _SEARCH_PATH.search(options)
    return match.group(1) if match else None


def _run(args: list[str]) -> str:
    # The tool's path from shutil.which, then options and paths we built: no shell, no input.
    done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        tool = Path(args[0]).name
        raise BackupError(f"{tool} failed: {done.stderr.strip().splitlines()[-1:] or ['?']}")
    return done.stdout


def _postgres_backup(url: str, target: Path) -> int:
    libpq, schema = _connection(url)
    _run(
        [
            _tool("pg_dump"),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            *schema,
            f"--file={target}",
            f"--dbname={libpq}",
        ]
    )
    return _postgres_version(target)


def _postgres_version(path: Path) -> int:
    listing = _run(
        [_tool("pg_restore"), "--data-only", "--table=schema_migrations", "-f", "-", str(path)]
    )
    versions = []
    copying = False
    for line in listing.splitlines():
        if line.startswith("COPY ") and "schema_migrations" in line:
            copying = True
        elif copying and line == "\\.":
            copying = False
        elif copying:
            versions.append(int(line.split("\t", 1)[0]))
    if not versions:
        raise BackupError(f"{path} holds no storefront schema (no schema_migrations rows)")
    return max(versions)


def _postgres_restore(url: str, source: Path) -> None:
    libpq, schema = _connection(url)
    _run(
        [
            _tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
            "--single-transaction",
            *schema,
            f"--dbname={libpq}",
            str(source),
        ]
    )
