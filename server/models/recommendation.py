"""What recommendations are computed from: units sold per product, orders per product pair."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class ProductSales(BaseModel):
    """Units of a product in paid orders (cancelled ones taken back out), and how many orders."""

    product_id = peewee.CharField(max_length=36, primary_key=True)
    units = peewee.BigIntegerField()
    order_count = peewee.BigIntegerField()

    class Meta:
        table_name = "product_sales"


class ProductPair(BaseModel):
    """How many paid orders held both products; stored in both directions."""

    product_id = peewee.CharField(max_length=36)
    related_id = peewee.CharField(max_length=36)
    order_count = peewee.BigIntegerField()

    class Meta:
        table_name = "product_pairs"
        primary_key = peewee.CompositeKey("product_id", "related_id")
        indexes = ((("product_id", "order_count"), False),)
