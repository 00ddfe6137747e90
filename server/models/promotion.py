"""Discount codes (STAFF-managed) and their redemptions by orders."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class Promotion(BaseModel):
    """A discount code: a percentage or a fixed amount per currency, for some products or all.

    JSON columns: `amounts_off` and `minimum_subtotals` map currency codes to minor units;
    `product_ids` and `category_slugs` list the scope (both empty: every product).
    """

    id = peewee.CharField(max_length=36, primary_key=True)
    code = peewee.CharField(max_length=32, unique=True)  # upper-case
    description = peewee.CharField(max_length=200)
    percent_basis_points = peewee.IntegerField(null=True)  # 1 to 10,000 (0.01% to 100%)
    amounts_off = peewee.TextField()
    minimum_subtotals = peewee.TextField()
    product_ids = peewee.TextField()
    category_slugs = peewee.TextField()
    start_time = peewee.DateTimeField(null=True)
    end_time = peewee.DateTimeField(null=True)
    max_uses = peewee.IntegerField(null=True)
    max_uses_per_customer = peewee.IntegerField(null=True)
    archive_time = peewee.DateTimeField(null=True)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "promotions"


class PromotionRedemption(BaseModel):
    """An order's use of a promotion; a released one (payment failed, order cancelled) no longer
    counts against the limits."""

    id = peewee.CharField(max_length=36, primary_key=True)
    promotion = peewee.ForeignKeyField(Promotion, on_delete="RESTRICT", column_name="promotion_id")
    customer_id = peewee.CharField(max_length=64)
    order_id = peewee.CharField(max_length=36, unique=True)
    discount_minor = peewee.BigIntegerField()
    currency = peewee.CharField(max_length=3)
    release_time = peewee.DateTimeField(null=True)
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "promotion_redemptions"
        indexes = (
            (("promotion_id", "release_time"), False),
            (("promotion_id", "customer_id", "release_time"), False),
        )
