"""Reports for staff: sales by day, top products, stock valuation, refunds by reason.

Each report is one or two aggregate queries over the orders, refunds and stock as they are now,
so its totals tie out exactly with the orders it counts. An order is a sale on the UTC day its
payment was captured (paid_time; it stays one when later cancelled or refunded); a refund counts
on the day it was issued unless the provider refused it (FAILED refunds no longer count towards
an order's refunded amount either). Migration 15's indexes keep a range's queries to that range.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import peewee

from server.domain import currencies, orders
from server.models.order import Order, OrderLine, OrderRefund
from server.models.product import Product
from server.models.stock import StockLevel
from server.validation import Validator

MAX_RANGE_DAYS = 366
DEFAULT_TOP_PRODUCTS = 10
MAX_TOP_PRODUCTS = 100
TOP_PRODUCT_ORDERS = ("units", "revenue")


@dataclass(frozen=True)
class DateRange:
    """UTC days start..end, both included."""

    start: dt.date
    end: dt.date

    @property
    def since(self) -> dt.datetime:
        """The first instant of the range, as the timestamp columns store it (naive UTC)."""
        return dt.datetime.combine(self.start, dt.time())

    @property
    def until(self) -> dt.datetime:
        """The first instant after the range (the last one there is, for a range ending on the
        last day a date can name)."""
        if self.end == dt.date.max:
            return dt.datetime.max
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time())


@dataclass(frozen=True)
class SalesFigures:
    """One currency's sales over a day or a range, in its minor units."""

    currency: str
    orders: int = 0
    units: int = 0
    gross_minor: int = 0
    discounts_minor: int = 0
    shipping_minor: int = 0
    tax_minor: int = 0
    refunds_minor: int = 0

    @property
    def net_minor(self) -> int:
        """What customers paid less what was given back."""
        return (
            self.gross_minor
            - self.discounts_minor
            + self.shipping_minor
            + self.tax_minor
            - self.refunds_minor
        )

    def plus(self, other: SalesFigures) -> SalesFigures:
        """The sum of two figures in the same currency."""
        return SalesFigures(
            currency=self.currency,
            orders=self.orders + other.orders,
            units=self.units + other.units,
            gross_minor=self.gross_minor + other.gross_minor,
            discounts_minor=self.discounts_minor + other.discounts_minor,
            shipping_minor=self.shipping_minor + other.shipping_minor,
            tax_minor=self.tax_minor + other.tax_minor,
            refunds_minor=self.refunds_minor + other.refunds_minor,
        )


@dataclass(frozen=True)
class SalesReport:
    """Sales per (day, currency), oldest first, and per currency over the whole range."""

    days: list[tuple[dt.date, SalesFigures]]
    totals: list[SalesFigures]


@dataclass(frozen=True)
class TopProduct:
    """One product's sales in the report's currency."""

    product_id: str
    sku: str
    name: str
    units: int
    orders: int
    revenue_minor: int


@dataclass(frozen=True)
class StockValue:
    """The stock on hand of the products priced in one currency."""

    currency: str
    products: int
    units: int
    value_minor: int


@dataclass(frozen=True)
class RefundReason:
    """The refunds given for one reason in one currency."""

    reason: str
    currency: str
    refunds: int
    amount_minor: int


def parse_range(v: Validator, start_date: str, end_date: str) -> DateRange:
    """Reads a "YYYY-MM-DD" start and end; records violations in `v` (then returns a dummy)."""
    start = _date(v, "start_date", start_date)
    end = _date(v, "end_date", end_date)
    if start is None or end is None:
        return DateRange(dt.date.min, dt.date.min)
    if end < start:
        v.add("end_date", "must not be before start_date")
    elif (end - start).days + 1 > MAX_RANGE_DAYS:
        v.add("end_date", f"must be at most {MAX_RANGE_DAYS} days from start_date, both included")
    return DateRange(start, end)


