"""Payment failures end to end: a real server with the http gateway and a fake provider over HTTP.

Every scenario checks the order's final state, how many charges the provider made under the
order's key, and that stock is conserved: the product's levels agree with its ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import checkout_service_pb2 as pb
from storefront.v1 import inventory_service_pb2 as inventory_pb
from storefront.v1 import order_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront_client import RetryPolicy, StorefrontClient, error_info

from server.app import reconcile_lease
from server.db import utcnow
from server.domain import orders, payment_jobs
from server.domain.principal import Role
from server.logs import JsonFormatter
from server.models.order import Order
from server.payments import CircuitState, HttpPaymentGateway
from server.payments.http_gateway import charge_idempotency_header, refund_idempotency_header
from tests.conftest import insert_product
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields
from tests.fakes.payment_provider import SECRET_KEY, FakePaymentProvider

StatusCode = grpc.StatusCode
OrderState = order_pb2.OrderState
RefundStatus = order_pb2.RefundStatus
ON_HAND = 10
QUANTITY = 2
ATTEMPTS = 3  # payment_max_retries=2
VISA = "tok_visa"
BERLIN = order_pb2.Address(
    recipient_name="Erika Mustermann",
    line1="Hauptstrasse 1",
    city="Berlin",
    postal_code="10115",
    country_code="DE",
)
# Timeouts short enough that a hang costs about a second, long enough for a loaded machine to
# answer on loopback. Only the test runs the reconciler, and it may settle at once.
HTTP_SETTINGS: dict[str, object] = {
    "payment_gateway": "http",
    "payment_connect_timeout_seconds": 0.5,
    "payment_read_timeout_seconds": 0.5,
    "payment_max_retries": 2,
    "payment_backoff_seconds": 0.01,
    "payment_breaker_failures": 100,
    "reconcile_interval_seconds": 0,
    "reconcile_after_seconds": 0,
    "reservation_ttl_seconds": 60,
}


@pytest.fixture
def provider() -> Iterator[FakePaymentProvider]:
    with FakePaymentProvider() as running:
        running.hang_seconds = 1.0  # past every read timeout; frees the handler soon after
        yield running


@dataclass
class Shop:
    """A server paying through the fake provider, a signed-in customer, staff, and a product."""

    running: Running
    provider: FakePaymentProvider
    customer: StorefrontClient
    staff: StorefrontClient
    product_id: str

    def fill_cart(self, quantity: int = QUANTITY) -> None:
        self.customer.cart.AddCartItem(
            cart_pb.AddCartItemRequest(product_id=self.product_id, quantity=quantity)
        )

    def place(self, token: str = VISA, request_id: str | None = None) -> order_pb2.Order:
        return self.customer.checkout.PlaceOrder(order_request(token, request_id)).order

    def order(self, order_id: str) -> order_pb2.Order:
        return self.customer.orders.GetOrder(order_pb.GetOrderRequest(order_id=order_id)).order

    def only_order(self) -> order_pb2.Order:
        [order] = self.customer.orders.ListOrders(order_pb.ListOrdersRequest()).orders
        return order

    def events(self, order_id: str) -> list[str]:
        response = self.customer.orders.ListOrderEvents(
            order_pb.ListOrderEventsRequest(order_id=order_id, page_size=100)
        )
        return [event.type for event in response.events]

    def cart_quantities(self) -> list[int]:
        cart = self.customer.cart.GetCart(cart_pb.GetCartRequest()).cart
        return [line.quantity for line in cart.lines]

    def charges(self, order_id: str) -> int:
        return self.provider.charges_created(
            charge_idempotency_header(orders.payment_key(order_id))
        )

    def charge_id(self, order_id: str) -> str:
        """The provider's id of the charge storefront recorded for the order."""
        with self.running.db.connection_context():
            charge_id = Order.get_by_id(order_id).charge_id
        assert charge_id is not None
        return str(charge_id)

    def stock(self) -> tuple[int, int]:
        level = self.staff.inventory.GetStockLevel(
            inventory_pb.GetStockLevelRequest(product_id=self.product_id)
        ).stock_level
        return level.on_hand, level.reserved

    def ledger(self) -> Counter[str]:
        """Units moved per movement kind (RESERVATION, RELEASE, SALE, RESTOCK...)."""
        units: Counter[str] = Counter()
        token = ""
        while True:
            page = self.staff.inventory.ListStockMovements(
                inventory_pb.ListStockMovementsRequest(
                    product_id=self.product_id, page_size=100, page_token=token
                )
            )
            for movement in page.movements:
                kind = inventory_pb.StockMovementKind.Name(movement.kind)
                moved = movement.reserved_delta or movement.on_hand_delta
                units[kind.removeprefix("STOCK_MOVEMENT_KIND_")] += abs(moved)
            token = page.next_page_token
            if not token:
                return units

    def assert_stock(self, *, sold: int, reserved: int) -> None:
        """The levels are as expected, and they are what the ledger adds up to."""
        on_hand, held = self.stock()
        assert (on_hand, held) == (ON_HAND - sold, reserved)
        units = self.ledger()
        assert ON_HAND + units["RESTOCK"] == on_hand + units["SALE"]
        assert held == units["RESERVATION"] - units["RELEASE"] - units["SALE"]

    def reconcile(self) -> payment_jobs.Report:
        return self.running.app.reconcile_once()

    def reconcile_at(self, now: dt.datetime) -> payment_jobs.Report:
        """One reconciler pass as if it were `now`, with the server's settings and gateway."""
        app = self.running.app
        with self.running.db.connection_context():
            return payment_jobs.reconcile(
                app.gateway,
                reconcile_after=dt.timedelta(seconds=app.settings.reconcile_after_seconds),
                reservation_ttl=dt.timedelta(seconds=app.settings.reservation_ttl_seconds),
                lease=reconcile_lease(app.settings),
                now=now,
            )

    def breaker_state(self) -> CircuitState:
        return cast(HttpPaymentGateway, self.running.app.payment_gateway).breaker.state


