"""`storefront migrate`, `seed`, `reconcile` and `create-admin`: one-off jobs on the database."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from google.protobuf.json_format import ParseDict, ParseError
from storefront.v1 import product_pb2

from server import catalog_files, migrations
from server.app import build_payment_gateway, payment_reconciler
from server.config import SHIPPED_DATA_DIR, ConfigError, Settings, variables_help
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

# The settings each command reads, listed by its --help; every command also refuses unknown
# STOREFRONT_* variables and invalid values of the others.
DATABASE_VARIABLES = (
    "STOREFRONT_ENVIRONMENT",
    "STOREFRONT_DATA_DIR",
    "STOREFRONT_DATABASE_URL",
    "STOREFRONT_LOG_LEVEL",
)
RECONCILE_VARIABLES = (
    *DATABASE_VARIABLES,
    "STOREFRONT_PAYMENT_GATEWAY",
    "STOREFRONT_PAYMENT_BASE_URL",
    "STOREFRONT_PAYMENT_SECRET_KEY_FILE",
    "STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS",
    "STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS",
    "STOREFRONT_PAYMENT_MAX_RETRIES",
    "STOREFRONT_PAYMENT_BACKOFF_SECONDS",
    "STOREFRONT_RECONCILE_AFTER_SECONDS",
    "STOREFRONT_RESERVATION_TTL_SECONDS",
)

log = logging.getLogger("storefront")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds migrate, seed, reconcile and create-admin to the command line."""
    commands.add_parser(
        "migrate",
        help="apply pending schema migrations",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(run=migrate)
    seed_parser = commands.add_parser(
        "seed",
        help="create the demo admin on a database without users and load the demo catalog "
        "into a database without products",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        epilog=variables_help(RECONCILE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(run=reconcile)
    admin_parser = commands.add_parser(
        "create-admin",
        help="create an administrator, print its password",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    admin_parser.add_argument("--email", required=True)
    admin_parser.set_defaults(run=create_admin)


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Applies the pending migrations."""
    db = init_database(settings.database_url, pool_size=2)
    applied = migrations.migrate(db)
    log.info(
        "applied %d migration(s)%s%s",
        len(applied),
        ": " if applied else "",
        ", ".join(applied),
        extra={"migrations": applied},
    )
    return 0


def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Runs one pass of the serving process's reconciler job; prints its report as JSON."""
    if settings.payment_gateway == "sandbox":
        # The sandbox's charges live in the serving process's memory: asked from here it would
        # know of none, and every pending order would be failed.
        raise ConfigError(
            "STOREFRONT_PAYMENT_GATEWAY: the sandbox gateway is reconciled inside `storefront "
            "serve` (STOREFRONT_RECONCILE_INTERVAL_SECONDS); this command needs the http gateway"
        )
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
        log.info(
            "database already has users; demo admin credentials (if this machine made them) "
            "are in %s",
            credentials,
        )
        return
    user, password = users.create_admin(email=DEMO_ADMIN_EMAIL, passwords=PasswordHasher())
    credentials.parent.mkdir(parents=True, exist_ok=True)
    credentials.touch(mode=0o600)
    credentials.write_text(f"email: {user.email}\npassword: {password}\n")
    log.info("created demo admin %s; password written to %s", user.email, credentials)


def _seed_catalog(catalog: Path) -> int:
    """Loads the catalog's products and stock through the domain, all or nothing."""
    if Product.select().exists():
        log.info("database already has products; catalog not loaded")
        return 0
    rows = list(catalog_files.read_rows(catalog))
    for row in rows:
        if row.error:
            log.error("%s: line %d: %s", catalog, row.line, row.error)
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
        log.error("%s: line %d: %s", catalog, row.line, describe(exc))
        return 1
    log.info("seeded %d products from %s", len(rows), catalog)
    return 0


def describe(exc: Exception) -> str:
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
            log.error(describe(exc))
            return 1
    print(f"created admin {user.email} (id {user.id})\npassword (shown once): {password}")
    return 0