def _date(v: Validator, field_path: str, text: str) -> dt.date | None:
    if not text:
        v.add(field_path, "is required")
        return None
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        v.add(field_path, "must be a date, YYYY-MM-DD")
        return None


def _currency(v: Validator, field_path: str, code: str, *, required: bool) -> None:
    if not code:
        if required:
            v.add(field_path, "is required")
    elif not currencies.is_known(code):
        v.add(field_path, "must be a known ISO 4217 currency code")


def sales(start_date: str, end_date: str, currency: str = "") -> SalesReport:
    """Sales per day and currency over the range (only days with sales or refunds), and totals."""
    v = Validator()
    days = parse_range(v, start_date, end_date)
    _currency(v, "currency_code", currency, required=False)
    v.raise_if_any()

    figures: dict[tuple[dt.date, str], SalesFigures] = {}
    for day, found in (
        *_paid_orders(days, currency),
        *_refunds_issued(days, currency),
    ):
        key = (day, found.currency)
        figures[key] = figures.get(key, SalesFigures(found.currency)).plus(found)
    totals: dict[str, SalesFigures] = {}
    for (_, code), day_figures in figures.items():
        totals[code] = totals.get(code, SalesFigures(code)).plus(day_figures)
    return SalesReport(
        days=[(day, figures[(day, code)]) for day, code in sorted(figures)],
        totals=[totals[code] for code in sorted(totals)],
    )


def _day(column: peewee.Field) -> peewee.Function:
    """The UTC day of a timestamp column: date() is a function on SQLite and a cast on
    PostgreSQL, with the same result (not coerced back into the column's datetime)."""
    return peewee.fn.DATE(column).coerce(False)


