"""PlaceOrder under concurrency: no oversell, and one order per request_id."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import checkout_service_pb2 as pb
from storefront.v1 import inventory_service_pb2 as inventory_pb
from storefront.v1 import order_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront.v1 import promotion_service_pb2 as promotion_pb
from storefront_client import StorefrontClient, error_info

from server.app import create_app
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.payments import Charge
from tests.conftest import empty_tables, insert_product
from tests.e2e.conftest import PASSWORD, Running, make_settings, rpc_error

StatusCode = grpc.StatusCode
OrderState = order_pb2.OrderState
MovementKind = inventory_pb.StockMovementKind
CUSTOMERS = 200
STOCK = 50
DUPLICATES = 50
CALL_TIMEOUT = 60.0  # far above what a call takes; only a hang reaches it
BERLIN = order_pb2.Address(
    recipient_name="Erika Mustermann", line1="Hauptstrasse 1", city="Berlin", country_code="DE"
)
T = TypeVar("T")


@dataclass
class Customer:
    """A signed-in customer and their user id."""

    client: StorefrontClient
    id: str


@dataclass
class Crowd:
    """One server for the module, with CUSTOMERS customers signed in and a staff member."""

    running: Running
    customers: list[Customer]
    staff: StorefrontClient

    def sign_in(self) -> Customer:
        """Returns a new customer, signed in."""
        client = self.running.client()
        user = client.login(self.running.create_user(Role.CUSTOMER), PASSWORD)
        return Customer(client, user.id)

    def product(self, on_hand: int) -> str:
        with self.running.db.connection_context():
            return insert_product(on_hand=on_hand)

    def charges(self) -> list[Charge]:
        return list(self.running.app.payment_gateway.list_charges())  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def crowd(e2e_database_url: tuple[Path, str]) -> Iterator[Crowd]:
    """A server sized for hundreds of concurrent calls, shared by this module's tests (signing
    in CUSTOMERS customers takes seconds; each test uses its own products)."""
    tmp, url = e2e_database_url
    settings = make_settings(
        tmp,
        url,
        max_concurrent_rpcs=512,
        worker_threads=16,
        db_pool_size=24,
        reconcile_interval_seconds=0,
    )
    app = create_app(settings)
    app.start()
    clients: list[StorefrontClient] = []
    try:
        empty_tables(app.db)
        running = Running(app, app.db, f"127.0.0.1:{app.port}", PasswordHasher(concurrency=4))
        crowd = Crowd(running, [], running.login(Role.STAFF))
        clients.append(crowd.staff)
        crowd.customers = in_parallel(
            [crowd.sign_in for _ in range(CUSTOMERS)], threads=16, together=False
        )
        clients.extend(customer.client for customer in crowd.customers)
        yield crowd
    finally:
        for client in clients:
            client.close()
        app.stop(grace=0)


def in_parallel(calls: list[Callable[[], T]], *, threads: int, together: bool = True) -> list[T]:
    """Runs every call on its own pool thread and returns the results in order; `together`
    holds them at a barrier so that they start at once (one thread per call then)."""
    if together:
        threads = len(calls)
        barrier = threading.Barrier(len(calls))

        def start(call: Callable[[], T]) -> T:
            barrier.wait(timeout=CALL_TIMEOUT)
            return call()

    else:

        def start(call: Callable[[], T]) -> T:
            return call()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(start, calls))


Outcome = tuple[str, str, dict[str, str]]  # ("OK", order id, {}) or (code, reason, metadata)


def place(customer: Customer, request: pb.PlaceOrderRequest) -> Outcome:
    """Places the order and returns the outcome instead of raising."""
    try:
        order = customer.client.checkout.PlaceOrder(request, timeout=CALL_TIMEOUT).order
    except grpc.RpcError as err:
        reason, metadata = error_info(err)
        return err.code().name, reason, metadata
    assert order.state == OrderState.ORDER_STATE_PAID
    return "OK", order.id, {}


def order_request(**fields: object) -> pb.PlaceOrderRequest:
    values: dict[str, object] = {
        "request_id": str(uuid.uuid4()),
        "shipping_address": BERLIN,
        "currency_code": "EUR",
        "payment_method_token": "tok_visa",
    }
    values.update(fields)
    return pb.PlaceOrderRequest(**values)  # type: ignore[arg-type]


def fill_cart(customer: Customer, product_id: str, quantity: int) -> None:
    """Replaces whatever the customer's cart holds with `quantity` units of the product."""
    customer.client.cart.EmptyCart(cart_pb.EmptyCartRequest())
    customer.client.cart.AddCartItem(
        cart_pb.AddCartItemRequest(product_id=product_id, quantity=quantity)
    )


def cart_size(customer: Customer) -> int:
    """How many lines the customer's cart has."""
    return len(customer.client.cart.GetCart(cart_pb.GetCartRequest()).cart.lines)


