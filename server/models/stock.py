"""Stock levels per product and the ledger of every change to them."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow
from server.models.product import Product


class StockLevel(BaseModel):
    """A product's stock: on_hand >= reserved >= 0, enforced by CHECK constraints."""

    product = peewee.ForeignKeyField(Product, primary_key=True, on_delete="CASCADE")
    on_hand = peewee.BigIntegerField(default=0)
    reserved = peewee.BigIntegerField(default=0)
    update_time = peewee.DateTimeField(default=utcnow)
    product_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "stock_levels"


class StockMovement(BaseModel):
    """One ledger entry: a change to on_hand and/or reserved, with the levels after it."""

    id = peewee.BigAutoField()
    product = peewee.ForeignKeyField(Product, on_delete="CASCADE")
    kind = peewee.CharField(max_length=16)  # ADJUSTMENT, RESERVATION, RELEASE, SALE, RESTOCK
    on_hand_delta = peewee.BigIntegerField()
    reserved_delta = peewee.BigIntegerField()
    on_hand_after = peewee.BigIntegerField()
    reserved_after = peewee.BigIntegerField()
    reason = peewee.CharField(max_length=200)
    actor = peewee.CharField(max_length=64)
    reference = peewee.CharField(max_length=64, null=True)
    create_time = peewee.DateTimeField(default=utcnow)
    product_id: str  # the foreign key's raw value, set by peewee

    class Meta:
        table_name = "stock_movements"
