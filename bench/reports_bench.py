"""Reports over a large order history: how long each ReportService call takes, with and without
migration 15's indexes.

For each database (SQLite in a temporary directory; PostgreSQL in a throwaway database on
--postgres-url): `storefront migrate` and `seed`, then --orders orders written straight into the
tables (1 to 4 lines of the demo catalog's products each; EUR, USD and GBP; paid at random times
over the last year, 3% declined, 10% with a discount, 5% partly refunded), then ANALYZE (VACUUM
ANALYZE on PostgreSQL, as autovacuum would have), then a server. The demo
admin calls each report --calls times; the median and the slowest call are the figures. Then the
report indexes are dropped and the same calls are timed again.

`reports_rows()` is what bench/run.py calls; `python -m bench.reports_bench` (or
`python bench/reports_bench.py`) prints the table, `--json` writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peewee
from storefront.v1 import report_service_pb2 as pb
from storefront_client import StorefrontClient

from bench.run import (
    STOREFRONT,
    demo_admin,
    postgres_database,
    run_command,
    serving,
    storefront_env,
)
from server.db import connect_url, utcnow
from server.migrations.m0015_report_indexes import INDEXES as REPORT_INDEXES

SQLITE, POSTGRES = "SQLite", "PostgreSQL"
CURRENCIES = (("EUR", 0.7), ("USD", 0.2), ("GBP", 0.1))
REFUND_REASONS = ("damaged", "late delivery", "wrong size", "changed mind")
ROWS_PER_BATCH = 2000


def parser() -> argparse.ArgumentParser:
    """The options, with the sizes `make bench` uses as defaults."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--orders", type=int, default=100_000, help="orders to write")
    options.add_argument("--calls", type=int, default=5, help="calls per report and setting")
    options.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOREFRONT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    options.add_argument("--no-postgres", action="store_true", help="SQLite only")
    options.add_argument("--json", type=Path, help="also write the rows to this file")
    return options


def sizes_of(options: argparse.Namespace) -> dict[str, Any]:
    """The sizes a run used, for the report's settings."""
    return {"orders": options.orders, "calls": options.calls}


# --- the history ----------------------------------------------------------------------------------