def order_request(token: str, request_id: str | None = None) -> pb.PlaceOrderRequest:
    return pb.PlaceOrderRequest(
        request_id=request_id or str(uuid.uuid4()),
        shipping_address=BERLIN,
        currency_code="EUR",
        payment_method_token=token,
    )


def secret_file(tmp_path: Path, secret: str = SECRET_KEY) -> Path:
    path = tmp_path / f"payment-{uuid.uuid4().hex[:6]}.key"
    path.write_text(secret + "\n")
    return path


def sign_in(running: Running, role: Role) -> StorefrontClient:
    """A client that never retries on its own, so every provider request is the test's doing."""
    client = StorefrontClient(running.target, retry=RetryPolicy(max_attempts=1))
    client.login(running.create_user(role), PASSWORD)
    return client


@pytest.fixture
def open_shop(
    server_factory: Callable[..., Running], provider: FakePaymentProvider, tmp_path: Path
) -> Callable[..., Shop]:
    """Starts a shop with HTTP_SETTINGS changed by the keyword arguments."""

    def start(**overrides: object) -> Shop:
        running = server_factory(
            **(
                HTTP_SETTINGS
                | {
                    "payment_base_url": provider.base_url,
                    "payment_secret_key_file": secret_file(tmp_path),
                }
                | overrides
            )
        )
        with running.db.connection_context():
            product_id = insert_product(on_hand=ON_HAND)
        return Shop(
            running,
            provider,
            sign_in(running, Role.CUSTOMER),
            sign_in(running, Role.STAFF),
            product_id,
        )

    return start


@pytest.fixture
def shop(open_shop: Callable[..., Shop]) -> Shop:
    shop = open_shop()
    shop.fill_cart()
    return shop


def charge_posts(provider: FakePaymentProvider) -> list[str | None]:
    """The Idempotency-Key of every charge request the provider received, in order."""
    return [
        r.idempotency_key
        for r in provider.requests
        if (r.method, r.path) == ("POST", "/v1/charges")
    ]


# --- the provider answers -------------------------------------------------------------------------


def test_a_declined_card_fails_the_order_and_releases_its_stock(shop: Shop) -> None:
    request = order_request("tok_declined")
    err = rpc_error(lambda: shop.customer.checkout.PlaceOrder(request))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    reason, metadata = error_info(err)
    assert reason == "PAYMENT_DECLINED"
    assert metadata["decline_code"] == "card_declined"
    order = shop.order(metadata["order_id"])
    assert order.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert order.payment_failure_code == "card_declined"
    assert order.captured.amount_minor == 0
    assert shop.charges(order.id) == shop.provider.total_charges_created() == 1  # declined
    shop.assert_stock(sold=0, reserved=0)
    assert shop.ledger() == {"RESERVATION": QUANTITY, "RELEASE": QUANTITY}
    assert shop.cart_quantities() == [QUANTITY]

    # A retry answers the same without asking the provider again.
    asked = len(shop.provider.requests)
    again = rpc_error(lambda: shop.customer.checkout.PlaceOrder(request))
    assert (again.code(), error_info(again)) == (err.code(), error_info(err))
    assert len(shop.provider.requests) == asked


