"""CheckoutService.PlaceOrder through the client SDK: pricing, stock, payment and every status."""

from __future__ import annotations

import logging
import re
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import checkout_service_pb2 as pb
from storefront.v1 import (
    common_pb2,
    currency_service_pb2,
    identity_service_pb2,
    inventory_service_pb2,
    order_pb2,
    shipping_service_pb2,
)
from storefront.v1 import order_service_pb2 as order_pb
from storefront_client import RetryPolicy, StorefrontClient, error_info

from server.domain import checkout
from server.domain.principal import Role
from server.logs import JsonFormatter
from server.models.exchange_rate import ExchangeRate
from server.models.idempotency_key import IdempotencyKey
from server.models.order import Order
from server.models.product import Product
from server.models.stock import StockLevel, StockMovement
from server.payments import ChargeStatus
from tests.conftest import insert_product
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields, visible_failure

StatusCode = grpc.StatusCode
OrderState = order_pb2.OrderState
CARD_NUMBER = "4242 4242 4242 4242"
BERLIN = order_pb2.Address(
    recipient_name="Erika Mustermann",
    line1="Hauptstrasse 1",
    line2="Hinterhaus",
    city="Berlin",
    region="Berlin",
    postal_code="10115",
    country_code="DE",
)
NEW_YORK = order_pb2.Address(
    recipient_name="Jane Roe", line1="1 Main St", city="New York", region="NY", country_code="US"
)
# Only the reconciler may settle payments, and only when a test calls it.
RECONCILE_NOW = {"reconcile_after_seconds": 0, "reconcile_interval_seconds": 0}


# --- helpers --------------------------------------------------------------------------------------


@dataclass
class Customer:
    """A signed-in customer and their user id."""

    client: StorefrontClient
    id: str


def sign_in(running: Running, *, retry: RetryPolicy | None = None) -> Customer:
    """Returns a new customer, signed in."""
    client = StorefrontClient(running.target, retry=retry)
    user = client.login(running.create_user(Role.CUSTOMER), PASSWORD)
    return Customer(client, user.id)


def product(
    running: Running,
    *,
    on_hand: int = 10,
    currency: str = "EUR",
    price_minor: int = 1000,
    weight_grams: int = 0,
) -> str:
    """Creates an active product with that price, weight and stock; returns its id."""
    with running.db.connection_context():
        product_id = insert_product(on_hand=on_hand)
        Product.update(
            price_currency=currency, price_minor=price_minor, weight_grams=weight_grams
        ).where(Product.id == product_id).execute()
    return product_id


def add(customer: Customer, product_id: str, quantity: int) -> str:
    """Adds units to the customer's cart; returns the line id."""
    return customer.client.cart.AddCartItem(
        cart_pb.AddCartItemRequest(product_id=product_id, quantity=quantity)
    ).line_id


def cart_lines(customer: Customer) -> list[tuple[str, str, int]]:
    """The customer's cart as (line id, product id, quantity)."""
    cart = customer.client.cart.GetCart(cart_pb.GetCartRequest()).cart
    return [(line.id, line.product_id, line.quantity) for line in cart.lines]


def order_request(**fields: object) -> pb.PlaceOrderRequest:
    """A valid PlaceOrder request to Berlin in EUR with tok_visa, with `fields` replaced."""
    values: dict[str, object] = {
        "request_id": str(uuid.uuid4()),
        "shipping_address": BERLIN,
        "currency_code": "EUR",
        "payment_method_token": "tok_visa",
    }
    values.update(fields)
    return pb.PlaceOrderRequest(**values)  # type: ignore[arg-type]


def place(customer: Customer, request: pb.PlaceOrderRequest) -> order_pb2.Order:
    """Places the order; returns it."""
    return customer.client.checkout.PlaceOrder(request).order


def get_order(customer: Customer, order_id: str) -> order_pb2.Order:
    return customer.client.orders.GetOrder(order_pb.GetOrderRequest(order_id=order_id)).order


def list_orders(customer: Customer) -> list[order_pb2.Order]:
    return list(customer.client.orders.ListOrders(order_pb.ListOrdersRequest()).orders)


def event_types(customer: Customer, order_id: str) -> list[str]:
    events = customer.client.orders.ListOrderEvents(
        order_pb.ListOrderEventsRequest(order_id=order_id)
    ).events
    return [event.type for event in events]