def write_history(db: peewee.Database, orders: int, seed: int = 15) -> dict[str, int]:
    """Writes `orders` orders with their lines and refunds straight into the tables (one
    transaction, executemany); returns the row counts."""
    rng = random.Random(seed)
    products = db.execute_sql("SELECT id, sku, name, price_minor FROM products").fetchall()  # type: ignore[no-untyped-call]
    if not products:
        sys.exit("bench: the seeded database has no products")
    now = utcnow()
    order_rows: list[tuple[Any, ...]] = []
    line_rows: list[tuple[Any, ...]] = []
    refund_rows: list[tuple[Any, ...]] = []
    codes = [code for code, _ in CURRENCIES]
    weights = [weight for _, weight in CURRENCIES]
    for _ in range(orders):
        order_id = str(uuid.uuid4())
        currency = rng.choices(codes, weights)[0]
        created = now - dt.timedelta(seconds=rng.randrange(365 * 86400))
        declined = rng.random() < 0.03
        subtotal = discount = 0
        for position, (product_id, sku, name, price) in enumerate(
            rng.sample(products, rng.randint(1, 4))
        ):
            quantity = rng.randint(1, 3)
            line_total = int(price) * quantity
            line_discount = line_total // 10 if rng.random() < 0.1 else 0
            subtotal += line_total
            discount += line_discount
            line_rows.append(
                (str(uuid.uuid4()), order_id, position, product_id, sku, name, quantity,
                 int(price), line_total, line_discount, currency, int(price))
            )  # fmt: skip
        shipping = 495
        tax = (subtotal - discount + shipping) * 19 // 100
        total = subtotal - discount + shipping + tax
        refunded = 0
        if not declined and rng.random() < 0.05:
            refunded = rng.randint(1, total)
            refund_time = created + dt.timedelta(days=rng.randint(0, 20))
            refund_rows.append(
                (str(uuid.uuid4()), order_id, refunded, "SUCCEEDED",
                 rng.choice(REFUND_REASONS), min(refund_time, now), min(refund_time, now), 1)
            )  # fmt: skip
        order_rows.append(
            (order_id, f"bench-customer-{rng.randrange(5000)}", str(uuid.uuid4()), "0" * 64,
             "PAYMENT_FAILED" if declined else "DELIVERED", currency, subtotal, shipping, tax,
             total, discount, "BENCH10" if discount else "", 0 if declined else total, refunded,
             "0.19", "bench", "standard", "Bench Customer", "1 Bench Street", "Berlin", "DE",
             created, created, created, None if declined else created,
             "", "", "", "", "", "card_declined" if declined else "", False)
        )  # fmt: skip
    columns = {
        "orders": (
            "id, customer_id, request_id, request_hash, state, currency, subtotal_minor, "
            "shipping_minor, tax_minor, total_minor, discount_minor, discount_code, "
            "captured_minor, refunded_minor, tax_rate, shipping_quote_id, "
            "shipping_service_level, ship_name, ship_line1, ship_city, ship_country, "
            "charge_attempt_time, create_time, update_time, paid_time, ship_line2, ship_region, "
            "ship_postal_code, carrier, tracking_number, payment_failure_code, payment_unresolved",
            order_rows,
        ),
        "order_lines": (
            "id, order_id, position, product_id, sku, name, quantity, unit_price_minor, "
            "line_total_minor, discount_minor, catalog_currency, catalog_unit_price_minor",
            line_rows,
        ),
        "order_refunds": (
            "id, order_id, amount_minor, status, reason, create_time, update_time, attempts",
            refund_rows,
        ),
    }
    with db.atomic():
        cursor = db.cursor()  # type: ignore[no-untyped-call]
        for table, (names, rows) in columns.items():
            marks = ", ".join([db.param] * len(rows[0]))
            sql = f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608 (our own names)
            for start in range(0, len(rows), ROWS_PER_BATCH):
                cursor.executemany(sql, rows[start : start + ROWS_PER_BATCH])
    return {table: len(rows) for table, (_, rows) in columns.items()}


def drop_indexes(db: peewee.Database) -> None:
    for name in REPORT_INDEXES:
        db.execute_sql(f"DROP INDEX {name}")  # type: ignore[no-untyped-call]


# --- the calls ------------------------------------------------------------------------------------


def report_calls(today: dt.date) -> list[tuple[str, Callable[[StorefrontClient], object]]]:
    """Each report as staff ask for it: (label, call)."""
    year = (today - dt.timedelta(days=364)).isoformat(), today.isoformat()
    month = (today - dt.timedelta(days=29)).isoformat(), today.isoformat()
    return [
        (
            "sales by day, 30 days",
            lambda c: c.reports.GetSalesReport(
                pb.GetSalesReportRequest(start_date=month[0], end_date=month[1])
            ),
        ),
        (
            "sales by day, 365 days",
            lambda c: c.reports.GetSalesReport(
                pb.GetSalesReportRequest(start_date=year[0], end_date=year[1])
            ),
        ),
        (
            "top 10 products by revenue, 30 days, EUR",
            lambda c: c.reports.GetTopProductsReport(
                pb.GetTopProductsReportRequest(
                    start_date=month[0], end_date=month[1], currency_code="EUR", order_by="revenue"
                )
            ),
        ),
        (
            "top 10 products by units, 365 days, EUR",
            lambda c: c.reports.GetTopProductsReport(
                pb.GetTopProductsReportRequest(
                    start_date=year[0], end_date=year[1], currency_code="EUR"
                )
            ),
        ),
        (
            "refunds by reason, 30 days",
            lambda c: c.reports.GetRefundsReport(
                pb.GetRefundsReportRequest(start_date=month[0], end_date=month[1])
            ),
        ),
        (
            "stock valuation",
            lambda c: c.reports.GetStockValuationReport(pb.GetStockValuationReportRequest()),
        ),
    ]