@pytest.mark.parametrize(("failures", "status"), [(1, 500), (2, 503), (2, 502), (1, 429)])
def test_provider_errors_are_retried_under_one_key_and_charge_once(
    shop: Shop, failures: int, status: int
) -> None:
    shop.provider.fail_next(failures, status=status)
    order = shop.place()
    assert order.state == OrderState.ORDER_STATE_PAID
    assert order.captured.amount_minor == order.total.amount_minor > 0
    key = charge_idempotency_header(orders.payment_key(order.id))
    assert charge_posts(shop.provider) == [key] * (failures + 1)
    assert shop.charges(order.id) == shop.provider.total_charges_created() == 1
    shop.assert_stock(sold=QUANTITY, reserved=0)
    assert shop.cart_quantities() == []


# --- the provider's answer is lost ---------------------------------------------------------------


def test_a_charge_whose_answer_is_lost_is_settled_paid_by_the_reconciler(shop: Shop) -> None:
    shop.provider.hang_next(ATTEMPTS, processed=True)
    pending = shop.place()
    assert pending.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    assert shop.charges(pending.id) == 1  # made by the first attempt, replayed to the others
    assert len(charge_posts(shop.provider)) == ATTEMPTS
    shop.assert_stock(sold=0, reserved=QUANTITY)
    assert shop.cart_quantities() == [QUANTITY]
    assert shop.events(pending.id) == ["ORDER_PLACED", "PAYMENT_OUTCOME_UNKNOWN"]

    report = shop.reconcile()
    assert report.paid == [pending.id]
    paid = shop.order(pending.id)
    assert paid.state == OrderState.ORDER_STATE_PAID
    assert paid.captured.amount_minor == paid.total.amount_minor
    assert shop.charges(pending.id) == shop.provider.total_charges_created() == 1
    shop.assert_stock(sold=QUANTITY, reserved=0)
    assert shop.cart_quantities() == []
    assert shop.events(pending.id)[-1] == "PAYMENT_CAPTURED"

    assert shop.reconcile().paid == []  # settled once
    shop.assert_stock(sold=QUANTITY, reserved=0)


def test_a_charge_that_never_arrived_is_failed_by_the_reconciler(shop: Shop) -> None:
    request = order_request(VISA)
    shop.provider.hang_next(ATTEMPTS, processed=False)
    # A read timeout cannot tell "never arrived" from "answer lost": the order waits.
    pending = shop.customer.checkout.PlaceOrder(request).order
    assert pending.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    shop.assert_stock(sold=0, reserved=QUANTITY)

    report = shop.reconcile()
    assert report.failed == [pending.id]
    failed = shop.order(pending.id)
    assert failed.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert failed.payment_failure_code == orders.NOT_COMPLETED
    assert shop.charges(pending.id) == shop.provider.total_charges_created() == 0
    shop.assert_stock(sold=0, reserved=0)
    assert shop.ledger() == {"RESERVATION": QUANTITY, "RELEASE": QUANTITY}
    assert shop.cart_quantities() == [QUANTITY]

    err = rpc_error(lambda: shop.customer.checkout.PlaceOrder(request))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == ("PAYMENT_NOT_COMPLETED", {"order_id": pending.id})
    assert shop.provider.total_charges_created() == 0


# --- the provider is down ------------------------------------------------------------------------


def test_an_open_circuit_fails_fast_and_a_retry_after_recovery_charges_once(
    open_shop: Callable[..., Shop],
) -> None:
    shop = open_shop(payment_breaker_failures=ATTEMPTS, payment_breaker_reset_seconds=0.3)
    shop.fill_cart()
    shop.provider.fail_next(1000, status=503)
    request = order_request(VISA)

    err = rpc_error(lambda: shop.customer.checkout.PlaceOrder(request))
    assert err.code() == StatusCode.UNAVAILABLE
    assert error_info(err)[0] == "PAYMENT_PROVIDER_UNAVAILABLE"
    assert len(shop.provider.requests) == ATTEMPTS
    assert shop.breaker_state() is CircuitState.OPEN
    # Nothing was charged; the order waits with its stock for a retry.
    pending = shop.only_order()
    assert pending.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    shop.assert_stock(sold=0, reserved=QUANTITY)

    for _ in range(3):
        fast = rpc_error(lambda: shop.customer.checkout.PlaceOrder(request))
        assert (fast.code(), error_info(fast)[0]) == (
            StatusCode.UNAVAILABLE,
            "PAYMENT_PROVIDER_UNAVAILABLE",
        )
    assert len(shop.provider.requests) == ATTEMPTS  # no network traffic while open

    shop.provider.clear_faults()
    breaker = cast(HttpPaymentGateway, shop.running.app.payment_gateway).breaker
    # The configured cool-down (a timer, not synchronisation with another thread).
    time.sleep(breaker.seconds_until_trial() + 0.01)
    paid = shop.customer.checkout.PlaceOrder(request).order
    assert (paid.id, paid.state) == (pending.id, OrderState.ORDER_STATE_PAID)
    assert shop.breaker_state() is CircuitState.CLOSED
    assert shop.charges(paid.id) == shop.provider.total_charges_created() == 1
    shop.assert_stock(sold=QUANTITY, reserved=0)
    assert shop.cart_quantities() == []


