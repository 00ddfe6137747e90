"""Covering indexes for the reports, so that a report over a date range reads only that range.

- `orders_paid_report`: paid orders by the time their payment was captured, with the money the
  sales report sums and the id its lines are found by; the report reads the index alone.
- `order_lines_report`: each order's lines with what the sales and top products reports sum.
- `order_refunds_create_time`: refunds by the time they were issued.

Named here (not by the migrator) so that both engines use the same names: PostgreSQL would cut
the migrator's longer names at 63 characters.
"""

from __future__ import annotations

import peewee

INDEXES = {
    "orders_paid_report": (
        "orders",
        (
            "paid_time",
            "currency",
            "subtotal_minor",
            "discount_minor",
            "shipping_minor",
            "tax_minor",
            "id",
        ),
    ),
    "order_lines_report": (
        "order_lines",
        ("order_id", "product_id", "quantity", "line_total_minor", "discount_minor"),
    ),
    "order_refunds_create_time": ("order_refunds", ("create_time",)),
}


def up(db: peewee.Database) -> None:
    """Creates the three indexes."""
    for name, (table, columns) in INDEXES.items():
        db.execute_sql(f"CREATE INDEX {name} ON {table} ({', '.join(columns)})")