def stock(staff: StorefrontClient, product_id: str) -> tuple[int, int, int]:
    """(on_hand, reserved, available) as staff see them."""
    level = staff.inventory.GetStockLevel(
        inventory_service_pb2.GetStockLevelRequest(product_id=product_id)
    ).stock_level
    return level.on_hand, level.reserved, level.available


def charges_for(running: Running, order_id: str) -> list[tuple[ChargeStatus, int, str]]:
    """The sandbox charges made for the order: (status, amount, currency)."""
    return [
        (charge.status, charge.amount_minor, charge.currency)
        for charge in running.app.payment_gateway.list_charges()  # type: ignore[attr-defined]
        if charge.idempotency_key == f"order:{order_id}"
    ]


def money(order_money: common_pb2.Money) -> tuple[str, int]:
    return order_money.currency_code, order_money.amount_minor


@dataclass(frozen=True)
class Written:
    """Everything checkout could write: to compare before and after a refused call."""

    orders: int
    checkout_keys: int
    stock: list[tuple[str, int, int]]
    movements: int
    charges: int


def written(running: Running) -> Written:
    with running.db.connection_context():
        return Written(
            orders=Order.select().count(),
            checkout_keys=IdempotencyKey.select()
            .where(IdempotencyKey.operation == checkout.OPERATION)
            .count(),
            stock=[
                (level.product_id, level.on_hand, level.reserved)
                for level in StockLevel.select().order_by(StockLevel.product)
            ],
            movements=StockMovement.select().count(),
            charges=len(running.app.payment_gateway.list_charges()),  # type: ignore[attr-defined]
        )


Rates = dict[str, tuple[Decimal, int]]


def seeded_rates(client: StorefrontClient) -> Rates:
    """Every currency's (rate against the base currency, minor unit digits)."""
    listed = client.currency.ListCurrencies(currency_service_pb2.ListCurrenciesRequest())
    return {c.code: (Decimal(c.rate), c.minor_unit_digits) for c in listed.currencies}


