"""The `storefront` command: serve, migrate, seed, reconcile, create-admin, import-products,
backup, restore, report."""

from __future__ import annotations

import os

# Read once, when grpc is first imported: without it gRPC's C core adds plain-text lines to our
# JSON log stream (a failed bind, which we report ourselves). GRPC_VERBOSITY=ERROR in the
# environment brings them back for debugging.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import importlib.metadata
import logging
import platform
from collections.abc import Sequence

import grpc
import peewee

from server import logs, migrations
from server.cli import admin, backup, import_products, report, serve
from server.cli.admin import DEMO_CATALOG
from server.config import ConfigError, Settings

__all__ = ["DEMO_CATALOG", "STARTUP_FAILURE", "main"]

# The exit status of a command that could not start or run: a bad setting, an unreachable or
# out-of-date database, an unreadable file. A command's own failures (a row it refused) exit 1.
STARTUP_FAILURE = 2

log = logging.getLogger("storefront")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the storefront command line."""
    parser = argparse.ArgumentParser(
        prog="storefront",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the version on one line
    )
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(commands)
    admin.add_commands(commands)
    import_products.add_commands(commands)
    backup.add_commands(commands)
    report.add_commands(commands)
    args = parser.parse_args(argv)

    if args.command == "import-products":
        # A client of a running server: it reads no server settings, and its stderr is a
        # progress display for a person, not a log stream.
        logs.configure("WARNING")
        return import_products.import_products(args)
    # stderr is a JSON log stream from the first line, so a failure before the settings are
    # read is one JSON line too.
    logs.configure("INFO")
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level)
        code: int = args.run(settings, args)
    except ConfigError as exc:
        return _cannot_run(f"configuration error: {exc}")
    except migrations.SchemaOutOfDate as exc:
        return _cannot_run(str(exc))
    except peewee.DatabaseError as exc:
        # psycopg and sqlite3 name the host, port or file, never the password.
        return _cannot_run(f"database unreachable: {_first_line(exc)}")
    except (OSError, ValueError) as exc:
        return _cannot_run(_first_line(exc))
    except Exception as exc:
        log.debug("%s failed", args.command, exc_info=True)  # the traceback, at DEBUG only
        return _cannot_run(f"{args.command} failed: {type(exc).__name__}: {_first_line(exc)}")
    return code


def version() -> str:
    """Returns the version line: the package, its newest migration, grpcio and Python."""
    newest = migrations.discover()[-1].name
    return (
        f"storefront {importlib.metadata.version('storefront')} (schema {newest}, "
        f"grpcio {grpc.__version__}, Python {platform.python_version()})"
    )


def _cannot_run(message: str) -> int:
    log.error(message, extra={"exit_status": STARTUP_FAILURE})
    return STARTUP_FAILURE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
