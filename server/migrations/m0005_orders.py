"""Creates orders, their lines, their history (events) and their refunds."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class Product(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)

    class Meta:
        table_name = "products"


_STATES = (
    "'PENDING_PAYMENT', 'PAID', 'SHIPPED', 'DELIVERED', 'CANCELLED', 'REFUNDED', "
    "'PARTIALLY_REFUNDED', 'PAYMENT_FAILED'"
)


class Order(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    customer_id = peewee.CharField(max_length=64)
    request_id = peewee.CharField(max_length=36)
    request_hash = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=24, constraints=[peewee.Check(f"state IN ({_STATES})")])
    currency = peewee.CharField(max_length=3)
    subtotal_minor = peewee.BigIntegerField(constraints=[peewee.Check("subtotal_minor >= 0")])
    shipping_minor = peewee.BigIntegerField(constraints=[peewee.Check("shipping_minor >= 0")])
    tax_minor = peewee.BigIntegerField(constraints=[peewee.Check("tax_minor >= 0")])
    total_minor = peewee.BigIntegerField(constraints=[peewee.Check("total_minor >= 0")])
    captured_minor = peewee.BigIntegerField(
        default=0, constraints=[peewee.Check("captured_minor BETWEEN 0 AND total_minor")]
    )
    refunded_minor = peewee.BigIntegerField(
        default=0, constraints=[peewee.Check("refunded_minor BETWEEN 0 AND captured_minor")]
    )
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
    payment_unresolved = peewee.BooleanField(default=False)
    charge_attempt_time = peewee.DateTimeField()
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()
    paid_time = peewee.DateTimeField(null=True)
    ship_time = peewee.DateTimeField(null=True)
    deliver_time = peewee.DateTimeField(null=True)
    cancel_time = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "orders"
        indexes = (
            (("customer_id", "request_id"), True),
            (("customer_id", "create_time", "id"), False),
            (("create_time", "id"), False),
            (("state", "charge_attempt_time"), False),
        )


class OrderLine(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    order = peewee.ForeignKeyField(Order, on_delete="CASCADE")
    position = peewee.IntegerField()
    product = peewee.ForeignKeyField(Product, on_delete="RESTRICT")
    sku = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=200)
    quantity = peewee.IntegerField(constraints=[peewee.Check("quantity >= 1")])
    unit_price_minor = peewee.BigIntegerField(constraints=[peewee.Check("unit_price_minor >= 0")])
    line_total_minor = peewee.BigIntegerField(constraints=[peewee.Check("line_total_minor >= 0")])
    catalog_currency = peewee.CharField(max_length=3)
    catalog_unit_price_minor = peewee.BigIntegerField()

    class Meta:
        table_name = "order_lines"
        indexes = ((("order", "position"), True),)


class OrderEvent(_Frozen):
    id = peewee.BigAutoField()
    order = peewee.ForeignKeyField(Order, on_delete="CASCADE")
    type = peewee.CharField(max_length=40)
    from_state = peewee.CharField(max_length=24)
    to_state = peewee.CharField(max_length=24)
    actor = peewee.CharField(max_length=80)
    note = peewee.TextField(default="")
    create_time = peewee.DateTimeField()

    class Meta:
        table_name = "order_events"
        indexes = ((("order", "id"), False),)


class OrderRefund(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    order = peewee.ForeignKeyField(Order, on_delete="CASCADE")
    amount_minor = peewee.BigIntegerField(constraints=[peewee.Check("amount_minor > 0")])
    status = peewee.CharField(
        max_length=16,
        constraints=[peewee.Check("status IN ('PENDING', 'SUCCEEDED', 'FAILED')")],
    )
    reason = peewee.CharField(max_length=500, default="")
    provider_refund_id = peewee.CharField(max_length=200, null=True)
    attempts = peewee.IntegerField(default=0)
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "order_refunds"
        indexes = (
            (("order", "create_time"), False),
            (("status", "update_time"), False),
        )


TABLES = [Order, OrderLine, OrderEvent, OrderRefund]


def up(db: peewee.Database) -> None:
    """Creates the order tables (products exists since migration 2)."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