def timed(call: Callable[[], object], calls: int) -> dict[str, float]:
    """Calls `call` once unmeasured, then `calls` times; the median and slowest in ms."""
    call()
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(took), "max_ms": max(took)}


@contextlib.contextmanager
def history_database(
    database: str, tmp: Path, postgres_url: str, orders: int
) -> Iterator[tuple[Path, str | None, peewee.Database, dict[str, int]]]:
    """A migrated, seeded database of `database` holding the history; yields (data dir, URL for
    the server or None for the default SQLite file, a connection to it, row counts)."""
    data_dir = tmp / database
    data_dir.mkdir()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_database(postgres_url)) if database == POSTGRES else None
        env = storefront_env(data_dir, "127.0.0.1:0")
        if url:
            env["STOREFRONT_DATABASE_URL"] = url
        run_command([str(STOREFRONT), "migrate"], env)
        run_command([str(STOREFRONT), "seed"], env)
        db = connect_url(url or f"sqlite:///{data_dir / 'storefront.db'}", pool_size=1)
        stack.callback(db.close)
        counts = write_history(db, orders)
        # Statistics and, on PostgreSQL, the visibility map that index-only scans need: where
        # autovacuum would have brought a database that grew over a year.
        db.execute_sql("VACUUM ANALYZE" if url else "ANALYZE")  # type: ignore[no-untyped-call]
        yield data_dir, url, db, counts


def reports_rows(options: argparse.Namespace) -> list[dict[str, Any]]:
    """Times every report on each database, with and then without the report indexes."""
    rows: list[dict[str, Any]] = []
    databases = [SQLITE] if options.no_postgres else [SQLITE, POSTGRES]
    with tempfile.TemporaryDirectory(prefix="storefront-reports-bench-") as tmp:
        for database in databases:
            print(f"bench: reports on {database}, {options.orders} orders ...", file=sys.stderr)
            with (
                history_database(database, Path(tmp), options.postgres_url, options.orders) as (
                    data_dir,
                    url,
                    db,
                    counts,
                ),
                serving([], data_dir, url) as (target, _, _),
                StorefrontClient(target, default_timeout=600) as staff,
            ):
                staff.login(*demo_admin(data_dir))
                calls = report_calls(utcnow().date())
                for indexed in (True, False):
                    if not indexed:
                        drop_indexes(db)
                    for label, call in calls:
                        figures = timed(functools.partial(call, staff), options.calls)
                        rows.append(
                            {
                                "database": database,
                                "report": label,
                                "indexes": indexed,
                                **counts,
                                **figures,
                            }
                        )
    return rows


def markdown_table(rows: list[dict[str, Any]], sizes: dict[str, Any]) -> str:
    """One line per report: median (slowest) ms per database, with and without the indexes."""
    columns = sorted(
        {(r["database"], r["indexes"]) for r in rows}, key=lambda k: (k[0] != SQLITE, not k[1])
    )
    by_key = {(r["report"], r["database"], r["indexes"]): r for r in rows}
    header = "| report | " + " | ".join(
        f"{database}, {'indexed' if indexed else 'no report indexes'}"
        for database, indexed in columns
    )
    lines = [
        f"{sizes['orders']} orders over a year, median (slowest) of {sizes['calls']} calls in ms "
        "through the server:",
        "",
        header + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for report in dict.fromkeys(r["report"] for r in rows):
        cells = []
        for database, indexed in columns:
            row = by_key.get((report, database, indexed))
            cells.append(f"{row['median_ms']:.0f} ({row['max_ms']:.0f})" if row else "-")
        lines.append(f"| {report} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table (and writes the rows with --json)."""
    options = parser().parse_args(argv)
    rows = reports_rows(options)
    print(markdown_table(rows, sizes_of(options)))
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
