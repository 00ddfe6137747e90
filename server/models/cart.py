"""Carts, one per customer, and their lines."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow
from server.models.product import Product


class Cart(BaseModel):
    """A customer's cart; owner is the customer's user id."""

    owner = peewee.CharField(max_length=64, primary_key=True)
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "carts"


class CartLine(BaseModel):
    """One product in a cart: unique per (owner, product), quantity 1..99."""

    id = peewee.CharField(max_length=36, primary_key=True)
    cart = peewee.ForeignKeyField(Cart, column_name="owner", on_delete="CASCADE")
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE")
    quantity = peewee.IntegerField()
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)
    cart_id: str  # the owner, the foreign key's raw value, set by peewee
    product_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "cart_lines"
