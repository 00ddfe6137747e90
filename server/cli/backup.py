"""`storefront backup FILE` and `storefront restore FILE`: the whole database to a file and back."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from server import backups
from server.cli.admin import DATABASE_VARIABLES
from server.config import Settings, variables_help
from server.db import connect_url

log = logging.getLogger("storefront")
# A refused restore (newer schema, data in the way) or a failed copy; 2 is for a command that
# could not run at all (missing tools, bad settings).
REFUSED = 1
CANNOT_RUN = 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds backup and restore to the command line."""
    backup_parser = commands.add_parser(
        "backup",
        help="copy the whole database to FILE while servers keep running (SQLite's online "
        "backup API; pg_dump on PostgreSQL)",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backup_parser.add_argument("file", type=Path, help="the backup file to write (replaced)")
    backup_parser.set_defaults(run=backup)
    restore_parser = commands.add_parser(
        "restore",
        help="replace the database with a backup (stop the servers first); refuses a newer "
        "schema, and a database holding data without --force",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore_parser.add_argument("file", type=Path, help="a file `storefront backup` wrote")
    restore_parser.add_argument(
        "--force", action="store_true", help="replace a database that holds data"
    )
    restore_parser.set_defaults(run=restore)


def backup(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the backup; logs its file, schema version and size."""
    return _reported("backup", lambda: backups.backup(settings.database_url, args.file))


def restore(settings: Settings, args: argparse.Namespace) -> int:
    """Restores the backup; logs what it restored and the migrations it applied after."""
    db = connect_url(settings.database_url, pool_size=1)
    try:
        return _reported(
            "restore",
            lambda: backups.restore(settings.database_url, args.file, db, force=args.force),
        )
    finally:
        db.close()


def _reported(action: str, run: Callable[[], backups.Report]) -> int:
    try:
        report = run()
    except backups.ToolMissing as exc:
        log.error("%s: %s", action, exc, extra={"exit_status": CANNOT_RUN})
        return CANNOT_RUN
    except backups.BackupError as exc:
        log.error("%s refused: %s", action, exc, extra={"exit_status": REFUSED})
        return REFUSED
    log.info(
        "%s done: %s (schema version %d, %d bytes)",
        action,
        report.path,
        report.schema_version,
        report.size_bytes,
        extra={
            "file": str(report.path),
            "schema_version": report.schema_version,
            "size_bytes": report.size_bytes,
            "migrations_applied": list(report.migrations_applied),
        },
    )
    return 0
