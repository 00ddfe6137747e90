"""Recommendations: products bought together, and a customer's picks from their history.

The counts are kept up to date from order events, not recomputed per call: the dispatcher's
fan-out (domain/dispatch.py), which takes each outbox event exactly once in a transaction, calls
`record` with the events it takes. A payment captured adds the order's units to each product's
sales and one to each pair of its products; a cancellation (only a PAID order can be cancelled)
takes them back out. Reads rank by those counts, then by product id, so equal counts come in a
fixed order; only ACTIVE products are shown.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import peewee

from server.domain import products
from server.domain.principal import Principal
from server.models.order import Order, OrderLine
from server.models.outbox_event import OutboxEvent
from server.models.product import Product, ProductCategory
from server.models.recommendation import ProductPair, ProductSales
from server.validation import Validator

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 50
# Rows per upsert statement (well within SQLite's bound on parameters).
UPSERT_BATCH = 200
# How an order event moves the counts.
_SIGNS = {"order.payment_captured": 1, "order.cancelled": -1}
# Orders whose purchases count as the customer's history.
_BOUGHT_STATES = ("PAID", "SHIPPED", "DELIVERED", "PARTIALLY_REFUNDED", "REFUNDED")


def record(events: Sequence[OutboxEvent]) -> None:
    """Moves the counts by these events' paid and cancelled orders (in the fan-out's
    transaction)."""
    # Summed: one batch may hold both an order's payment and its cancellation.
    signs: Counter[str] = Counter()
    for event in events:
        signs[event.aggregate_id] += _SIGNS.get(event.type, 0)
    signs = Counter({order_id: sign for order_id, sign in signs.items() if sign})
    if not signs:
        return
    units: Counter[str] = Counter()
    orders: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    lines = OrderLine.select(OrderLine.order, OrderLine.product, OrderLine.quantity).where(
        OrderLine.order.in_(list(signs))
    )
    by_order: dict[str, dict[str, int]] = {}
    for line in lines:
        bought = by_order.setdefault(line.__data__["order"], {})
        product_id = line.__data__["product"]
        bought[product_id] = bought.get(product_id, 0) + int(line.quantity)
    for order_id, bought in by_order.items():
        sign = signs[order_id]
        for product_id, quantity in bought.items():
            units[product_id] += sign * quantity
            orders[product_id] += sign
        for first, second in itertools.permutations(sorted(bought), 2):
            pairs[(first, second)] += sign
    # A statement per UPSERT_BATCH rows, not per row: an order of n products moves n sales rows
    # and n(n-1) pairs.
    sales = [{"product_id": p, "units": units[p], "order_count": orders[p]} for p in sorted(units)]
    for batch in peewee.chunked(sales, UPSERT_BATCH):
        ProductSales.insert_many(batch).on_conflict(
            conflict_target=[ProductSales.product_id],
            update={
                ProductSales.units: ProductSales.units + peewee.EXCLUDED.units,
                ProductSales.order_count: ProductSales.order_count + peewee.EXCLUDED.order_count,
            },
        ).execute()
    rows = [
        {"product_id": first, "related_id": second, "order_count": count}
        for (first, second), count in sorted(pairs.items())
    ]
    for batch in peewee.chunked(rows, UPSERT_BATCH):
        ProductPair.insert_many(batch).on_conflict(
            conflict_target=[ProductPair.product_id, ProductPair.related_id],
            update={ProductPair.order_count: ProductPair.order_count + peewee.EXCLUDED.order_count},
        ).execute()


def _page_size(v: Validator, page_size: int) -> int:
    v.check(page_size >= 0, "page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def related(product_id: str, page_size: int) -> list[Product]:
    """The ACTIVE products most often bought with `product_id`, then its categories' best
    sellers; NOT_FOUND for an unknown product."""
    v = Validator()
    v.check_id("product_id", product_id, "product")
    limit = _page_size(v, page_size)
    v.raise_if_any()
    products.get_or_raise(product_id)
    together = [
        row.related_id
        for row in ProductPair.select(ProductPair.related_id)
        .join(Product, on=(Product.id == ProductPair.related_id))
        .where(
            (ProductPair.product_id == product_id)
            & (ProductPair.order_count > 0)
            & (Product.state == products.ACTIVE)
        )
        .order_by(ProductPair.order_count.desc(), ProductPair.related_id)
        .limit(limit)
    ]
    if len(together) < limit:
        categories = ProductCategory.select(ProductCategory.slug).where(
            ProductCategory.product == product_id
        )
        in_category = ProductCategory.select(ProductCategory.product).where(
            ProductCategory.slug.in_(categories)
        )
        together += _best_sellers(
            Product.id.in_(in_category),
            exclude=[product_id, *together],
            limit=limit - len(together),
        )
    return _in_order(together)


def recommended(customer: Principal, page_size: int) -> list[Product]:
    """For the customer: the ACTIVE products most often bought with what they bought (not those
    themselves), then the shop's best sellers."""
    v = Validator()
    limit = _page_size(v, page_size)
    v.raise_if_any()
    bought = [
        row.__data__["product"]
        for row in OrderLine.select(OrderLine.product)
        .join(Order)
        .where((Order.customer_id == customer.subject) & Order.state.in_(_BOUGHT_STATES))
        .distinct()
    ]
    score = peewee.fn.SUM(ProductPair.order_count)
    picks = (
        [
            row.related_id
            for row in ProductPair.select(ProductPair.related_id, score.alias("score"))
            .join(Product, on=(Product.id == ProductPair.related_id))
            .where(
                ProductPair.product_id.in_(bought)
                & ProductPair.related_id.not_in(bought)
                & (ProductPair.order_count > 0)
                & (Product.state == products.ACTIVE)
            )
            .group_by(ProductPair.related_id)
            .having(score > 0)
            .order_by(score.desc(), ProductPair.related_id)
            .limit(limit)
        ]
        if bought
        else []
    )
    if len(picks) < limit:
        picks += _best_sellers(
            peewee.Value(True), exclude=[*bought, *picks], limit=limit - len(picks)
        )
    return _in_order(picks)


def _best_sellers(condition: peewee.ColumnBase, *, exclude: Sequence[str], limit: int) -> list[str]:
    """ACTIVE products matching `condition`, most units sold first (unsold last), then by id."""
    units = peewee.fn.COALESCE(ProductSales.units, 0)
    return [
        row.id
        for row in Product.select(Product.id)
        .join(ProductSales, peewee.JOIN.LEFT_OUTER, on=(ProductSales.product_id == Product.id))
        .where(condition & (Product.state == products.ACTIVE) & Product.id.not_in(list(exclude)))
        .order_by(units.desc(), Product.id)
        .limit(limit)
    ]


def _in_order(product_ids: Sequence[str]) -> list[Product]:
    found = {p.id: p for p in Product.select().where(Product.id.in_(list(product_ids)))}
    return [found[product_id] for product_id in product_ids if product_id in found]