def stock(staff: StorefrontClient, product_id: str) -> tuple[int, int, int]:
    """(on_hand, reserved, available) as staff see them."""
    level = staff.inventory.GetStockLevel(
        inventory_pb.GetStockLevelRequest(product_id=product_id)
    ).stock_level
    return level.on_hand, level.reserved, level.available


def movements(staff: StorefrontClient, product_id: str) -> list[inventory_pb.StockMovement]:
    """Every ledger entry of the product, all pages."""
    found: list[inventory_pb.StockMovement] = []
    token = ""
    while True:
        page = staff.inventory.ListStockMovements(
            inventory_pb.ListStockMovementsRequest(
                product_id=product_id, page_size=100, page_token=token
            )
        )
        found.extend(page.movements)
        token = page.next_page_token
        if not token:
            return found


class StockWatcher:
    """Polls a product's stock level on a thread until stopped, keeping what it saw."""

    def __init__(self, staff: StorefrontClient, product_id: str) -> None:
        self.seen: list[tuple[int, int, int]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(staff, product_id))

    def _run(self, staff: StorefrontClient, product_id: str) -> None:
        try:
            while True:
                stopping = self._stop.is_set()
                self.seen.append(stock(staff, product_id))
                if stopping:
                    return
        except BaseException as exc:  # reported by the test, which runs on another thread
            self.errors.append(exc)

    def __enter__(self) -> StockWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT)


# --- no oversell ----------------------------------------------------------------------------------


@pytest.mark.parametrize("repeat", range(3))
def test_concurrent_checkouts_never_sell_more_than_the_stock(crowd: Crowd, repeat: int) -> None:
    product_id = crowd.product(on_hand=STOCK)
    in_parallel(
        [partial(fill_cart, customer, product_id, 1) for customer in crowd.customers],
        threads=16,
        together=False,
    )
    charges_before = len(crowd.charges())

    with StockWatcher(crowd.staff, product_id) as watcher:
        outcomes = in_parallel(
            [partial(place, customer, order_request()) for customer in crowd.customers],
            threads=CUSTOMERS,
        )

    placed = [order_id for code, order_id, _ in outcomes if code == "OK"]
    refused = [(code, reason, meta) for code, reason, meta in outcomes if code != "OK"]
    assert len(placed) == STOCK and len(set(placed)) == STOCK
    assert Counter((code, reason) for code, reason, _ in refused) == {
        ("FAILED_PRECONDITION", "OUT_OF_STOCK"): CUSTOMERS - STOCK
    }
    assert all(meta["product_ids"] == product_id for _, _, meta in refused)

    assert watcher.errors == []
    assert watcher.seen, "the watcher saw the stock at least once"
    for on_hand, reserved, available in watcher.seen:
        assert available >= 0 and 0 <= reserved <= on_hand <= STOCK
        assert available == on_hand - reserved
    assert stock(crowd.staff, product_id) == (0, 0, 0)

    new_charges = crowd.charges()[charges_before:]
    assert sorted(charge.idempotency_key for charge in new_charges) == sorted(
        f"order:{order_id}" for order_id in placed
    )
    ledger = movements(crowd.staff, product_id)
    assert Counter(m.kind for m in ledger) == {
        MovementKind.STOCK_MOVEMENT_KIND_RESERVATION: STOCK,
        MovementKind.STOCK_MOVEMENT_KIND_SALE: STOCK,
    }
    assert sum(m.on_hand_delta for m in ledger) == -STOCK
    assert sum(m.reserved_delta for m in ledger) == 0
    assert all(0 <= m.reserved_after <= m.on_hand_after for m in ledger)

    # The buyers' carts are empty; everyone else's still holds the unit they could not buy.
    buyers = {
        customer.id
        for customer, (code, _, _) in zip(crowd.customers, outcomes, strict=True)
        if code == "OK"
    }
    assert len(buyers) == STOCK
    carts = in_parallel(
        [partial(cart_size, customer) for customer in crowd.customers], threads=16, together=False
    )
    for customer, lines in zip(crowd.customers, carts, strict=True):
        assert lines == (0 if customer.id in buyers else 1)


# --- one order per request_id ---------------------------------------------------------------------