def _as_date(value: str | dt.date) -> dt.date:
    """SQLite's date() answers text, PostgreSQL's a date."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _rows(query: peewee.SelectBase) -> list[tuple[Any, ...]]:
    """Runs an aggregate query; its rows as tuples (numbers as the engine answers them: SUM is
    numeric on PostgreSQL, so callers convert with int())."""
    return cast(list[tuple[Any, ...]], list(query.tuples()))


def _in_range(column: peewee.Field, days: DateRange) -> peewee.Expression:
    return (column >= days.since) & (column < days.until)


def _in_currency(condition: peewee.Expression, currency: str) -> peewee.Expression:
    return condition & (Order.currency == currency) if currency else condition


def _issued_in(days: DateRange) -> peewee.Expression:
    """The refunds issued in the range that count: all but those the provider refused."""
    return _in_range(OrderRefund.create_time, days) & (
        OrderRefund.status != orders.RefundStatus.FAILED.value
    )


def _paid_orders(days: DateRange, currency: str) -> Iterator[tuple[dt.date, SalesFigures]]:
    """Per day and currency: the orders paid, their units, subtotals, discounts, shipping and tax.

    One pass over the orders index (it covers every column summed here), each order's units
    read from the lines index by a correlated subquery: cheaper than joining the lines and
    grouping twice."""
    day = _day(Order.paid_time)
    units = OrderLine.select(peewee.fn.SUM(OrderLine.quantity)).where(OrderLine.order == Order.id)
    query = (
        Order.select(
            day,
            Order.currency,
            peewee.fn.COUNT(Order.id),
            peewee.fn.SUM(units),
            peewee.fn.SUM(Order.subtotal_minor),
            peewee.fn.SUM(Order.discount_minor),
            peewee.fn.SUM(Order.shipping_minor),
            peewee.fn.SUM(Order.tax_minor),
        )
        .where(_in_currency(_in_range(Order.paid_time, days), currency))
        .group_by(day, Order.currency)
    )
    for found, code, count, sold, gross, discounts, shipping, tax in _rows(query):
        yield (
            _as_date(found),
            SalesFigures(
                code,
                orders=int(count),
                units=int(sold),
                gross_minor=int(gross),
                discounts_minor=int(discounts),
                shipping_minor=int(shipping),
                tax_minor=int(tax),
            ),
        )


def _refunds_issued(days: DateRange, currency: str) -> Iterator[tuple[dt.date, SalesFigures]]:
    """Per day and currency: the refunds issued (those the provider refused do not count)."""
    day = _day(OrderRefund.create_time)
    query = (
        OrderRefund.select(day, Order.currency, peewee.fn.SUM(OrderRefund.amount_minor))
        .join(Order, on=OrderRefund.order == Order.id)
        .where(_in_currency(_issued_in(days), currency))
        .group_by(day, Order.currency)
    )
    for found, code, amount in _rows(query):
        yield _as_date(found), SalesFigures(code, refunds_minor=int(amount))


def top_products(
    start_date: str, end_date: str, currency: str, order_by: str = "", limit: int = 0
) -> list[TopProduct]:
    """The products sold most in `currency` over the range, by units or by revenue."""
    v = Validator()
    days = parse_range(v, start_date, end_date)
    _currency(v, "currency_code", currency, required=True)
    ranking = order_by.strip().lower() or "units"
    v.check(ranking in TOP_PRODUCT_ORDERS, "order_by", 'must be "units" or "revenue"')
    v.check(limit >= 0, "limit", "must not be negative")
    v.raise_if_any()

    units = peewee.fn.SUM(OrderLine.quantity)
    revenue = peewee.fn.SUM(OrderLine.line_total_minor - OrderLine.discount_minor)
    first, then = (units, revenue) if ranking == "units" else (revenue, units)
    query = (
        OrderLine.select(
            OrderLine.product,
            units,
            # An order has one line per product (a cart has), so its lines count its orders.
            peewee.fn.COUNT(OrderLine.id),
            revenue,
        )
        .join(Order, on=OrderLine.order == Order.id)
        .where(_in_range(Order.paid_time, days) & (Order.currency == currency))
        .group_by(OrderLine.product)
        .order_by(first.desc(), then.desc(), OrderLine.product)
        .limit(min(limit or DEFAULT_TOP_PRODUCTS, MAX_TOP_PRODUCTS))
    )
    ranked = _rows(query)
    # Names for the few ranked products only, not joined into every line of the range.
    names = {
        product_id: (sku, name)
        for product_id, sku, name in _rows(
            Product.select(Product.id, Product.sku, Product.name).where(
                Product.id.in_([row[0] for row in ranked])
            )
        )
    }
    return [
        TopProduct(product_id, *names[product_id], int(sold), int(count), int(earned))
        for product_id, sold, count, earned in ranked
    ]


def stock_valuation() -> list[StockValue]:
    """Units on hand times current price, per catalog currency (products with stock only)."""
    query = (
        StockLevel.select(
            Product.price_currency,
            peewee.fn.COUNT(StockLevel.product),
            peewee.fn.SUM(StockLevel.on_hand),
            peewee.fn.SUM(StockLevel.on_hand * Product.price_minor),
        )
        .join(Product, on=StockLevel.product == Product.id)
        .where(StockLevel.on_hand > 0)
        .group_by(Product.price_currency)
        .order_by(Product.price_currency)
    )
    return [
        StockValue(code, int(count), int(units), int(value))
        for code, count, units, value in _rows(query)
    ]


def refunds(start_date: str, end_date: str) -> list[RefundReason]:
    """Refunds issued over the range per reason and currency, largest amount first."""
    v = Validator()
    days = parse_range(v, start_date, end_date)
    v.raise_if_any()

    amount = peewee.fn.SUM(OrderRefund.amount_minor)
    query = (
        OrderRefund.select(
            OrderRefund.reason, Order.currency, peewee.fn.COUNT(OrderRefund.id), amount
        )
        .join(Order, on=OrderRefund.order == Order.id)
        .where(_issued_in(days))
        .group_by(OrderRefund.reason, Order.currency)
        .order_by(amount.desc(), Order.currency, OrderRefund.reason)
    )
    return [
        RefundReason(reason, code, int(count), int(total))
        for reason, code, count, total in _rows(query)
    ]
