"""Orders, their lines, their history and their refunds."""

from __future__ import annotations

import peewee

from server.db import BaseModel, utcnow
from server.models.product import Product


class Order(BaseModel):
    """A placed order: prices, address and payment as of checkout, and where it is now.

    Unique per (customer_id, request_id): a checkout retried with the same request_id finds its
    order instead of making a second one. Money columns are minor units of `currency`.
    """

    id = peewee.CharField(max_length=36, primary_key=True)
    customer_id = peewee.CharField(max_length=64)
    request_id = peewee.CharField(max_length=36)
    request_hash = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=24)
    currency = peewee.CharField(max_length=3)
    subtotal_minor = peewee.BigIntegerField()
    shipping_minor = peewee.BigIntegerField()
    tax_minor = peewee.BigIntegerField()
    total_minor = peewee.BigIntegerField()
    # The promotion's discount (total = subtotal - discount + shipping + tax) and its code; 0
    # and "" without one.
    discount_minor = peewee.BigIntegerField(default=0)
    discount_code = peewee.CharField(max_length=32, default="")
    captured_minor = peewee.BigIntegerField(default=0)
    refunded_minor = peewee.BigIntegerField(default=0)
    tax_rate = peewee.CharField(max_length=32)
    shipping_quote_id = peewee.CharField(max_length=64)
    shipping_service_level = peewee.CharField(max_length=50)
    ship_name = peewee.CharField(max_length=200)
    ship_line1 = peewee.CharField(max_length=200)
    ship_line2 = peewee.CharField(max_length=200, default="")
    ship_city = peewee.CharField(max_length=100)
    ship_region = peewee.CharField(max_length=100, default="")
    ship_postal_code = peewee.CharField(max_length=20, default="")
    ship_country = peewee.CharField(max_length=2)
    carrier = peewee.CharField(max_length=100, default="")
    tracking_number = peewee.CharField(max_length=100, default="")
    charge_id = peewee.CharField(max_length=200, null=True)
    payment_failure_code = peewee.CharField(max_length=64, default="")
    # Stock was released after the reservation TTL while the provider could not say whether it
    # charged; the reconciler keeps asking and refunds a charge that turns up.
    payment_unresolved = peewee.BooleanField(default=False)
    # When the last charge attempt started; the reconciler leaves younger attempts alone.
    charge_attempt_time = peewee.DateTimeField(default=utcnow)
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)
    paid_time = peewee.DateTimeField(null=True)
    ship_time = peewee.DateTimeField(null=True)
    deliver_time = peewee.DateTimeField(null=True)
    cancel_time = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "orders"


class OrderLine(BaseModel):
    """One product of an order, priced in the order's currency at checkout."""

    id = peewee.CharField(max_length=36, primary_key=True)
    order = peewee.ForeignKeyField(Order, backref="lines", on_delete="CASCADE")
    position = peewee.IntegerField()
    product = peewee.ForeignKeyField(Product, on_delete="RESTRICT")
    sku = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=200)
    quantity = peewee.IntegerField()
    unit_price_minor = peewee.BigIntegerField()
    line_total_minor = peewee.BigIntegerField()
    # This line's share of the order's discount (line_total_minor is before it).
    discount_minor = peewee.BigIntegerField(default=0)
    catalog_currency = peewee.CharField(max_length=3)
    catalog_unit_price_minor = peewee.BigIntegerField()
    order_id: str  # the foreign key's raw value, set by peewee
    product_id: str

    class Meta:
        table_name = "order_lines"


class OrderEvent(BaseModel):
    """One entry of an order's history; ids increase in insertion order."""

    id = peewee.BigAutoField()
    order = peewee.ForeignKeyField(Order, on_delete="CASCADE")
    type = peewee.CharField(max_length=40)
    from_state = peewee.CharField(max_length=24)
    to_state = peewee.CharField(max_length=24)
    actor = peewee.CharField(max_length=80)
    note = peewee.TextField(default="")
    create_time = peewee.DateTimeField(default=utcnow)
    order_id: str

    class Meta:
        table_name = "order_events"


class OrderRefund(BaseModel):
    """A refund storefront owes: PENDING until the provider confirms it (the refund's id is its
    provider idempotency key, so sending it again never refunds twice)."""

    id = peewee.CharField(max_length=36, primary_key=True)
    order = peewee.ForeignKeyField(Order, backref="refunds", on_delete="CASCADE")
    amount_minor = peewee.BigIntegerField()
    status = peewee.CharField(max_length=16)
    reason = peewee.CharField(max_length=500, default="")
    provider_refund_id = peewee.CharField(max_length=200, null=True)
    attempts = peewee.IntegerField(default=0)
    # A refund by lines: the units it refunded, [{"line_id": ..., "quantity": n}]; "[]" for one
    # of an amount.
    lines = peewee.TextField(default="[]")
    create_time = peewee.DateTimeField(default=utcnow)
    update_time = peewee.DateTimeField(default=utcnow)
    order_id: str

    class Meta:
        table_name = "order_refunds"