def half_even(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def convert(amount_minor: int, source: str, target: str, rates: Rates) -> int:
    """amount / 10^source digits / source rate * target rate * 10^target digits, half even."""
    if source == target:
        return amount_minor
    (source_rate, source_digits), (target_rate, target_digits) = rates[source], rates[target]
    with localcontext() as context:
        context.prec = 60
        exact = Decimal(amount_minor).scaleb(-source_digits) / source_rate * target_rate
        return half_even(exact.scaleb(target_digits))


def quote(
    client: StorefrontClient, *, country: str, weight_grams: int, subtotal: tuple[str, int]
) -> shipping_service_pb2.ShippingQuote:
    currency, amount = subtotal
    return client.shipping.GetShippingQuote(
        shipping_service_pb2.GetShippingQuoteRequest(
            destination_country_code=country,
            total_weight_grams=weight_grams,
            subtotal=common_pb2.Money(currency_code=currency, amount_minor=amount),
        )
    ).quote


@pytest.fixture
def customer(running: Running) -> Customer:
    return sign_in(running)


@pytest.fixture
def staff(running: Running) -> StorefrontClient:
    return running.login(Role.STAFF)


# --- the happy paths ------------------------------------------------------------------------------


def test_an_order_in_a_third_currency_is_priced_reserved_charged_and_recorded(
    running: Running, customer: Customer, staff: StorefrontClient
) -> None:
    kettle = product(running, on_hand=5, currency="GBP", price_minor=1999, weight_grams=1250)
    mug = product(running, on_hand=10, currency="EUR", price_minor=899, weight_grams=300)
    add(customer, kettle, 1)
    add(customer, mug, 3)
    rates = seeded_rates(customer.client)

    order = place(customer, order_request(currency_code="JPY"))

    kettle_price = convert(1999, "GBP", "JPY", rates)
    mug_price = convert(899, "EUR", "JPY", rates)
    subtotal = kettle_price + 3 * mug_price
    expected_quote = quote(
        customer.client, country="DE", weight_grams=1250 + 3 * 300, subtotal=("JPY", subtotal)
    )
    assert not expected_quote.free_shipping  # the happy path pays for shipping
    shipping = expected_quote.cost.amount_minor
    tax = half_even(Decimal("0.19") * (subtotal + shipping))
    total = subtotal + shipping + tax
    assert shipping > 0 and tax > 0

    assert order.state == OrderState.ORDER_STATE_PAID
    assert order.customer_id == customer.id
    assert [
        (
            line.product_id,
            line.quantity,
            money(line.unit_price),
            money(line.line_total),
            money(line.catalog_unit_price),
        )
        for line in order.lines
    ] == [
        (kettle, 1, ("JPY", kettle_price), ("JPY", kettle_price), ("GBP", 1999)),
        (mug, 3, ("JPY", mug_price), ("JPY", 3 * mug_price), ("EUR", 899)),
    ]
    assert [(line.sku, line.name) for line in order.lines] == [
        (f"SKU-{kettle[:8]}", "Widget"),
        (f"SKU-{mug[:8]}", "Widget"),
    ]
    assert money(order.subtotal) == ("JPY", subtotal)
    assert money(order.shipping) == ("JPY", shipping)
    assert money(order.tax) == ("JPY", tax)
    assert money(order.total) == ("JPY", total)
    assert money(order.captured) == ("JPY", total)
    assert money(order.refunded) == ("JPY", 0)
    assert order.tax_rate == "0.19"
    assert order.shipping_quote_id == expected_quote.quote_id
    assert order.shipping_service_level == expected_quote.service_level
    assert order.shipping_address == BERLIN
    assert order.payment_failure_code == ""
    assert order.paid_time.seconds > 0 and order.create_time.seconds > 0
    assert get_order(customer, order.id) == order
    assert [found.id for found in list_orders(customer)] == [order.id]

    assert cart_lines(customer) == []
    assert stock(staff, kettle) == (4, 0, 4)
    assert stock(staff, mug) == (7, 0, 7)
    assert charges_for(running, order.id) == [(ChargeStatus.SUCCEEDED, total, "JPY")]
    assert len(running.app.payment_gateway.list_charges()) == 1  # type: ignore[attr-defined]
    events = customer.client.orders.ListOrderEvents(
        order_pb.ListOrderEventsRequest(order_id=order.id)
    ).events
    assert [(e.type, e.from_state, e.to_state) for e in events] == [
        (
            "ORDER_PLACED",
            OrderState.ORDER_STATE_PENDING_PAYMENT,
            OrderState.ORDER_STATE_PENDING_PAYMENT,
        ),
        ("PAYMENT_CAPTURED", OrderState.ORDER_STATE_PENDING_PAYMENT, OrderState.ORDER_STATE_PAID),
    ]
    # The customer caused both.
    assert {e.actor for e in events} == {customer.id}


@pytest.mark.parametrize(
    ("address", "currency", "price", "weight_grams", "tax_rate", "free_shipping"),
    [
        # 2 x 75.00 EUR is above the EU zone's threshold (100.00 USD): shipping is free.
        (BERLIN, "EUR", ("EUR", 7500), 4000, Decimal("0.19"), True),
        # The US have a rate of 0 and 2 x 12.50 USD is below the US threshold (50.00 USD).
        (NEW_YORK, "USD", ("USD", 1250), 1500, Decimal(0), False),
        # A zero-tax country paid in another currency than the product's.
        (NEW_YORK, "CAD", ("EUR", 1250), 0, Decimal(0), False),
    ],
)
def test_free_shipping_and_zero_tax(
    running: Running,
    customer: Customer,
    address: order_pb2.Address,
    currency: str,
    price: tuple[str, int],
    weight_grams: int,
    tax_rate: Decimal,
    free_shipping: bool,
) -> None:
    product_id = product(
        running, currency=price[0], price_minor=price[1], weight_grams=weight_grams
    )
    add(customer, product_id, 2)
    rates = seeded_rates(customer.client)

    order = place(customer, order_request(shipping_address=address, currency_code=currency))

    subtotal = 2 * convert(price[1], price[0], currency, rates)
    expected_quote = quote(
        customer.client,
        country=address.country_code,
        weight_grams=2 * weight_grams,
        subtotal=(currency, subtotal),
    )
    assert expected_quote.free_shipping is free_shipping
    shipping = expected_quote.cost.amount_minor
    assert (shipping == 0) is free_shipping
    tax = half_even(tax_rate * (subtotal + shipping))
    assert (tax == 0) is (tax_rate == 0)
    assert order.state == OrderState.ORDER_STATE_PAID
    assert [money(order.subtotal), money(order.shipping), money(order.tax)] == [
        (currency, subtotal),
        (currency, shipping),
        (currency, tax),
    ]
    assert money(order.total) == money(order.captured) == (currency, subtotal + shipping + tax)
    assert Decimal(order.tax_rate) == tax_rate
    assert order.shipping_quote_id == expected_quote.quote_id
    assert charges_for(running, order.id) == [
        (ChargeStatus.SUCCEEDED, subtotal + shipping + tax, currency)
    ]


# --- INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED -----------------------------------------


def _without_address_field(name: str) -> order_pb2.Address:
    address = order_pb2.Address()
    address.CopyFrom(BERLIN)
    address.ClearField(name)  # type: ignore[arg-type]
    return address


def _in_country(code: str) -> order_pb2.Address:
    address = order_pb2.Address()
    address.CopyFrom(BERLIN)
    address.country_code = code
    return address


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "not-a-uuid"}, {"request_id"}),
        ({"request_id": "123e4567e89b42d3a456426614174000"}, {"request_id"}),
        (
            {"shipping_address": _without_address_field("recipient_name")},
            {"shipping_address.recipient_name"},
        ),
        ({"shipping_address": _without_address_field("line1")}, {"shipping_address.line1"}),
        ({"shipping_address": _without_address_field("city")}, {"shipping_address.city"}),
        (
            {"shipping_address": _without_address_field("country_code")},
            {"shipping_address.country_code"},
        ),
        (
            {"shipping_address": order_pb2.Address()},
            {
                "shipping_address.recipient_name",
                "shipping_address.line1",
                "shipping_address.city",
                "shipping_address.country_code",
            },
        ),
        ({"shipping_address": _in_country("ZZ")}, {"shipping_address.country_code"}),
        ({"currency_code": ""}, {"currency_code"}),
        ({"currency_code": "EURO"}, {"currency_code"}),
        ({"currency_code": "AFN"}, {"currency_code"}),  # ISO 4217, but no exchange rate
        ({"payment_method_token": ""}, {"payment_method_token"}),
        ({"payment_method_token": "tok visa!"}, {"payment_method_token"}),
        ({"payment_method_token": "t" * 201}, {"payment_method_token"}),
        (
            {"request_id": "", "currency_code": "", "payment_method_token": ""},
            {"request_id", "currency_code", "payment_method_token"},
        ),
    ],
)
def test_invalid_requests_are_refused_and_write_nothing(
    running: Running, customer: Customer, fields: dict[str, object], violated: set[str]
) -> None:
    add(customer, product(running), 2)
    cart = cart_lines(customer)
    before = written(running)

    err = rpc_error(lambda: place(customer, order_request(**fields)))

    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == violated
    assert written(running) == before
    assert cart_lines(customer) == cart


