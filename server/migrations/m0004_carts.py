"""Creates carts and cart lines: one cart per customer, one line per product in it."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class Product(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)

    class Meta:
        table_name = "products"


class Cart(_Frozen):
    owner = peewee.CharField(max_length=64, primary_key=True)
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "carts"


class CartLine(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    cart = peewee.ForeignKeyField(Cart, column_name="owner", on_delete="CASCADE")
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE")
    quantity = peewee.IntegerField(constraints=[peewee.Check("quantity BETWEEN 1 AND 99")])
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "cart_lines"
        indexes = (
            (("owner", "product"), True),
            (("owner", "create_time", "id"), False),
        )


TABLES = [Cart, CartLine]


def up(db: peewee.Database) -> None:
    """Creates the cart tables (products exists since migration 2)."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
