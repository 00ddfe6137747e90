"""`storefront migrate`, `seed`, `reconcile` and `create-admin`: one-off jobs on the database."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from google.protobuf.json_format import ParseDict, ParseError
from storefront.v1 import product_pb2

from server import catalog_files, migrations
from server.app import build_payment_gateway, payment_reconciler
from server.config import SHIPPED_DATA_DIR, Settings, variables_help
from server.db import database, init_database
from server.domain import inventory, products, users
from server.domain.passwords import PasswordHasher
from server.errors import DomainError, InvalidArgument, violations_summary
from server.models.product import Product
from server.models.user import User
from server.services.catalog_service import fields_from_proto

DEMO_ADMIN_EMAIL = "admin@storefront.local"
# The demo catalog `storefront seed` loads into a database without products.
DEMO_CATALOG = SHIPPED_DATA_DIR / "catalog.jsonl"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds migrate, seed, reconcile and create-admin to the command line."""
    commands.add_parser(
        "migrate",
        help="apply pending schema migrations",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(run=migrate)
    seed_parser = commands.add_parser(
        "seed",
        help="create the demo admin on a database without users and load the demo catalog "
        "into a database without products",
    )
    seed_parser.add_argument(
        "--catalog",
        type=Path,
        default=DEMO_CATALOG,
        help="JSON Lines catalog to load (default: %(default)s)",
    )
    seed_parser.set_defaults(run=seed)
    commands.add_parser(
        "reconcile",
        help="settle pending payments, expired reservations and pending refunds once (http "
        "gateway; for cron when STOREFRONT_RECONCILE_INTERVAL_SECONDS is 0)",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(run=reconcile)
    admin_parser = commands.add_parser(
        "create-admin", help="create an administrator, print its password"
    )
    admin_parser.add_argument("--email", required=True)
    admin_parser.set_defaults(run=create_admin)


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Applies the pending migrations."""
    db = init_database(settings.database_url, pool_size=2)
    applied = migrations.migrate(db)
    print(
        f"storefront: applied {len(applied)} migration(s){': ' if applied else ''}"
        f"{', '.join(applied)}",
        file=sys.stderr,
    )
    return 0


def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Runs one pass of the serving process's reconciler job; prints its report as JSON."""
    if settings.payment_gateway == "sandbox":
        # The sandbox's charges live in the serving process's memory: asked from here it would
        # know of none, and every pending order would be failed.
        print(
            "storefront: the sandbox gateway is reconciled inside `storefront serve` "
            "(STOREFRONT_RECONCILE_INTERVAL_SECONDS); this command needs the http gateway",
            file=sys.stderr,
        )
        return 2
    db = init_database(settings.database_url, pool_size=2)
    migrations.check_schema(db)
    report = payment_reconciler(settings, db, build_payment_gateway(settings)).run_once()
    print(json.dumps(dataclasses.asdict(report), sort_keys=True))
    return 0


def seed(settings: Settings, args: argparse.Namespace) -> int:
    """Creates the demo admin on a database without users; loads the catalog into one without
    products."""
    db = init_database(settings.database_url, pool_size=2)
    migrations.check_schema(db)
    with db.connection_context():
        _seed_admin(settings)
        return _seed_catalog(args.catalog)


def _seed_admin(settings: Settings) -> None:
    """Creates the demo administrator on a database without users and says where its password is."""
    credentials = settings.data_dir / "demo-admin-credentials.txt"
    if User.select().exists():
        print(
            f"storefront: database already has users; demo admin credentials (if this "
            f"machine made them) are in {credentials}",
            file=sys.stderr,
        )
        return
    user, password = users.create_admin(email=DEMO_ADMIN_EMAIL, passwords=PasswordHasher())
    credentials.parent.mkdir(parents=True, exist_ok=True)
    credentials.touch(mode=0o600)
    credentials.write_text(f"email: {user.email}\npassword: {password}\n")
    print(
        f"storefront: created demo admin {user.email}; password written to {credentials}",
        file=sys.stderr,
    )


def _seed_catalog(catalog: Path) -> int:
    """Loads the catalog's products and stock through the domain, all or nothing."""
    if Product.select().exists():
        print("storefront: database already has products; catalog not loaded", file=sys.stderr)
        return 0
    rows = list(catalog_files.read_rows(catalog))
    for row in rows:
        if row.error:
            print(f"storefront: {catalog}: line {row.line}: {row.error}", file=sys.stderr)
            return 1

    try:
        with database.atomic():
            for row in rows:
                # The proto3 JSON mapping read the way ImportProducts reads its messages.
                message = ParseDict(row.product, product_pb2.Product())
                product = products.upsert_by_sku(fields_from_proto(message))
                if row.stock:
                    inventory.adjust(
                        product_id=product.id, delta=row.stock, reason="demo catalog", actor="seed"
                    )
    except (DomainError, ParseError, ValueError) as exc:
        print(f"storefront: {catalog}: line {row.line}: {_describe(exc)}", file=sys.stderr)
        return 1
    print(f"storefront: seeded {len(rows)} products from {catalog}", file=sys.stderr)
    return 0


def _describe(exc: Exception) -> str:
    """Returns an error's message with its field violations, for one line of output."""
    if isinstance(exc, InvalidArgument) and exc.violations:
        return violations_summary(exc.violations)
    return exc.message if isinstance(exc, DomainError) else str(exc)


def create_admin(settings: Settings, args: argparse.Namespace) -> int:
    """Creates an administrator and prints its generated password once."""
    db = init_database(settings.database_url, pool_size=2)
    migrations.check_schema(db)
    with db.connection_context():
        try:
            user, password = users.create_admin(email=args.email, passwords=PasswordHasher())
        except DomainError as exc:
            print(f"storefront: {_describe(exc)}", file=sys.stderr)
            return 1
    print(f"created admin {user.email} (id {user.id})\npassword (shown once): {password}")
    return 0