@pytest.mark.parametrize(
    "card_number",
    [
        CARD_NUMBER,
        "4242424242424242",
        "4242-4242-4242-4242",
        "4242_4242_4242_4242",
        "378282246310005",
    ],
)
def test_a_card_number_as_token_is_refused_and_never_echoed(
    running: Running, customer: Customer, card_number: str
) -> None:
    add(customer, product(running), 1)
    before = written(running)

    err = rpc_error(lambda: place(customer, order_request(payment_method_token=card_number)))

    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"payment_method_token"}
    digits = card_number.replace(" ", "").replace("-", "")
    visible = [err.details() or ""] + [
        value.decode("latin-1") if isinstance(value, bytes) else value
        for _, value in err.trailing_metadata() or ()
    ]
    for text in visible:
        assert card_number not in text
        assert digits not in re.sub(r"[ -]", "", text)
    assert written(running) == before


def test_only_customers_may_place_orders(running: Running) -> None:
    anonymous = running.client()
    err = rpc_error(lambda: anonymous.checkout.PlaceOrder(order_request()))
    assert err.code() == StatusCode.UNAUTHENTICATED
    for role in (Role.STAFF, Role.ADMIN):
        signed_in = running.login(role)
        err = rpc_error(lambda signed_in=signed_in: signed_in.checkout.PlaceOrder(order_request()))
        assert err.code() == StatusCode.PERMISSION_DENIED


# --- FAILED_PRECONDITION: CART_EMPTY and OUT_OF_STOCK ---------------------------------------------


