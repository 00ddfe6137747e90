"""CheckoutService.PreviewCheckout and PlaceOrder's expected_total: the preview is the charge.

Every scenario previews a cart, places it with the preview's total as expected_total, and checks
that the order and the charge carry exactly the preview's figures; a price changed in between is
TOTAL_CHANGED with nothing written. Also: a PAID order's partial refund (it stays PAID, to ship).
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import grpc
import pytest
from storefront.v1 import checkout_service_pb2 as pb
from storefront.v1 import common_pb2, order_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from server.models.product import Product
from server.payments import ChargeStatus
from tests.e2e.conftest import Running, rpc_error, violated_fields
from tests.e2e.test_checkout_service import (
    BERLIN,
    NEW_YORK,
    Customer,
    add,
    cart_lines,
    charges_for,
    convert,
    half_even,
    list_orders,
    money,
    order_request,
    place,
    product,
    seeded_rates,
    sign_in,
    written,
)

StatusCode = grpc.StatusCode
LONDON = order_pb2.Address(
    recipient_name="Ada Lovelace", line1="12 St James's Square", city="London", country_code="GB"
)


def preview(
    customer: Customer, address: order_pb2.Address, currency: str
) -> pb.PreviewCheckoutResponse:
    return customer.client.checkout.PreviewCheckout(
        pb.PreviewCheckoutRequest(shipping_address=address, currency_code=currency)
    )


def expected(amount: common_pb2.Money) -> dict[str, object]:
    return {"expected_total": amount}


@pytest.fixture
def customer(running: Running) -> Customer:
    return sign_in(running)


@pytest.mark.parametrize(
    ("address", "currency", "prices", "weight_grams"),
    [
        # Shipping by weight, German VAT on subtotal plus shipping.
        (BERLIN, "EUR", [("EUR", 1999), ("EUR", 250)], 1200),
        # Prices converted into a third currency, once per unit.
        (LONDON, "GBP", [("USD", 1999), ("EUR", 333)], 500),
        # Above the zone's free-shipping threshold: the preview says 0 and so does the charge.
        (BERLIN, "EUR", [("EUR", 50_000), ("EUR", 12_345)], 800),
        # A destination without tax.
        (NEW_YORK, "USD", [("EUR", 4_321)], 100),
    ],
)
def test_the_preview_is_exactly_what_place_order_charges(
    running: Running,
    customer: Customer,
    address: order_pb2.Address,
    currency: str,
    prices: list[tuple[str, int]],
    weight_grams: int,
) -> None:
    rates = seeded_rates(customer.client)
    ids = [
        product(running, currency=source, price_minor=minor, weight_grams=weight_grams)
        for source, minor in prices
    ]
    for quantity, product_id in enumerate(ids, start=2):
        add(customer, product_id, quantity)
    before = written(running)

    shown = preview(customer, address, currency)

    assert written(running) == before  # a preview writes nothing
    units = [
        convert(minor, source, currency, rates) for source, minor in prices
    ]  # the client's own arithmetic
    assert [(line.product_id, line.quantity, money(line.unit_price)) for line in shown.lines] == [
        (product_id, quantity, (currency, unit))
        for quantity, (product_id, unit) in enumerate(zip(ids, units, strict=True), start=2)
    ]
    assert all(
        line.line_total.amount_minor == line.unit_price.amount_minor * line.quantity
        for line in shown.lines
    )
    subtotal = sum(line.line_total.amount_minor for line in shown.lines)
    assert money(shown.subtotal) == (currency, subtotal)
    tax = half_even(Decimal(shown.tax_rate) * (subtotal + shown.shipping.amount_minor))
    assert money(shown.tax) == (currency, tax)
    assert money(shown.total) == (currency, subtotal + shown.shipping.amount_minor + tax)

    order = place(
        customer,
        order_request(shipping_address=address, currency_code=currency, **expected(shown.total)),
    )

    assert order.state == order_pb2.ORDER_STATE_PAID
    assert [money(order.subtotal), money(order.shipping), money(order.tax), money(order.total)] == [
        money(shown.subtotal),
        money(shown.shipping),
        money(shown.tax),
        money(shown.total),
    ]
    assert Decimal(order.tax_rate) == Decimal(shown.tax_rate)
    assert order.shipping_service_level == shown.shipping_service_level
    assert [(line.product_id, line.quantity, money(line.unit_price)) for line in order.lines] == [
        (line.product_id, line.quantity, money(line.unit_price)) for line in shown.lines
    ]
    assert charges_for(running, order.id) == [
        (ChargeStatus.SUCCEEDED, shown.total.amount_minor, currency)
    ]


def test_a_price_changed_since_the_preview_is_total_changed_and_nothing_is_written(
    running: Running, customer: Customer
) -> None:
    product_id = product(running, price_minor=1000)
    add(customer, product_id, 3)
    shown = preview(customer, BERLIN, "EUR")
    with running.db.connection_context():
        Product.update(price_minor=1100).where(Product.id == product_id).execute()
    before = written(running)
    cart = cart_lines(customer)

    request = order_request(**expected(shown.total))
    err = rpc_error(lambda: place(customer, request))

    reason, metadata = error_info(err)
    assert (err.code(), reason) == (StatusCode.FAILED_PRECONDITION, "TOTAL_CHANGED")
    again = preview(customer, BERLIN, "EUR")
    assert metadata == {
        "expected_total_minor": str(shown.total.amount_minor),
        "total_minor": str(again.total.amount_minor),
    }
    assert again.total.amount_minor > shown.total.amount_minor
    assert written(running) == before  # no order, no reservation, no charge, no stored answer
    assert cart_lines(customer) == cart
    assert list_orders(customer) == []

    # The same request_id with the new total goes through.
    retried = order_request(request_id=request.request_id, **expected(again.total))
    order = place(customer, retried)
    assert (order.state, money(order.total)) == (order_pb2.ORDER_STATE_PAID, money(again.total))


def test_without_expected_total_place_order_charges_whatever_the_total_is_now(
    running: Running, customer: Customer
) -> None:
    product_id = product(running, price_minor=1000)
    add(customer, product_id, 1)
    shown = preview(customer, BERLIN, "EUR")
    with running.db.connection_context():
        Product.update(price_minor=900).where(Product.id == product_id).execute()
    order = place(customer, order_request())
    assert order.total.amount_minor < shown.total.amount_minor


def test_preview_refusals_name_the_problem(running: Running, customer: Customer) -> None:
    empty = rpc_error(lambda: preview(customer, BERLIN, "EUR"))
    assert (empty.code(), error_info(empty)[0]) == (StatusCode.FAILED_PRECONDITION, "CART_EMPTY")

    add(customer, product(running), 1)
    nowhere = order_pb2.Address(
        recipient_name="X", line1="1 Road", city="Atlantis", country_code="XX"
    )
    bad = rpc_error(lambda: preview(customer, nowhere, "XYZ"))
    assert bad.code() == StatusCode.INVALID_ARGUMENT
    assert {"shipping_address.country_code", "currency_code"} <= set(violated_fields(bad))

    staff = running.login(Role.STAFF)
    denied = rpc_error(
        lambda: staff.checkout.PreviewCheckout(
            pb.PreviewCheckoutRequest(shipping_address=BERLIN, currency_code="EUR")
        )
    )
    assert denied.code() == StatusCode.PERMISSION_DENIED


def test_an_expected_total_in_another_currency_or_negative_is_invalid(
    running: Running, customer: Customer
) -> None:
    add(customer, product(running), 1)
    before = written(running)
    for amount, field in [
        (common_pb2.Money(currency_code="USD", amount_minor=100), "expected_total.currency_code"),
        (common_pb2.Money(currency_code="EUR", amount_minor=-1), "expected_total.amount_minor"),
    ]:
        err = rpc_error(lambda amount=amount: place(customer, order_request(**expected(amount))))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {field}
    assert written(running) == before


# --- a PAID order's partial refund ----------------------------------------------------------------


def refund(
    staff: StorefrontClient, order_id: str, amount_minor: int | None = None
) -> order_pb2.Order:
    return staff.orders.RefundOrder(
        order_pb.RefundOrderRequest(
            order_id=order_id,
            request_id=str(uuid.uuid4()),
            amount=None
            if amount_minor is None
            else common_pb2.Money(currency_code="EUR", amount_minor=amount_minor),
            reason="one item will not ship",
        )
    ).order


def test_a_paid_order_refunded_in_part_stays_paid_ships_and_refunds_the_rest_later(
    running: Running, customer: Customer
) -> None:
    add(customer, product(running, price_minor=2000), 2)
    order = place(customer, order_request())
    staff = running.login(Role.STAFF)

    everything = rpc_error(lambda: refund(staff, order.id))
    assert (everything.code(), error_info(everything)[0]) == (
        StatusCode.FAILED_PRECONDITION,
        "REFUND_ALL_UNSHIPPED",
    )

    refunded = refund(staff, order.id, 2000)
    assert refunded.state == order_pb2.ORDER_STATE_PAID
    assert [money(r.amount) for r in refunded.refunds] == [("EUR", 2000)]

    shipped = staff.orders.ShipOrder(
        order_pb.ShipOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), carrier="DHL", tracking_number="T"
        )
    ).order
    assert shipped.state == order_pb2.ORDER_STATE_SHIPPED
    rest = refund(staff, order.id)
    assert rest.state == order_pb2.ORDER_STATE_REFUNDED
    assert sum(r.amount.amount_minor for r in rest.refunds) == order.captured.amount_minor
