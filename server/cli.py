"""The `storefront` command: serve, migrate, seed, create-admin."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from server import logs, migrations
from server.config import VARIABLES, ConfigError, Settings
from server.db import init_database

DEMO_ADMIN_EMAIL = "admin@storefront.local"
log = logging.getLogger("storefront")


def _variables_help() -> str:
    width = max(len(v.name) for v in VARIABLES)
    lines = ["environment variables (default in brackets):"]
    for v in VARIABLES:
        default = f" [{v.default}]" if v.default else ""
        lines.append(f"  {v.name:<{width}}  {v.description}{default}")
    return "\n".join(lines)


def _serve(settings: Settings) -> int:
    from server.app import create_app  # imported here: grpc objects only when serving

    try:
        app = create_app(settings)
    except migrations.SchemaOutOfDate as exc:
        print(f"storefront: {exc}", file=sys.stderr)
        return 1
    app.start()
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not stop_requested.is_set():
            stop_requested.set()
            log.info("signal %s: draining", signal.Signals(signum).name)
            threading.Thread(target=app.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    host = settings.grpc_address.rpartition(":")[0]
    target = f"{host}:{app.port}"
    scheme = "https" if settings.tls_enabled else "http"
    log.info(
        "serving",
        extra={
            "grpc.address": target,
            "metrics.port": app.metrics_port,
            "database": settings.database_url.split("@")[-1],
        },
    )
    print(
        f"\nstorefront is serving gRPC on {target}"
        + (
            f", metrics on http://{settings.metrics_address.rpartition(':')[0]}:"
            f"{app.metrics_port}/metrics"
            if app.metrics_port
            else ""
        )
        + f"\n\nTry it:\n  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
        f"{scheme}://{target}/storefront.v1.IdentityService/ListSigningKeys\n"
        f"  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge --list-methods "
        f"{scheme}://{target}\n",
        file=sys.stderr,
        flush=True,
    )
    app.wait()
    return 0


def _migrate(settings: Settings) -> int:
    db = init_database(settings.database_url, pool_size=2)
    applied = migrations.migrate(db)
    print(
        f"storefront: applied {len(applied)} migration(s){': ' if applied else ''}"
        f"{', '.join(applied)}",
        file=sys.stderr,
    )
    return 0


def _seed(settings: Settings) -> int:
    """Creates the demo administrator on an empty database and says where its password is."""
    from server.domain import users
    from server.domain.passwords import PasswordHasher
    from server.models.user import User

    db = init_database(settings.database_url, pool_size=2)
    migrations.check_schema(db)
    credentials = settings.data_dir / "demo-admin-credentials.txt"
    with db.connection_context():
        if User.select().exists():
            print(
                f"storefront: database already has users; demo admin credentials (if this "
                f"machine made them) are in {credentials}",
                file=sys.stderr,
            )
            return 0
        user, password = users.create_admin(email=DEMO_ADMIN_EMAIL, passwords=PasswordHasher())
    credentials.parent.mkdir(parents=True, exist_ok=True)
    credentials.touch(mode=0o600)
    credentials.write_text(f"email: {user.email}\npassword: {password}\n")
    print(
        f"storefront: created demo admin {user.email}; password written to {credentials}",
        file=sys.stderr,
    )
    return 0


def _create_admin(settings: Settings, email: str) -> int:
    from server.domain import users
    from server.domain.passwords import PasswordHasher
    from server.errors import DomainError

    db = init_database(settings.database_url, pool_size=2)
    migrations.check_schema(db)
    with db.connection_context():
        try:
            user, password = users.create_admin(email=email, passwords=PasswordHasher())
        except DomainError as exc:
            print(f"storefront: {exc.message}", file=sys.stderr)
            return 1
    print(f"created admin {user.email} (id {user.id})\npassword (shown once): {password}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the storefront command line."""
    parser = argparse.ArgumentParser(prog="storefront", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="serve gRPC (and metrics) until SIGTERM/SIGINT",
        epilog=_variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser(
        "migrate",
        help="apply pending schema migrations",
        epilog=_variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser("seed", help="create the demo admin on an empty database")
    admin = commands.add_parser("create-admin", help="create an administrator, print its password")
    admin.add_argument("--email", required=True)
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"storefront: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        if args.command == "serve":
            return _serve(settings)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "seed":
            return _seed(settings)
        return _create_admin(settings, args.email)
    except migrations.SchemaOutOfDate as exc:
        print(f"storefront: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"storefront: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