def test_an_empty_cart_is_failed_precondition_and_the_request_id_stays_usable(
    running: Running, customer: Customer
) -> None:
    request = order_request()
    before = written(running)

    err = rpc_error(lambda: place(customer, request))

    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err)[0] == "CART_EMPTY"
    assert written(running) == before
    # Failures are not stored: the same request_id runs again once the cart has something.
    add(customer, product(running), 1)
    assert place(customer, request).state == OrderState.ORDER_STATE_PAID


def test_a_price_in_a_currency_without_a_rate_is_failed_precondition(
    running: Running, customer: Customer
) -> None:
    # ISO 4217 knows AFN, storefront has no exchange rate for it: the price cannot be converted.
    add(customer, product(running, currency="AFN"), 1)
    before = written(running)
    err = rpc_error(lambda: place(customer, order_request()))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err)[0] == "PRICE_NOT_CONVERTIBLE"
    assert "AFN" in (err.details() or "")
    assert written(running) == before


def test_a_total_beyond_int64_is_invalid_argument_on_the_currency(
    running: Running, customer: Customer
) -> None:
    # The largest valid line (99 x 1e8 USD minor units) in a currency worth a billionth of a
    # dollar (the largest rate UpdateExchangeRates accepts) is beyond int64 minor units.
    add(customer, product(running, currency="USD", price_minor=100_000_000), 99)
    with running.db.connection_context():
        ExchangeRate.update(rate="1000000000").where(ExchangeRate.currency_code == "CHF").execute()
    before = written(running)
    err = rpc_error(lambda: place(customer, order_request(currency_code="CHF")))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"currency_code"}
    assert written(running) == before


def test_out_of_stock_names_exactly_the_short_lines_and_reserves_nothing(
    running: Running, customer: Customer, staff: StorefrontClient
) -> None:
    plenty = product(running, on_hand=10)
    short = product(running, on_hand=2)
    taken = product(running, on_hand=5)
    archived = product(running, on_hand=10)
    plenty_line = add(customer, plenty, 3)
    short_line = add(customer, short, 3)
    taken_line = add(customer, taken, 2)
    archived_line = add(customer, archived, 1)
    with running.db.connection_context():
        StockLevel.update(reserved=4).where(StockLevel.product == taken).execute()
        Product.update(state="ARCHIVED").where(Product.id == archived).execute()
    cart = cart_lines(customer)
    request = order_request()
    before = written(running)

    err = rpc_error(lambda: place(customer, request))

    assert err.code() == StatusCode.FAILED_PRECONDITION
    reason, metadata = error_info(err)
    assert reason == "OUT_OF_STOCK"
    assert set(metadata) == {"line_ids", "product_ids"}
    line_ids, product_ids = metadata["line_ids"].split(","), metadata["product_ids"].split(",")
    assert sorted(line_ids) == sorted([short_line, taken_line, archived_line])
    assert sorted(product_ids) == sorted([short, taken, archived])
    assert plenty_line not in line_ids and plenty not in product_ids
    assert written(running) == before  # no order, no key, no movement, no charge
    assert stock(staff, plenty) == (10, 0, 10)
    assert stock(staff, taken) == (5, 4, 1)
    assert cart_lines(customer) == cart

    # The same request_id, after the cart is fixed, places the order with what is left.
    for line_id in (short_line, taken_line, archived_line):
        customer.client.cart.RemoveCartItem(cart_pb.RemoveCartItemRequest(line_id=line_id))
    order = place(customer, request)
    assert order.state == OrderState.ORDER_STATE_PAID
    assert [(line.product_id, line.quantity) for line in order.lines] == [(plenty, 3)]
    assert stock(staff, plenty) == (7, 0, 7)


