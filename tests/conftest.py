"""Shared fixtures: a migrated database on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import peewee
import pytest

from server import db as dbmod
from server import migrations
from server.migrations import m0003_currency
from server.models.product import Product
from server.models.stock import StockLevel

POSTGRES_URL = os.environ.get("STOREFRONT_TEST_POSTGRES_URL", "")
ENGINES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A private PostgreSQL schema for this test session, dropped at the end."""
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("STOREFRONT_TEST_POSTGRES_URL must be set in CI")
        pytest.skip("STOREFRONT_TEST_POSTGRES_URL not set")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = dbmod.connect_url(POSTGRES_URL, pool_size=1)
    with admin.connection_context():
        admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    yield schema
    with admin.connection_context():
        admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
    admin.close_all()  # type: ignore[attr-defined]


@pytest.fixture(scope="session", params=ENGINES)
def engine_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[peewee.Database]:
    """A migrated database per engine, shared by the session; tests get it emptied."""
    engine: str = request.param
    schema: str | None = None
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'storefront.db'}"
        params: dict[str, object] = {}
    else:
        schema = request.getfixturevalue("postgres_schema")
        url, params = POSTGRES_URL, {"options": f"-c search_path={schema}"}
    db = dbmod.connect_url(url, pool_size=32, **params)
    migrations.migrate(db)
    db.storefront_url = url  # type: ignore[attr-defined]
    db.storefront_params = params  # type: ignore[attr-defined]
    db.storefront_schema = schema  # type: ignore[attr-defined]
    yield db
    if not db.is_closed():
        db.close()
    close_all = getattr(db, "close_all", None)
    if close_all:
        close_all()


def empty_tables(db: peewee.Database) -> None:
    """Deletes every row except the migration history, then restores the seeded exchange
    rates."""
    with db.connection_context():
        schema = getattr(db, "storefront_schema", None)
        # The SQLite full-text index follows products through triggers; it is not emptied itself.
        tables = [
            t
            for t in db.get_tables(schema=schema)
            if t != "schema_migrations" and not t.startswith("products_fts")
        ]
        if not tables:
            return
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
        else:
            db.execute_sql("PRAGMA foreign_keys = OFF")
            for table in tables:
                db.execute_sql(f'DELETE FROM "{table}"')
            db.execute_sql("PRAGMA foreign_keys = ON")
        reseed_exchange_rates(db)


def reseed_exchange_rates(db: peewee.Database) -> None:
    """Puts the migration's seed rates back, as a fresh database has them."""
    rows = m0003_currency.seed_rows(dbmod.utcnow())
    table = peewee.Table("exchange_rates", list(rows[0])).bind(db)
    with db.atomic():
        table.delete().execute()
        table.insert(rows).execute()


@pytest.fixture
def db(engine_db: peewee.Database) -> Iterator[peewee.Database]:
    """The shared proxy pointed at an empty, migrated database (SQLite, then PostgreSQL)."""
    empty_tables(engine_db)
    dbmod.database.initialize(engine_db)
    yield engine_db  # connects on first query (peewee autoconnect)
    if not engine_db.is_closed():
        engine_db.close()


def insert_product(*, on_hand: int = 0, reserved: int = 0, state: str = "ACTIVE") -> str:
    """Creates a product and its stock row straight in the database; returns its id."""
    product_id = str(uuid.uuid4())
    with dbmod.database.atomic():
        Product.create(
            id=product_id,
            sku=f"SKU-{product_id[:8]}",
            name="Widget",
            price_currency="EUR",
            price_minor=1000,
            state=state,
        )
        StockLevel.create(product=product_id, on_hand=on_hand, reserved=reserved)
    return product_id
