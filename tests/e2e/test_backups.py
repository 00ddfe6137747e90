"""`storefront backup` and `storefront restore` as an operator runs them, on both engines.

A backup taken while customers keep checking out restores to a consistent database: every order
has its lines and its subtotal is theirs, every product's stock is where its ledger says, every
paid order's sale is in the ledger. A restore refuses a database that holds data (without
--force) and a backup from a newer schema; without pg_dump a PostgreSQL backup says so.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import inventory_service_pb2 as inventory_pb

from server import migrations
from server.domain.principal import Role
from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import Running
from tests.e2e.test_checkout_service import order_request, product, sign_in

STOREFRONT = [sys.executable, "-m", "server"]
CHECKOUTS_BEFORE_BACKUP = 5

# Consistency checks on a restored database; each counts the rows that break it (all must be 0).
BROKEN = {
    "orders without lines": """
        SELECT COUNT(*) FROM orders o
        WHERE NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id)""",
    "orders whose subtotal is not their lines'": """
        SELECT COUNT(*) FROM orders o
        WHERE o.subtotal_minor <> (
            SELECT SUM(l.line_total_minor) FROM order_lines l WHERE l.order_id = o.id)""",
    "stock levels not where the ledger left them": """
        SELECT COUNT(*) FROM stock_levels s
        JOIN stock_movements m ON m.id = (
            SELECT MAX(id) FROM stock_movements WHERE product_id = s.product_id)
        WHERE m.on_hand_after <> s.on_hand OR m.reserved_after <> s.reserved""",
    "paid orders whose sale is not in the ledger": """
        SELECT COUNT(*) FROM orders o
        WHERE o.state = 'PAID' AND (
            SELECT COALESCE(SUM(-m.on_hand_delta), 0) FROM stock_movements m
            WHERE m.reference = 'order:' || o.id AND m.kind = 'SALE'
        ) <> (SELECT SUM(l.quantity) FROM order_lines l WHERE l.order_id = o.id)""",
}


def storefront(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STOREFRONT, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def environment(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    return {
        **keep,
        "STOREFRONT_DATA_DIR": str(data_dir),
        "STOREFRONT_DATABASE_URL": url,
        **extra,
    }


class Target:
    """An empty database to restore into (a SQLite file, or a fresh PostgreSQL database whose
    search_path names the source's schema), and SQL on it."""

    def __init__(self, url: str, query: Callable[[str], Any]) -> None:
        self.url = url
        self.query = query


@pytest.fixture
def target(e2e_database_url: tuple[Path, str], tmp_path: Path) -> Iterator[Target]:
    _, source_url = e2e_database_url
    if source_url.startswith("sqlite"):
        path = tmp_path / "restored.db"

        def sqlite_query(sql: str) -> Any:
            with sqlite3.connect(path) as connection:
                return connection.execute(sql).fetchone()[0]

        yield Target(f"sqlite:///{path}", sqlite_query)
        return
    schema = source_url.rsplit("search_path%3D", 1)[1]
    name = f"restore_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    libpq = f"{base}/{name}"  # a fresh database: the restore makes the schema

    def postgres_query(sql: str) -> Any:
        with psycopg.connect(libpq, options=f"-c search_path={schema}") as connection:
            row = connection.execute(sql).fetchone()
            assert row is not None
            return row[0]

    try:
        yield Target(f"{libpq}?options={quote(f'-c search_path={schema}')}", postgres_query)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_backup_taken_during_checkouts_restores_to_a_consistent_database(
    running: Running, e2e_database_url: tuple[Path, str], target: Target, tmp_path: Path
) -> None:
    data_dir, url = e2e_database_url
    staff = running.login(Role.STAFF)
    product_ids = [product(running, on_hand=0) for _ in range(3)]
    for product_id in product_ids:  # stock through the ledger, as operators add it
        staff.inventory.AdjustStock(
            inventory_pb.AdjustStockRequest(
                product_id=product_id, delta=1000, reason="delivery", request_id=str(uuid.uuid4())
            )
        )
    placed = threading.Semaphore(0)
    stop = threading.Event()
    failures: list[BaseException] = []

    def shop(number: int) -> None:
        try:
            customer = sign_in(running)
            while not stop.is_set():
                for product_id in product_ids[: 1 + number % 3]:
                    customer.client.cart.AddCartItem(
                        cart_pb.AddCartItemRequest(product_id=product_id, quantity=1)
                    )
                customer.client.checkout.PlaceOrder(order_request())
                placed.release()
        except BaseException as exc:
            failures.append(exc)
            placed.release()

    shoppers = [threading.Thread(target=shop, args=(n,), daemon=True) for n in range(4)]
    for thread in shoppers:
        thread.start()
    for _ in range(CHECKOUTS_BEFORE_BACKUP):
        assert placed.acquire(timeout=60)
    backup_file = tmp_path / "backup.bin"

    done = storefront(environment(data_dir, url), "backup", str(backup_file))

    for _ in range(CHECKOUTS_BEFORE_BACKUP):  # still checking out after the backup
        assert placed.acquire(timeout=60)
    stop.set()
    for thread in shoppers:
        thread.join(timeout=60)
    assert not failures, failures
    assert done.returncode == 0, done.stderr
    assert f'"schema_version": {migrations.discover()[-1].version}' in done.stderr

    restored = storefront(environment(tmp_path, target.url), "restore", str(backup_file))

    assert restored.returncode == 0, restored.stderr
    orders = target.query("SELECT COUNT(*) FROM orders")
    assert orders >= CHECKOUTS_BEFORE_BACKUP
    with running.db.connection_context():
        assert orders < running.db.execute_sql("SELECT COUNT(*) FROM orders").fetchone()[0]
    for check, sql in BROKEN.items():
        assert target.query(sql) == 0, check


def test_a_restore_refuses_a_database_with_data_unless_forced(
    running: Running, e2e_database_url: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, url = e2e_database_url
    product(running)  # the database holds data
    env = environment(data_dir, url)
    backup_file = tmp_path / "backup.bin"
    assert storefront(env, "backup", str(backup_file)).returncode == 0
    running.app.stop(grace=0)

    refused = storefront(env, "restore", str(backup_file))
    assert refused.returncode == 1
    assert "pass --force" in refused.stderr
    forced = storefront(env, "restore", "--force", str(backup_file))
    assert forced.returncode == 0, forced.stderr


def test_a_restore_refuses_a_backup_from_a_newer_schema(
    e2e_database_url: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, url = e2e_database_url
    if not url.startswith("sqlite"):
        pytest.skip("the SQLite file is edited to fake a newer schema; PostgreSQL reads the same")
    backup_file = tmp_path / "backup.bin"
    env = environment(data_dir, url)
    assert storefront(env, "backup", str(backup_file)).returncode == 0
    with sqlite3.connect(backup_file) as connection:
        connection.execute(
            "INSERT INTO schema_migrations (version, name, applied_time) "
            "VALUES (999, 'm0999_future', '2030-01-01 00:00:00')"
        )
    refused = storefront(
        environment(tmp_path, f"sqlite:///{tmp_path / 'new.db'}"), "restore", str(backup_file)
    )
    assert refused.returncode == 1
    assert "newer than this code" in refused.stderr


def test_without_pg_dump_a_postgresql_backup_says_so(
    e2e_database_url: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, url = e2e_database_url
    if url.startswith("sqlite"):
        pytest.skip("SQLite needs no outside tool")
    bare = tmp_path / "bin"
    bare.mkdir()
    env = environment(data_dir, url, PATH=str(bare))
    done = storefront(env, "backup", str(tmp_path / "backup.bin"))
    assert done.returncode == 2
    assert "pg_dump is not installed" in done.stderr
