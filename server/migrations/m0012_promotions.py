"""Discount codes (promotions), their redemptions, and the discounts on orders and their lines.

Existing orders and lines get a discount of 0 and no code.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator, migrate


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class Promotion(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    code = peewee.CharField(max_length=32, unique=True)
    description = peewee.CharField(max_length=200)
    percent_basis_points = peewee.IntegerField(null=True)
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


class PromotionRedemption(_Frozen):
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
            # Counting a promotion's (and a customer's) uses that still hold.
            (("promotion_id", "release_time"), False),
            (("promotion_id", "customer_id", "release_time"), False),
        )


TABLES = [Promotion, PromotionRedemption]
# Frozen: the columns as this migration adds them.
DISCOUNT_MINOR = peewee.BigIntegerField(default=0)
DISCOUNT_CODE = peewee.CharField(max_length=32, default="")
LINE_DISCOUNT_MINOR = peewee.BigIntegerField(default=0)


def up(db: peewee.Database) -> None:
    """Creates promotions and promotion_redemptions; adds the discount columns."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("orders", "discount_minor", DISCOUNT_MINOR),
        migrator.add_column("orders", "discount_code", DISCOUNT_CODE),
        migrator.add_column("order_lines", "discount_minor", LINE_DISCOUNT_MINOR),
    )
