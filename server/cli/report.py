"""`storefront report ...`: ReportService's reports as CSV, read straight from the database.

Amounts are written as decimals in their row's currency ("123.45" for 12345 minor units of
EUR), so a spreadsheet sums them as they are; dates are UTC days.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

from server import migrations
from server.cli.admin import DATABASE_VARIABLES, describe
from server.config import Settings, variables_help
from server.db import init_database
from server.domain import reports
from server.domain.money import decimal_text
from server.errors import DomainError

log = logging.getLogger("storefront")
# The report refused its arguments (a bad date, an unknown currency).
REFUSED = 1

SALES_HEADER = (
    "date",
    "currency",
    "orders",
    "units",
    "gross",
    "discounts",
    "shipping",
    "tax",
    "refunds",
    "net",
)
TOP_PRODUCTS_HEADER = (
    "rank",
    "product_id",
    "sku",
    "name",
    "units",
    "orders",
    "currency",
    "revenue",
)
STOCK_VALUATION_HEADER = ("currency", "products", "units", "value")
REFUNDS_HEADER = ("reason", "currency", "refunds", "amount")

Rows = Iterable[Sequence[object]]
# A text cell starting with one of these is a formula to a spreadsheet (CSV injection):
# product names and refund reasons are written with a leading apostrophe instead.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text, never runs as a formula."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `report sales|top-products|stock-valuation|refunds` to the command line."""
    report_parser = commands.add_parser(
        "report",
        help="write a report (ReportService) as CSV: sales, top-products, stock-valuation, refunds",
        epilog=variables_help(DATABASE_VARIABLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report_parser.set_defaults(run=run)
    kinds = report_parser.add_subparsers(dest="report", required=True)

    def kind(name: str, help_text: str, *, dated: bool = True) -> argparse.ArgumentParser:
        parser = kinds.add_parser(name, help=help_text, description=help_text)
        if dated:
            parser.add_argument("--start", required=True, help="first UTC day, YYYY-MM-DD")
            parser.add_argument("--end", required=True, help="last UTC day (included)")
        parser.add_argument(
            "--output", type=Path, help="write the CSV to this file (default: standard output)"
        )
        return parser

    sales = kind("sales", "sales per day and currency: orders, units, gross ... net")
    sales.add_argument("--currency", default="", help="only this currency")
    sales.set_defaults(build=_sales)
    top = kind("top-products", "the products sold most in one currency")
    top.add_argument("--currency", required=True, help="orders in this currency")
    top.add_argument("--by", choices=reports.TOP_PRODUCT_ORDERS, default="units")
    top.add_argument("--limit", type=int, default=reports.DEFAULT_TOP_PRODUCTS)
    top.set_defaults(build=_top_products)
    kind(
        "stock-valuation", "units on hand times current price, per currency", dated=False
    ).set_defaults(build=_stock_valuation)
    kind("refunds", "refunds issued per reason and currency").set_defaults(build=_refunds)


def _sales(args: argparse.Namespace) -> tuple[Sequence[str], Rows]:
    report = reports.sales(args.start, args.end, args.currency)
    return SALES_HEADER, (
        (
            day.isoformat(),
            f.currency,
            f.orders,
            f.units,
            *(
                decimal_text(amount, f.currency)
                for amount in (
                    f.gross_minor,
                    f.discounts_minor,
                    f.shipping_minor,
                    f.tax_minor,
                    f.refunds_minor,
                    f.net_minor,
                )
            ),
        )
        for day, f in report.days
    )


def _top_products(args: argparse.Namespace) -> tuple[Sequence[str], Rows]:
    found = reports.top_products(args.start, args.end, args.currency, args.by, args.limit)
    return TOP_PRODUCTS_HEADER, (
        (
            rank,
            p.product_id,
            text_cell(p.sku),
            text_cell(p.name),
            p.units,
            p.orders,
            args.currency,
            decimal_text(p.revenue_minor, args.currency),
        )
        for rank, p in enumerate(found, start=1)
    )


def _stock_valuation(args: argparse.Namespace) -> tuple[Sequence[str], Rows]:
    return STOCK_VALUATION_HEADER, (
        (v.currency, v.products, v.units, decimal_text(v.value_minor, v.currency))
        for v in reports.stock_valuation()
    )


def _refunds(args: argparse.Namespace) -> tuple[Sequence[str], Rows]:
    return REFUNDS_HEADER, (
        (text_cell(r.reason), r.currency, r.refunds, decimal_text(r.amount_minor, r.currency))
        for r in reports.refunds(args.start, args.end)
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the chosen report as CSV; a refused argument exits 1 with the reason on stderr."""
    db = init_database(settings.database_url, pool_size=1)
    migrations.check_schema(db)
    build: Callable[[argparse.Namespace], tuple[Sequence[str], Rows]] = args.build
    with db.connection_context():
        try:
            header, rows = build(args)
            rows = list(rows)
        except DomainError as exc:
            log.error("report %s refused: %s", args.report, describe(exc))
            return REFUSED
    if args.output is None:
        _write(sys.stdout, header, rows)
    else:
        with args.output.open("w", newline="", encoding="utf-8") as out:
            _write(out, header, rows)
        log.info("report %s: %d rows written to %s", args.report, len(rows), args.output)
    return 0


def _write(out: TextIO, header: Sequence[str], rows: Rows) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