def test_concurrent_duplicates_of_one_request_make_one_order(crowd: Crowd) -> None:
    first, second = crowd.sign_in(), crowd.sign_in()
    product_id = crowd.product(on_hand=10)
    fill_cart(first, product_id, 2)
    request = order_request()
    charges_before = len(crowd.charges())

    outcomes = in_parallel(
        [lambda: place(first, request) for _ in range(DUPLICATES)], threads=DUPLICATES
    )

    [order] = first.client.orders.ListOrders(order_pb.ListOrdersRequest()).orders
    assert order.state == OrderState.ORDER_STATE_PAID
    answers = Counter((code, reason) for code, reason, _ in outcomes)
    assert set(answers) <= {("OK", order.id), ("ABORTED", "REQUEST_IN_FLIGHT")}
    assert answers[("OK", order.id)] >= 1
    assert [charge.idempotency_key for charge in crowd.charges()[charges_before:]] == [
        f"order:{order.id}"
    ]
    assert stock(crowd.staff, product_id) == (8, 0, 8)

    # A retry after they finished returns the same order; nothing more is charged.
    assert place(first, request) == ("OK", order.id, {})
    assert len(crowd.charges()) == charges_before + 1

    # The same request_id with another cart, address, currency or token is another request.
    other_product = crowd.product(on_hand=10)
    first.client.cart.AddCartItem(cart_pb.AddCartItemRequest(product_id=other_product, quantity=1))
    assert place(first, request) == ("FAILED_PRECONDITION", "IDEMPOTENCY_KEY_REUSED", {})
    first.client.cart.EmptyCart(cart_pb.EmptyCartRequest())
    elsewhere = order_pb2.Address()
    elsewhere.CopyFrom(BERLIN)
    elsewhere.city = "Hamburg"
    for changed in (
        {"shipping_address": elsewhere},
        {"currency_code": "USD"},
        {"payment_method_token": "tok_mastercard"},
    ):
        err = rpc_error(
            lambda changed=changed: first.client.checkout.PlaceOrder(
                order_request(request_id=request.request_id, **changed)
            )
        )
        assert (err.code(), error_info(err)[0]) == (
            StatusCode.FAILED_PRECONDITION,
            "IDEMPOTENCY_KEY_REUSED",
        )
    assert len(first.client.orders.ListOrders(order_pb.ListOrdersRequest()).orders) == 1

    # Another customer's request with the same request_id, while the first customer retries
    # theirs: each gets their own order, never the other's.
    second_product = crowd.product(on_hand=10)
    fill_cart(second, second_product, 3)
    mixed = in_parallel(
        [lambda: place(first, request) for _ in range(DUPLICATES // 2)]
        + [lambda: place(second, request) for _ in range(DUPLICATES // 2)],
        threads=DUPLICATES,
    )
    firsts, seconds = mixed[: DUPLICATES // 2], mixed[DUPLICATES // 2 :]
    assert firsts == [("OK", order.id, {})] * (DUPLICATES // 2)
    [second_order] = second.client.orders.ListOrders(order_pb.ListOrdersRequest()).orders
    assert second_order.id != order.id
    assert second_order.customer_id == second.id
    assert [(line.product_id, line.quantity) for line in second_order.lines] == [
        (second_product, 3)
    ]
    assert {(code, reason) for code, reason, _ in seconds} <= {
        ("OK", second_order.id),
        ("ABORTED", "REQUEST_IN_FLIGHT"),
    }
    assert ("OK", second_order.id, {}) in seconds
    err = rpc_error(
        lambda: second.client.orders.GetOrder(order_pb.GetOrderRequest(order_id=order.id))
    )
    assert err.code() == StatusCode.NOT_FOUND
    assert stock(crowd.staff, second_product) == (7, 0, 7)
    assert stock(crowd.staff, product_id) == (8, 0, 8)
    assert len(crowd.charges()) == charges_before + 2


def test_a_code_with_ten_uses_raced_by_a_hundred_customers_discounts_exactly_ten_orders(
    crowd: Crowd,
) -> None:
    product_id = crowd.product(on_hand=1000)
    code = f"RACE-{uuid.uuid4().hex[:8].upper()}"
    promotion = crowd.staff.promotions.CreatePromotion(
        promotion_pb.CreatePromotionRequest(
            promotion=promotion_pb.Promotion(code=code, percent_basis_points=2000, max_uses=10)
        )
    ).promotion
    racers = crowd.customers[:100]
    for customer in racers:
        fill_cart(customer, product_id, 1)

    outcomes = in_parallel(
        [partial(place, customer, order_request(discount_code=code)) for customer in racers],
        threads=len(racers),
    )

    won = [order_id for status, order_id, _ in outcomes if status == "OK"]
    refused = Counter((status, reason) for status, reason, _ in outcomes if status != "OK")
    assert len(won) == 10
    assert refused == {("FAILED_PRECONDITION", "PROMOTION_EXHAUSTED"): 90}
    discounted = [
        crowd.staff.orders.GetOrder(order_pb.GetOrderRequest(order_id=order_id)).order
        for order_id in won
    ]
    assert all(
        order.discount_code == code and order.discount.amount_minor == 200 for order in discounted
    )
    used = crowd.staff.promotions.GetPromotion(
        promotion_pb.GetPromotionRequest(promotion_id=promotion.id)
    ).promotion.use_count
    assert used == 10
    # Only the winners were charged, each the discounted total.
    charged = {c.idempotency_key: c.amount_minor for c in crowd.charges()}
    assert [charged[f"order:{order.id}"] for order in discounted] == [
        order.total.amount_minor for order in discounted
    ]
    assert sum(1 for key in charged if key in {f"order:{o}" for o in won}) == 10