# --- FAILED_PRECONDITION: PAYMENT_DECLINED --------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("tok_declined", "card_declined"), ("tok_insufficient_funds", "insufficient_funds")],
)
def test_a_declined_payment_fails_the_order_and_releases_its_stock(
    running: Running, customer: Customer, staff: StorefrontClient, token: str, decline_code: str
) -> None:
    product_id = product(running, on_hand=5)
    add(customer, product_id, 2)
    cart = cart_lines(customer)
    request = order_request(payment_method_token=token)

    err = rpc_error(lambda: place(customer, request))

    assert err.code() == StatusCode.FAILED_PRECONDITION
    reason, metadata = error_info(err)
    assert (reason, set(metadata)) == ("PAYMENT_DECLINED", {"decline_code", "order_id"})
    assert metadata["decline_code"] == decline_code
    order_id = metadata["order_id"]
    order = get_order(customer, order_id)
    assert order.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert order.payment_failure_code == decline_code
    assert order.captured.amount_minor == 0
    assert stock(staff, product_id) == (5, 0, 5)
    assert cart_lines(customer) == cart
    assert event_types(customer, order_id) == ["ORDER_PLACED", "PAYMENT_DECLINED"]
    assert charges_for(running, order_id) == [
        (ChargeStatus.DECLINED, order.total.amount_minor, "EUR")
    ]

    # A retry with the same request_id answers the same, byte for byte, and charges nothing.
    first = visible_failure(lambda: place(customer, request))
    assert visible_failure(lambda: place(customer, request)) == first
    assert error_info(rpc_error(lambda: place(customer, request)))[1] == metadata
    assert [found.id for found in list_orders(customer)] == [order_id]
    assert len(charges_for(running, order_id)) == 1
    assert stock(staff, product_id) == (5, 0, 5)
    assert cart_lines(customer) == cart


# --- payment outcomes settled later ---------------------------------------------------------------


