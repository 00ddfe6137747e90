"""Purchase counts for recommendations: units sold per product, orders per pair of products."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class ProductSales(_Frozen):
    product_id = peewee.CharField(max_length=36, primary_key=True)
    units = peewee.BigIntegerField()
    order_count = peewee.BigIntegerField()

    class Meta:
        table_name = "product_sales"


class ProductPair(_Frozen):
    product_id = peewee.CharField(max_length=36)
    related_id = peewee.CharField(max_length=36)
    order_count = peewee.BigIntegerField()

    class Meta:
        table_name = "product_pairs"
        primary_key = peewee.CompositeKey("product_id", "related_id")
        # A product's most frequent companions first.
        indexes = ((("product_id", "order_count"), False),)


TABLES = [ProductSales, ProductPair]


def up(db: peewee.Database) -> None:
    """Creates product_sales and product_pairs (filled from orders paid from now on)."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