def test_a_stopped_provider_is_unavailable_and_the_order_keeps_its_stock(shop: Shop) -> None:
    shop.provider.stop()
    err = rpc_error(lambda: shop.place())
    assert err.code() == StatusCode.UNAVAILABLE
    assert error_info(err)[0] == "PAYMENT_PROVIDER_UNAVAILABLE"
    pending = shop.only_order()
    assert pending.state == OrderState.ORDER_STATE_PENDING_PAYMENT
    shop.assert_stock(sold=0, reserved=QUANTITY)

    # The reconciler cannot ask either: the order waits for its reservation to expire.
    report = shop.reconcile()
    assert (report.failed, report.expired, report.still_pending) == ([], [], 1)
    assert shop.order(pending.id).state == OrderState.ORDER_STATE_PENDING_PAYMENT
    shop.assert_stock(sold=0, reserved=QUANTITY)


# --- reservations expire; a late charge is refunded ----------------------------------------------


def test_an_expired_reservation_fails_the_order_and_a_late_charge_is_refunded(shop: Shop) -> None:
    shop.provider.hang_next(ATTEMPTS, processed=True)  # charged, answer lost
    pending = shop.place()
    assert pending.state == OrderState.ORDER_STATE_PENDING_PAYMENT

    shop.provider.fail_next(1000, status=503)  # the provider is unreachable for a while
    report = shop.reconcile()
    assert (report.expired, report.still_pending) == ([], 1)  # not expired yet: keep waiting
    shop.assert_stock(sold=0, reserved=QUANTITY)

    ttl = shop.running.app.settings.reservation_ttl_seconds
    report = shop.reconcile_at(utcnow() + dt.timedelta(seconds=ttl + 1))
    assert report.expired == [pending.id]
    expired = shop.order(pending.id)
    assert expired.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert expired.payment_failure_code == orders.RESERVATION_EXPIRED
    shop.assert_stock(sold=0, reserved=0)

    shop.provider.clear_faults()  # back, and it shows the charge the lost answer was about
    report = shop.reconcile()
    assert report.late_charges_refunded == [pending.id]
    refunded = shop.order(pending.id)
    total = refunded.total.amount_minor
    assert refunded.state == OrderState.ORDER_STATE_PAYMENT_FAILED
    assert (refunded.captured.amount_minor, refunded.refunded.amount_minor) == (total, total)
    assert [(r.status, r.amount.amount_minor) for r in refunded.refunds] == [
        (RefundStatus.REFUND_STATUS_SUCCEEDED, total)
    ]
    charge_id = shop.charge_id(pending.id)
    assert shop.provider.charge(charge_id)["amount_refunded"] == total
    assert shop.charges(pending.id) == shop.provider.total_charges_created() == 1
    assert shop.events(pending.id)[-3:] == [
        "RESERVATION_EXPIRED",
        "LATE_CHARGE_REFUNDED",
        "REFUND_SUCCEEDED",
    ]
    shop.assert_stock(sold=0, reserved=0)

    report = shop.reconcile()
    assert (report.late_charges_refunded, report.refunds_succeeded) == ([], [])
    assert shop.provider.charge(charge_id)["amount_refunded"] == total


# --- refunds while the provider is down ----------------------------------------------------------