def test_provider_down_is_unavailable_and_the_reconciler_releases_the_stock(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(**RECONCILE_NOW)
    # One attempt per call, so that each retry below is the test's own.
    customer = sign_in(running, retry=RetryPolicy(max_attempts=1))
    staff = running.login(Role.STAFF)
    product_id = product(running, on_hand=5)
    add(customer, product_id, 2)
    cart = cart_lines(customer)
    request = order_request(payment_method_token="tok_provider_down")

    err = rpc_error(lambda: place(customer, request))

    assert err.code() == StatusCode.UNAVAILABLE
    assert error_info(err)[0] == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert running.app.payment_gateway.list_charges() == []  # type: ignore[attr-defined]
    [order] = list_orders(customer)
    assert order.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    assert stock(staff, product_id) == (5, 2, 3)
    assert cart_lines(customer) == cart

    # A retry with the same request_id (and so the same token) tries the same order again.
    err = rpc_error(lambda: place(customer, request))
    assert error_info(err)[0] == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert [found.id for found in list_orders(customer)] == [order.id]
    assert stock(staff, product_id) == (5, 2, 3)
    # Another token is another request: the request_id is not reused for it.
    err = rpc_error(lambda: place(customer, order_request(request_id=request.request_id)))
    assert (err.code(), error_info(err)[0]) == (
        StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )

    report = running.app.reconcile_once()

    assert report.failed == [order.id]
    failed = get_order(customer, order.id)
    assert failed.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert failed.payment_failure_code == "payment_not_completed"
    assert stock(staff, product_id) == (5, 0, 5)
    assert cart_lines(customer) == cart
    assert event_types(customer, order.id)[-1] == "PAYMENT_NOT_COMPLETED"
    err = rpc_error(lambda: place(customer, request))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == ("PAYMENT_NOT_COMPLETED", {"order_id": order.id})
    # A new attempt with a new request_id goes through.
    assert place(customer, order_request()).state == OrderState.ORDER_STATE_PAID
    assert stock(staff, product_id) == (3, 0, 3)


def test_a_lost_answer_is_pending_until_the_reconciler_finds_the_charge(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(**RECONCILE_NOW)
    customer = sign_in(running)
    staff = running.login(Role.STAFF)
    kettle = product(running, on_hand=5)
    mug = product(running, on_hand=5)
    add(customer, kettle, 2)
    request = order_request(payment_method_token="tok_timeout")

    order = place(customer, request)

    assert order.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    assert order.captured.amount_minor == 0
    assert stock(staff, kettle) == (5, 2, 3)
    assert [(product_id, quantity) for _, product_id, quantity in cart_lines(customer)] == [
        (kettle, 2)
    ]
    assert event_types(customer, order.id) == ["ORDER_PLACED", "PAYMENT_OUTCOME_UNKNOWN"]
    assert charges_for(running, order.id) == [
        (ChargeStatus.SUCCEEDED, order.total.amount_minor, "EUR")
    ]
    # A retry returns the order as it is, and charges nothing more.
    assert place(customer, request) == order
    assert len(charges_for(running, order.id)) == 1

    # Units added while the payment is pending are not the order's: they stay in the cart.
    add(customer, kettle, 1)
    add(customer, mug, 1)
    report = running.app.reconcile_once()

    assert report.paid == [order.id]
    paid = get_order(customer, order.id)
    assert paid.state == OrderState.ORDER_STATE_PAID
    assert money(paid.captured) == money(paid.total)
    assert stock(staff, kettle) == (3, 0, 3)
    assert stock(staff, mug) == (5, 0, 5)
    assert [(product_id, quantity) for _, product_id, quantity in cart_lines(customer)] == [
        (kettle, 1),
        (mug, 1),
    ]
    assert event_types(customer, order.id)[-1] == "PAYMENT_CAPTURED"
    assert len(charges_for(running, order.id)) == 1
    assert running.app.reconcile_once().paid == []  # settled once


def test_a_lost_answer_of_a_declined_payment_fails_the_order_once_reconciled(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(**RECONCILE_NOW)
    customer = sign_in(running)
    staff = running.login(Role.STAFF)
    product_id = product(running, on_hand=5)
    add(customer, product_id, 2)
    cart = cart_lines(customer)
    request = order_request(payment_method_token="tok_timeout_declined")

    order = place(customer, request)

    assert order.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    assert stock(staff, product_id) == (5, 2, 3)

    report = running.app.reconcile_once()

    assert report.failed == [order.id]
    failed = get_order(customer, order.id)
    assert failed.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert failed.payment_failure_code == "card_declined"
    assert stock(staff, product_id) == (5, 0, 5)
    assert cart_lines(customer) == cart
    assert event_types(customer, order.id)[-1] == "PAYMENT_DECLINED"
    # A retry answers as for a decline at checkout, never OK with a failed order.
    err = rpc_error(lambda: place(customer, request))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == (
        "PAYMENT_DECLINED",
        {"decline_code": "card_declined", "order_id": order.id},
    )
    assert len(charges_for(running, order.id)) == 1


# --- metrics and logs -----------------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value_of(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 when the series does not exist yet."""
    matches = [value for found, value in samples.get(name, []) if found == labels]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else 0.0


def test_checkout_metrics_count_orders_failures_and_provider_time(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(metrics_address="127.0.0.1:0")
    port = running.app.metrics_port
    assert port
    customer = sign_in(running)
    scarce = product(running, on_hand=1)
    add(customer, scarce, 2)
    rpc_error(lambda: place(customer, order_request()))  # OUT_OF_STOCK
    customer.client.cart.EmptyCart(cart_pb.EmptyCartRequest())
    add(customer, product(running), 1)
    rpc_error(lambda: place(customer, order_request(payment_method_token="tok_declined")))
    place(customer, order_request(currency_code="CHF"))

    samples = scrape(port)

    assert value_of(samples, "storefront_orders_placed_total", currency="CHF") == 1
    assert value_of(samples, "storefront_orders_placed_total", currency="EUR") == 0
    failures = "storefront_checkout_failures_total"
    assert value_of(samples, failures, reason="OUT_OF_STOCK") == 1
    assert value_of(samples, failures, reason="PAYMENT_DECLINED") == 1
    seconds = "storefront_payment_provider_seconds_count"
    assert value_of(samples, seconds, operation="charge", outcome="ok") == 1
    assert value_of(samples, seconds, operation="charge", outcome="PaymentDeclined") == 1


def test_no_card_number_payment_token_or_access_token_is_logged(
    running: Running, customer: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    add(customer, product(running), 1)
    session = customer.client.session
    assert session is not None
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        rpc_error(lambda: place(customer, order_request(payment_method_token=CARD_NUMBER)))
        rpc_error(lambda: place(customer, order_request(payment_method_token="tok_declined")))
        place(customer, order_request(payment_method_token="tok_mastercard"))
        customer.client.identity.GetCurrentUser(identity_service_pb2.GetCurrentUserRequest())

    access = [r for r in caplog.records if r.name == "storefront.access"]
    assert [getattr(r, "grpc.code", None) for r in access] == [
        "InvalidArgument",
        "FailedPrecondition",
        "OK",
        "OK",
    ]
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (CARD_NUMBER, "4242424242424242", "tok_declined", "tok_mastercard"):
        assert secret not in everything
    assert session.access_token not in everything
