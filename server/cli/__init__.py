"""The `storefront` command: serve, migrate, seed, reconcile, create-admin, import-products."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server import logs, migrations
from server.cli import admin, import_products, serve
from server.cli.admin import DEMO_CATALOG
from server.config import ConfigError, Settings

__all__ = ["DEMO_CATALOG", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the storefront command line."""
    parser = argparse.ArgumentParser(prog="storefront", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(commands)
    admin.add_commands(commands)
    import_products.add_commands(commands)
    args = parser.parse_args(argv)

    if args.command == "import-products":
        # A client of a running server: it reads no server settings.
        logs.configure("WARNING")
        return import_products.import_products(args)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"storefront: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        code: int = args.run(settings, args)
    except migrations.SchemaOutOfDate as exc:
        print(f"storefront: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"storefront: configuration error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"storefront: {exc}", file=sys.stderr)
        return 1
    return code