@pytest.mark.parametrize("outage", ["down", "answer lost"])
def test_a_cancellation_refund_is_sent_when_the_provider_recovers_and_only_once(
    shop: Shop, outage: str
) -> None:
    paid = shop.place()
    assert paid.state == OrderState.ORDER_STATE_PAID
    charge_id = shop.charge_id(paid.id)
    total = paid.total.amount_minor
    if outage == "down":
        shop.provider.fail_next(1000, status=503)
    else:
        shop.provider.hang_next(ATTEMPTS, processed=True)  # refunded, answer lost

    request = order_pb.CancelOrderRequest(
        order_id=paid.id, request_id=str(uuid.uuid4()), reason="changed my mind"
    )
    cancelled = shop.customer.orders.CancelOrder(request).order
    assert cancelled.state == OrderState.ORDER_STATE_CANCELLED
    [owed] = cancelled.refunds
    assert (owed.status, owed.amount.amount_minor) == (RefundStatus.REFUND_STATUS_PENDING, total)
    assert cancelled.refunded.amount_minor == total
    shop.assert_stock(sold=0, reserved=0)  # sold, then put back on hand
    assert shop.ledger()["RESTOCK"] == QUANTITY
    expected_at_provider = 0 if outage == "down" else total
    assert shop.provider.charge(charge_id)["amount_refunded"] == expected_at_provider

    shop.provider.clear_faults()
    report = shop.reconcile()
    assert report.refunds_succeeded == [owed.id]
    [sent] = shop.order(paid.id).refunds
    assert sent.status == RefundStatus.REFUND_STATUS_SUCCEEDED
    assert shop.provider.charge(charge_id)["amount_refunded"] == total

    # Sent again under its key, the provider replays it; a retried cancel changes nothing.
    replay = shop.running.app.gateway.refund(
        idempotency_key=orders.refund_key(owed.id), charge_id=charge_id, amount_minor=total
    )
    assert replay.amount_minor == total
    assert list(shop.customer.orders.CancelOrder(request).order.refunds) == [sent]
    assert shop.reconcile().refunds_succeeded == []
    assert shop.provider.charge(charge_id)["amount_refunded"] == total
    refund_posts = {r.idempotency_key for r in shop.provider.requests if r.path == "/v1/refunds"}
    assert refund_posts == {refund_idempotency_header(orders.refund_key(owed.id))}
    assert shop.provider.total_charges_created() == 1


# --- card data and secrets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "card_number", ["4242424242424242", "4242 4242 4242 4242", "4000-0566-5566"]
)
def test_a_card_number_is_refused_and_never_reaches_the_provider(
    shop: Shop, card_number: str
) -> None:
    err = rpc_error(lambda: shop.place(token=card_number))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"payment_method_token"}
    digits = card_number.replace(" ", "").replace("-", "")
    visible = repr((err.details(), err.trailing_metadata()))
    assert digits not in visible.replace(" ", "").replace("-", "")
    assert shop.provider.requests == []
    assert list(shop.customer.orders.ListOrders(order_pb.ListOrdersRequest()).orders) == []
    shop.assert_stock(sold=0, reserved=0)


def test_the_secret_key_never_appears_in_logs_or_errors(
    shop: Shop,
    open_shop: Callable[..., Shop],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_secret = "sk_test_wrong_" + uuid.uuid4().hex
    visible: list[Any] = []

    # A provider that keeps failing, then one that loses answers, with the right key.
    shop.provider.fail_next(ATTEMPTS, status=503)
    err = rpc_error(lambda: shop.place())
    assert err.code() == StatusCode.UNAVAILABLE
    visible += [err.details(), err.trailing_metadata()]
    shop.reconcile()  # settles that order: its cart cannot be checked out again while pending
    shop.provider.hang_next(ATTEMPTS, processed=True)
    assert shop.place().state == OrderState.ORDER_STATE_PENDING_PAYMENT
    shop.reconcile()

    # A server configured with the wrong key: INTERNAL, told to check the file, not the key.
    wrong = open_shop(payment_secret_key_file=secret_file(tmp_path, wrong_secret))
    wrong.fill_cart()
    err = rpc_error(lambda: wrong.place())
    assert err.code() == StatusCode.INTERNAL
    visible += [err.details(), err.trailing_metadata()]
    refused = shop.provider.requests[-1]
    assert (refused.path, refused.authorized) == ("/v1/charges", False)  # not retried
    assert any(
        "rejected the secret key" in line and "STOREFRONT_PAYMENT_SECRET_KEY_FILE" in line
        for line in map(JsonFormatter().format, caplog.records)
    )

    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "payment provider attempt failed" in logged  # the failures were logged
    for secret in (SECRET_KEY, wrong_secret):
        assert secret not in logged
        assert secret not in repr(visible)
        assert secret not in repr(shop.running.app.payment_gateway)
