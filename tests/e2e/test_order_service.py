"""OrderService through the client SDK: the state machine, reads, refunds, idempotency, ownership.

Orders are placed through the real flow (cart, then CheckoutService.PlaceOrder with a sandbox
test token) and moved on by staff, so every state is reached the way production reaches it.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from storefront.v1 import (
    cart_service_pb2,
    catalog_service_pb2,
    checkout_service_pb2,
    common_pb2,
    inventory_service_pb2,
    order_pb2,
    product_pb2,
)
from storefront.v1 import order_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from server.payments.sandbox import SandboxGateway
from tests.conftest import insert_product
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields, visible_failure
from tests.e2e.test_stored_request_keys import store_as_before

StatusCode = grpc.StatusCode
Order = order_pb2.Order
OrderState: TypeAlias = order_pb2.OrderState.ValueType

PENDING_PAYMENT = order_pb2.ORDER_STATE_PENDING_PAYMENT
PAID = order_pb2.ORDER_STATE_PAID
SHIPPED = order_pb2.ORDER_STATE_SHIPPED
DELIVERED = order_pb2.ORDER_STATE_DELIVERED
CANCELLED = order_pb2.ORDER_STATE_CANCELLED
REFUNDED = order_pb2.ORDER_STATE_REFUNDED
PARTIALLY_REFUNDED = order_pb2.ORDER_STATE_PARTIALLY_REFUNDED
PAYMENT_FAILED = order_pb2.ORDER_STATE_PAYMENT_FAILED
SUCCEEDED = order_pb2.REFUND_STATUS_SUCCEEDED

ADDRESS = order_pb2.Address(
    recipient_name="Ada Lovelace",
    line1="Hauptstrasse 1",
    city="Berlin",
    postal_code="10115",
    country_code="DE",
)
CURRENCY = "EUR"
# What a partial refund in the state machine table refunds, in EUR minor units.
PARTIAL_MINOR = 100


def new_id() -> str:
    return str(uuid.uuid4())


def eur(amount_minor: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code=CURRENCY, amount_minor=amount_minor)


def state_name(state: OrderState) -> str:
    return order_pb2.OrderState.Name(state).removeprefix("ORDER_STATE_")


def reason_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return err.code(), error_info(err)[0]


@dataclass(frozen=True)
class Snapshot:
    """Everything an order action may change: the order, its history, the stock, the provider."""

    order: Order
    event_count: int
    stock: inventory_service_pb2.StockLevel
    movement_count: int
    refunded_at_provider: int


@dataclass
class Shop:
    """A server with one product in stock, a customer and a staff member signed in."""

    running: Running
    customer: StorefrontClient
    staff: StorefrontClient
    staff_id: str
    product_id: str

    @property
    def sandbox(self) -> SandboxGateway:
        gateway = self.running.app.payment_gateway
        assert isinstance(gateway, SandboxGateway)
        return gateway

    def login(self, role: Role = Role.CUSTOMER) -> tuple[StorefrontClient, str]:
        """Returns a client signed in as a new user with `role`, and the user's id."""
        client = self.running.client()
        user = client.login(self.running.create_user(role), PASSWORD)
        return client, user.id

    def new_product(self, on_hand: int) -> str:
        with self.running.db.connection_context():
            return insert_product(on_hand=on_hand)

    # --- placing orders ---------------------------------------------------------------------

    def place(
        self,
        payment_method: str = "tok_visa",
        *,
        quantity: int = 1,
        customer: StorefrontClient | None = None,
        product_id: str | None = None,
    ) -> Order:
        """Places an order for `quantity` units through cart and checkout; returns it as placed:
        PAID, PENDING_PAYMENT (tok_timeout) or PAYMENT_FAILED (tok_declined)."""
        buyer = customer or self.customer
        if product_id is None and payment_method == "tok_timeout":
            # A cart whose order awaits its payment cannot be checked out again
            # (CHECKOUT_PENDING): each pending order gets a product of its own.
            product_id = self.new_product(on_hand=1000)
        # A declined or pending checkout leaves the cart as it was: start from an empty one.
        buyer.cart.EmptyCart(cart_service_pb2.EmptyCartRequest())
        buyer.cart.AddCartItem(
            cart_service_pb2.AddCartItemRequest(
                product_id=product_id or self.product_id, quantity=quantity
            )
        )
        request = checkout_service_pb2.PlaceOrderRequest(
            request_id=new_id(),
            shipping_address=ADDRESS,
            currency_code=CURRENCY,
            payment_method_token=payment_method,
        )
        try:
            order = buyer.checkout.PlaceOrder(request).order
        except grpc.RpcError as err:
            reason, metadata = error_info(err)
            if reason != "PAYMENT_DECLINED":
                raise
            order = self.get(metadata["order_id"], buyer)
        return order

    def order_in(self, state: OrderState) -> Order:
        """Returns a new order brought to `state` through the real flow."""
        if state == PENDING_PAYMENT:
            order = self.place("tok_timeout")
        elif state == PAYMENT_FAILED:
            order = self.place("tok_declined")
        else:
            order = self.place("tok_visa")
            if state == CANCELLED:
                order = self.cancel(order.id)
            elif state != PAID:
                order = self.ship(order.id)
                if state == REFUNDED:
                    order = self.refund(order.id)
                elif state == PARTIALLY_REFUNDED:
                    order = self.refund(order.id, PARTIAL_MINOR)
                elif state == DELIVERED:
                    order = self.deliver(order.id)
        assert order.state == state, f"wanted {state_name(state)}, got {state_name(order.state)}"
        return order

    # --- actions, as staff unless told otherwise ----------------------------------------------

    def get(self, order_id: str, client: StorefrontClient | None = None) -> Order:
        caller = client or self.staff
        return caller.orders.GetOrder(pb.GetOrderRequest(order_id=order_id)).order

    def cancel(
        self,
        order_id: str,
        client: StorefrontClient | None = None,
        *,
        request_id: str | None = None,
        reason: str = "",
    ) -> Order:
        caller = client or self.staff
        request = pb.CancelOrderRequest(
            order_id=order_id, request_id=request_id or new_id(), reason=reason
        )
        return caller.orders.CancelOrder(request).order

    def ship(
        self,
        order_id: str,
        *,
        request_id: str | None = None,
        carrier: str = "DHL",
        tracking_number: str = "JJD0001",
    ) -> Order:
        request = pb.ShipOrderRequest(
            order_id=order_id,
            request_id=request_id or new_id(),
            carrier=carrier,
            tracking_number=tracking_number,
        )
        return self.staff.orders.ShipOrder(request).order

    def deliver(self, order_id: str, *, request_id: str | None = None) -> Order:
        request = pb.MarkOrderDeliveredRequest(order_id=order_id, request_id=request_id or new_id())
        return self.staff.orders.MarkOrderDelivered(request).order

    def refund_response(
        self,
        order_id: str,
        amount_minor: int | None = None,
        *,
        request_id: str | None = None,
        reason: str = "",
    ) -> pb.RefundOrderResponse:
        request = pb.RefundOrderRequest(
            order_id=order_id, request_id=request_id or new_id(), reason=reason
        )
        if amount_minor is not None:
            request.amount.CopyFrom(eur(amount_minor))
        return self.staff.orders.RefundOrder(request)

    def refund(
        self,
        order_id: str,
        amount_minor: int | None = None,
        *,
        request_id: str | None = None,
        reason: str = "",
    ) -> Order:
        return self.refund_response(
            order_id, amount_minor, request_id=request_id, reason=reason
        ).order

    # --- observing ----------------------------------------------------------------------------

    def events(
        self, order_id: str, client: StorefrontClient | None = None
    ) -> list[order_pb2.OrderEvent]:
        caller = client or self.staff
        response = caller.orders.ListOrderEvents(
            pb.ListOrderEventsRequest(order_id=order_id, page_size=100)
        )
        assert response.next_page_token == ""
        return list(response.events)

    def stock(self, product_id: str | None = None) -> inventory_service_pb2.StockLevel:
        request = inventory_service_pb2.GetStockLevelRequest(
            product_id=product_id or self.product_id
        )
        return self.staff.inventory.GetStockLevel(request).stock_level

    def movements(self, product_id: str | None = None) -> list[inventory_service_pb2.StockMovement]:
        """The product's ledger, newest first (one page is enough for these tests)."""
        request = inventory_service_pb2.ListStockMovementsRequest(
            product_id=product_id or self.product_id, page_size=100
        )
        response = self.staff.inventory.ListStockMovements(request)
        assert response.next_page_token == ""
        return list(response.movements)

    def refunded_at_provider(self, order_id: str) -> int:
        charge = self.sandbox.find_charge(idempotency_key=f"order:{order_id}")
        return 0 if charge is None else self.sandbox.refunded_minor(charge.id)

    def snapshot(self, order_id: str) -> Snapshot:
        order = self.get(order_id)
        product_id = order.lines[0].product_id
        return Snapshot(
            order=order,
            event_count=len(self.events(order_id)),
            stock=self.stock(product_id),
            movement_count=len(self.movements(product_id)),
            refunded_at_provider=self.refunded_at_provider(order_id),
        )


@pytest.fixture
def running(server_factory: Callable[..., Running]) -> Running:
    """A server whose background reconciler is off, so PENDING_PAYMENT orders stay pending."""
    return server_factory(reconcile_interval_seconds=0)


def open_shop(running: Running) -> Shop:
    """Signs in a customer and a staff member and stocks a product priced 1000 EUR minor."""
    customer = running.login(Role.CUSTOMER)
    staff = running.client()
    staff_user = staff.login(running.create_user(Role.STAFF), PASSWORD)
    with running.db.connection_context():
        product_id = insert_product(on_hand=1000)
    return Shop(running, customer, staff, staff_user.id, product_id)


@pytest.fixture
def shop(running: Running) -> Shop:
    return open_shop(running)


# --- the state machine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One thing a caller can ask of an order, made by staff."""

    name: str
    call: Callable[[Shop, str], Order]


ACTIONS = (
    Action("CancelOrder", lambda shop, order_id: shop.cancel(order_id)),
    Action("ShipOrder", lambda shop, order_id: shop.ship(order_id)),
    Action("MarkOrderDelivered", lambda shop, order_id: shop.deliver(order_id)),
    Action("RefundOrder(all)", lambda shop, order_id: shop.refund(order_id)),
    Action("RefundOrder(part)", lambda shop, order_id: shop.refund(order_id, PARTIAL_MINOR)),
)
ILLEGAL = None
# Refunding all of an unshipped order is cancelling it: refused with this reason instead.
CANCEL_INSTEAD = "REFUND_ALL_UNSHIPPED"
# Where each action leads from each state, as order_service.proto documents it; ILLEGAL is
# FAILED_PRECONDITION (ILLEGAL_TRANSITION) with nothing changed, a reason is FAILED_PRECONDITION
# with that reason and nothing changed. Refund: RefundOrder without an amount (all that is left);
# Refund(part): RefundOrder of PARTIAL_MINOR.
# fmt: off
EXPECTED_TRANSITIONS: dict[OrderState, tuple[OrderState | str | None, ...]] = {
    #                    Cancel     Ship      Deliver    Refund          Refund(part)
    PENDING_PAYMENT:    (ILLEGAL,   ILLEGAL,  ILLEGAL,   ILLEGAL,        ILLEGAL),
    PAID:               (CANCELLED, SHIPPED,  ILLEGAL,   CANCEL_INSTEAD, PAID),
    SHIPPED:            (ILLEGAL,   ILLEGAL,  DELIVERED, REFUNDED, PARTIALLY_REFUNDED),
    DELIVERED:          (ILLEGAL,   ILLEGAL,  ILLEGAL,   REFUNDED, PARTIALLY_REFUNDED),
    CANCELLED:          (ILLEGAL,   ILLEGAL,  ILLEGAL,   ILLEGAL,  ILLEGAL),
    REFUNDED:           (ILLEGAL,   ILLEGAL,  ILLEGAL,   ILLEGAL,  ILLEGAL),
    PARTIALLY_REFUNDED: (ILLEGAL,   ILLEGAL,  ILLEGAL,   REFUNDED, PARTIALLY_REFUNDED),
    PAYMENT_FAILED:     (ILLEGAL,   ILLEGAL,  ILLEGAL,   ILLEGAL,  ILLEGAL),
}
# fmt: on


def test_the_table_names_every_state() -> None:
    assert set(EXPECTED_TRANSITIONS) == set(order_pb2.OrderState.values()) - {
        order_pb2.ORDER_STATE_UNSPECIFIED
    }


def test_every_state_and_action_pair(shop: Shop, subtests: pytest.Subtests) -> None:
    for state, outcomes in EXPECTED_TRANSITIONS.items():
        for action, expected in zip(ACTIONS, outcomes, strict=True):
            with subtests.test(state=state_name(state), action=action.name):
                order = shop.order_in(state)
                before = shop.snapshot(order.id)
                act = functools.partial(action.call, shop, order.id)
                if expected is ILLEGAL or isinstance(expected, str):
                    err = rpc_error(act)
                    reason = expected or "ILLEGAL_TRANSITION"
                    assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, reason)
                    assert shop.snapshot(order.id) == before
                else:
                    after = act()
                    assert state_name(after.state) == state_name(expected)
                    assert shop.get(order.id) == after
                    assert len(shop.events(order.id)) > before.event_count


# --- GetOrder and ListOrders ----------------------------------------------------------------------


def listed(
    client: StorefrontClient, *, filter: str = "", order_by: str = "", page_size: int = 100
) -> list[Order]:
    """Every order the list returns, page after page."""
    found: list[Order] = []
    token = ""
    while True:
        response = client.orders.ListOrders(
            pb.ListOrdersRequest(
                filter=filter, order_by=order_by, page_size=page_size, page_token=token
            )
        )
        assert len(response.orders) <= page_size
        found.extend(response.orders)
        token = response.next_page_token
        if not token:
            return found


def ids(orders: list[Order]) -> list[str]:
    return [order.id for order in orders]


def rfc3339(stamp: Timestamp) -> str:
    return stamp.ToJsonString()


def test_owners_see_their_own_orders_and_staff_and_admins_see_all(shop: Shop) -> None:
    other, _ = shop.login(Role.CUSTOMER)
    admin, _ = shop.login(Role.ADMIN)
    mine = [shop.place(), shop.place("tok_declined"), shop.place("tok_timeout")]
    theirs = [shop.place(customer=other), shop.place(customer=other)]

    newest_first = ids(mine + theirs)[::-1]
    assert ids(listed(shop.staff)) == newest_first
    assert ids(listed(admin)) == newest_first
    assert ids(listed(shop.customer)) == ids(mine)[::-1]
    assert ids(listed(other)) == ids(theirs)[::-1]
    for order in mine:
        assert shop.get(order.id, shop.customer) == order
        assert shop.get(order.id, shop.staff) == order
        assert shop.get(order.id, admin) == order
    assert listed(shop.customer) == mine[::-1]  # the listed message is the whole order


def test_an_order_shows_what_was_placed(shop: Shop) -> None:
    order = shop.place(quantity=3)
    assert state_name(order.state) == "PAID"
    [line] = order.lines
    assert (line.product_id, line.quantity, line.sku) == (
        shop.product_id,
        3,
        f"SKU-{shop.product_id[:8]}",
    )
    assert line.line_total.amount_minor == 3 * line.unit_price.amount_minor
    assert order.subtotal.amount_minor == line.line_total.amount_minor
    assert order.total.amount_minor == (
        order.subtotal.amount_minor + order.shipping.amount_minor + order.tax.amount_minor
    )
    assert order.captured == order.total and order.refunded == eur(0)
    assert order.shipping_address == ADDRESS and order.tax_rate == "0.19"
    assert order.HasField("paid_time") and not order.HasField("ship_time")
    assert shop.get(order.id, shop.customer) == order


def test_list_filters(shop: Shop) -> None:
    other, other_id = shop.login(Role.CUSTOMER)
    paid = shop.place()
    failed = shop.place("tok_declined")
    pending = shop.place("tok_timeout")
    theirs = shop.place(customer=other)
    later_paid = shop.place()
    everything = [paid, failed, pending, theirs, later_paid]
    mine = [paid, failed, pending, later_paid]

    def staff_sees(filter: str) -> list[str]:
        return sorted(ids(listed(shop.staff, filter=filter)))

    assert staff_sees("state = ORDER_STATE_PAID") == sorted(ids([paid, theirs, later_paid]))
    assert staff_sees("state != ORDER_STATE_PAID") == sorted(ids([failed, pending]))
    assert staff_sees("state = ORDER_STATE_PAYMENT_FAILED") == [failed.id]
    assert staff_sees(f'create_time >= "{rfc3339(pending.create_time)}"') == sorted(
        ids([pending, theirs, later_paid])
    )
    assert staff_sees(f'create_time > "{rfc3339(pending.create_time)}"') == sorted(
        ids([theirs, later_paid])
    )
    assert staff_sees(f'create_time = "{rfc3339(theirs.create_time)}"') == [theirs.id]
    assert staff_sees(f'customer_id = "{other_id}"') == [theirs.id]
    assert staff_sees(f'customer_id != "{other_id}"') == sorted(ids(mine))
    assert staff_sees(f'customer_id = "{paid.customer_id}" AND state = ORDER_STATE_PAID') == sorted(
        ids([paid, later_paid])
    )
    assert staff_sees('create_time < "2000-01-01T00:00:00Z"') == []
    assert staff_sees("") == sorted(ids(everything))

    # A customer filters within their own orders, never on customer_id.
    assert ids(listed(shop.customer, filter="state = ORDER_STATE_PAID")) == ids([later_paid, paid])
    assert listed(other, filter="state != ORDER_STATE_PAID") == []
    for filter in (f'customer_id = "{paid.customer_id}"', f'customer_id != "{other_id}"'):
        err = rpc_error(lambda f=filter: listed(shop.customer, filter=f))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"filter"}


def test_list_order_by(shop: Shop) -> None:
    placed = [shop.place(quantity=q) for q in (2, 5, 1, 3)]
    by_total = sorted(placed, key=lambda order: order.total.amount_minor)
    assert len({order.total.amount_minor for order in placed}) == 4

    assert ids(listed(shop.staff)) == ids(placed)[::-1]
    assert ids(listed(shop.staff, order_by="create_time desc")) == ids(placed)[::-1]
    assert ids(listed(shop.staff, order_by="create_time")) == ids(placed)
    assert ids(listed(shop.staff, order_by="create_time asc")) == ids(placed)
    assert ids(listed(shop.staff, order_by="total_minor")) == ids(by_total)
    assert ids(listed(shop.staff, order_by="total_minor desc")) == ids(by_total)[::-1]
    assert ids(listed(shop.customer, order_by="total_minor desc")) == ids(by_total)[::-1]


def sort_key(order_by: str) -> Callable[[Order], int]:
    """What an order_by sorts on, as a number."""
    if order_by.startswith("total_minor"):
        return lambda order: order.total.amount_minor
    return lambda order: order.create_time.ToNanoseconds()


def test_pagination_walks_every_order_exactly_once(shop: Shop, subtests: pytest.Subtests) -> None:
    other, _ = shop.login(Role.CUSTOMER)
    # Equal totals (same quantity) put page boundaries between ties.
    placed = [shop.place(quantity=q) for q in (1, 2, 1, 1, 2, 1, 3)]
    placed.append(shop.place(quantity=1, customer=other))

    for order_by in ("", "create_time", "create_time desc", "total_minor", "total_minor desc"):
        for client, expected in ((shop.staff, placed), (shop.customer, placed[:-1])):
            with subtests.test(order_by=order_by, staff=client is shop.staff):
                whole = listed(client, order_by=order_by)
                assert sorted(ids(whole)) == sorted(ids(expected))
                keys = [sort_key(order_by)(order) for order in whole]
                descending = order_by in ("", "create_time desc", "total_minor desc")
                assert keys == sorted(keys, reverse=descending)
                for page_size in (1, 2, 3):
                    walked = listed(client, order_by=order_by, page_size=page_size)
                    assert ids(walked) == ids(whole)  # the same order, each exactly once


def first_page_token(client: StorefrontClient, **request: object) -> str:
    response = client.orders.ListOrders(pb.ListOrdersRequest(page_size=1, **request))  # type: ignore[arg-type]
    assert response.next_page_token
    return response.next_page_token


def test_page_tokens_are_bound_to_their_query_and_caller(shop: Shop) -> None:
    other, _ = shop.login(Role.CUSTOMER)
    other_staff, _ = shop.login(Role.STAFF)
    for customer in (shop.customer, shop.customer, other, other):
        shop.place(customer=customer)
    mine = first_page_token(shop.customer)
    staffs = first_page_token(shop.staff)

    def refused(client: StorefrontClient, token: str, **request: object) -> None:
        err = rpc_error(
            lambda: client.orders.ListOrders(
                pb.ListOrdersRequest(page_size=1, page_token=token, **request)  # type: ignore[arg-type]
            )
        )
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"page_token"}

    tampered = mine[:-3] + ("A" if mine[-3] != "A" else "B") + mine[-2:]
    refused(shop.customer, tampered)
    refused(shop.customer, "not a token")
    refused(shop.customer, mine + "A")
    refused(other, mine)  # another customer
    refused(shop.staff, mine)
    refused(shop.customer, staffs)
    refused(other_staff, staffs)  # the contract binds a token to its caller, staff included
    refused(shop.customer, mine, filter="state = ORDER_STATE_PAID")
    refused(shop.customer, mine, order_by="total_minor")
    refused(shop.staff, staffs, order_by="create_time")  # asc instead of the default desc
    # The token still works for its own caller and query.
    shop.customer.orders.ListOrders(pb.ListOrdersRequest(page_size=1, page_token=mine))
    shop.staff.orders.ListOrders(pb.ListOrdersRequest(page_size=1, page_token=staffs))


BAD_LIST_REQUESTS: list[tuple[dict[str, object], str]] = [
    ({"filter": "state = PAID"}, "filter"),
    ({"filter": "state > ORDER_STATE_PAID"}, "filter"),
    ({"filter": "state = ORDER_STATE_PAID OR state = ORDER_STATE_SHIPPED"}, "filter"),
    ({"filter": "(state = ORDER_STATE_PAID)"}, "filter"),
    ({"filter": "total_minor > 5"}, "filter"),
    ({"filter": 'create_time >= "yesterday"'}, "filter"),
    ({"filter": "create_time >= 2026-01-01T00:00:00Z"}, "filter"),
    ({"filter": 'customer_id > "x"'}, "filter"),
    ({"filter": "customer_id = 42"}, "filter"),
    ({"filter": "state ="}, "filter"),
    ({"order_by": "update_time"}, "order_by"),
    ({"order_by": "total_minor sideways"}, "order_by"),
    ({"page_size": -1}, "page_size"),
]


def test_bad_list_requests_are_invalid_argument(shop: Shop, subtests: pytest.Subtests) -> None:
    for fields, field in BAD_LIST_REQUESTS:
        with subtests.test(request=str(fields)):
            request = pb.ListOrdersRequest(**fields)  # type: ignore[arg-type]
            err = rpc_error(functools.partial(shop.staff.orders.ListOrders, request))
            assert err.code() == StatusCode.INVALID_ARGUMENT
            assert violated_fields(err) == {field}


def test_page_size_zero_is_fifty_and_large_is_capped(shop: Shop) -> None:
    shop.place()
    for page_size in (0, 101, 2**31 - 1):
        response = shop.staff.orders.ListOrders(pb.ListOrdersRequest(page_size=page_size))
        assert (len(response.orders), response.next_page_token) == (1, "")


# --- CancelOrder ----------------------------------------------------------------------------------


def test_a_customer_cancels_their_paid_order(shop: Shop) -> None:
    product_id = shop.new_product(on_hand=5)
    placed = shop.place(quantity=2, product_id=product_id)
    stock = shop.stock(product_id)
    assert (stock.on_hand, stock.reserved) == (3, 0)

    cancelled = shop.cancel(placed.id, shop.customer, reason="changed my mind")

    assert state_name(cancelled.state) == "CANCELLED"
    assert cancelled.HasField("cancel_time")
    captured = placed.captured.amount_minor
    assert captured == placed.total.amount_minor > 0
    assert cancelled.captured == placed.captured
    assert cancelled.refunded == eur(captured)
    [refund] = cancelled.refunds
    assert (refund.amount, refund.status, refund.reason) == (
        eur(captured),
        SUCCEEDED,
        "changed my mind",
    )
    assert shop.refunded_at_provider(placed.id) == captured
    assert shop.get(placed.id, shop.customer) == cancelled

    stock = shop.stock(product_id)
    assert (stock.on_hand, stock.reserved) == (5, 0)
    restock = shop.movements(product_id)[0]
    assert restock.kind == inventory_service_pb2.STOCK_MOVEMENT_KIND_RESTOCK
    assert (restock.on_hand_delta, restock.reserved_delta) == (2, 0)
    assert (restock.on_hand_after, restock.actor) == (5, placed.customer_id)

    customer = placed.customer_id
    history = [(e.type, e.from_state, e.to_state, e.actor) for e in shop.events(placed.id)]
    assert history == [
        ("ORDER_PLACED", PENDING_PAYMENT, PENDING_PAYMENT, customer),
        ("PAYMENT_CAPTURED", PENDING_PAYMENT, PAID, customer),
        ("ORDER_CANCELLED", PAID, CANCELLED, customer),
        ("REFUND_REQUESTED", CANCELLED, CANCELLED, customer),
        ("REFUND_SUCCEEDED", CANCELLED, CANCELLED, "system"),
    ]


def test_staff_cancel_any_paid_order(shop: Shop) -> None:
    placed = shop.place()
    cancelled = shop.cancel(placed.id)
    assert state_name(cancelled.state) == "CANCELLED"
    assert cancelled.refunds[0].status == SUCCEEDED
    assert shop.refunded_at_provider(placed.id) == placed.captured.amount_minor
    cancel_event = shop.events(placed.id)[2]
    assert (cancel_event.type, cancel_event.actor) == ("ORDER_CANCELLED", shop.staff_id)
    assert shop.get(placed.id, shop.customer) == cancelled


def test_a_customer_cannot_cancel_after_shipping(shop: Shop) -> None:
    shipped = shop.order_in(SHIPPED)
    before = shop.snapshot(shipped.id)
    err = rpc_error(lambda: shop.cancel(shipped.id, shop.customer))
    assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION")
    assert shop.snapshot(shipped.id) == before


def test_customers_may_not_ship_deliver_or_refund(shop: Shop) -> None:
    order = shop.place()
    order_id = order.id
    calls: list[Callable[[], object]] = [
        lambda: shop.customer.orders.ShipOrder(
            pb.ShipOrderRequest(
                order_id=order_id, request_id=new_id(), carrier="x", tracking_number="y"
            )
        ),
        lambda: shop.customer.orders.MarkOrderDelivered(
            pb.MarkOrderDeliveredRequest(order_id=order_id, request_id=new_id())
        ),
        lambda: shop.customer.orders.RefundOrder(
            pb.RefundOrderRequest(order_id=order_id, request_id=new_id())
        ),
    ]
    for call in calls:
        assert rpc_error(call).code() == StatusCode.PERMISSION_DENIED
    assert shop.get(order_id) == order


# --- ShipOrder and MarkOrderDelivered -------------------------------------------------------------


def test_ship_then_deliver(shop: Shop) -> None:
    placed = shop.place()
    shipped = shop.ship(placed.id, carrier="  DHL Express ", tracking_number=" JJD0002 ")
    assert state_name(shipped.state) == "SHIPPED"
    assert (shipped.carrier, shipped.tracking_number) == ("DHL Express", "JJD0002")
    assert shipped.HasField("ship_time") and not shipped.HasField("deliver_time")
    delivered = shop.deliver(placed.id)
    assert state_name(delivered.state) == "DELIVERED"
    assert delivered.HasField("deliver_time") and delivered.ship_time == shipped.ship_time
    assert (delivered.carrier, delivered.tracking_number) == ("DHL Express", "JJD0002")
    assert shop.get(placed.id, shop.customer) == delivered

    staff = shop.staff_id
    shipping, delivery = shop.events(placed.id)[2:]
    assert (shipping.type, shipping.from_state, shipping.to_state, shipping.actor) == (
        "ORDER_SHIPPED",
        PAID,
        SHIPPED,
        staff,
    )
    assert "JJD0002" in shipping.note
    assert (delivery.type, delivery.from_state, delivery.to_state, delivery.actor) == (
        "ORDER_DELIVERED",
        SHIPPED,
        DELIVERED,
        staff,
    )


def test_ship_accepts_the_longest_carrier_and_tracking_number(shop: Shop) -> None:
    placed = shop.place()
    shipped = shop.ship(placed.id, carrier="C" * 100, tracking_number="T" * 100)
    assert (shipped.carrier, shipped.tracking_number) == ("C" * 100, "T" * 100)


SHIP_VIOLATIONS = [
    ("", "JJD0001", {"carrier"}),
    ("DHL", "", {"tracking_number"}),
    ("   ", " \t ", {"carrier", "tracking_number"}),
    ("C" * 101, "JJD0001", {"carrier"}),
    ("DHL", "T" * 101, {"tracking_number"}),
    ("DHL", "JJD\n0001", {"tracking_number"}),
    ("DHL", "JJD\x000001", {"tracking_number"}),
    ("DH\x1bL", "JJD0001", {"carrier"}),
    ("DHL\x7f", "JJD\u20280001", {"carrier", "tracking_number"}),
]


def test_ship_invalid_argument(shop: Shop, subtests: pytest.Subtests) -> None:
    placed = shop.place()
    before = shop.snapshot(placed.id)
    for carrier, tracking_number, fields in SHIP_VIOLATIONS:
        with subtests.test(carrier=carrier, tracking_number=tracking_number):
            err = rpc_error(
                lambda c=carrier, t=tracking_number: shop.ship(
                    placed.id, carrier=c, tracking_number=t
                )
            )
            assert err.code() == StatusCode.INVALID_ARGUMENT
            assert violated_fields(err) == fields
    assert shop.snapshot(placed.id) == before


# --- RefundOrder ----------------------------------------------------------------------------------


def test_a_partial_refund_then_the_rest(shop: Shop) -> None:
    shipped = shop.order_in(SHIPPED)
    captured = shipped.captured.amount_minor
    stock = shop.stock()

    first = shop.refund_response(shipped.id, 300, reason="dented box")
    partly = first.order
    assert state_name(partly.state) == "PARTIALLY_REFUNDED"
    assert (partly.refunded, partly.captured) == (eur(300), eur(captured))
    [refund] = partly.refunds
    assert (refund.id, refund.amount, refund.status, refund.reason) == (
        first.refund_id,
        eur(300),
        SUCCEEDED,
        "dented box",
    )
    assert shop.refunded_at_provider(shipped.id) == 300

    rest = shop.refund_response(shipped.id)
    refunded = rest.order
    assert state_name(refunded.state) == "REFUNDED"
    assert refunded.refunded == eur(captured)
    assert [(r.id, r.amount.amount_minor, r.status) for r in refunded.refunds] == [
        (first.refund_id, 300, SUCCEEDED),
        (rest.refund_id, captured - 300, SUCCEEDED),
    ]
    assert shop.refunded_at_provider(shipped.id) == captured
    assert shop.stock() == stock  # returned goods come back through AdjustStock, not refunds
    staff = shop.staff_id
    history = [(e.type, e.from_state, e.to_state, e.actor) for e in shop.events(shipped.id)[3:]]
    assert history == [
        ("REFUND_REQUESTED", SHIPPED, PARTIALLY_REFUNDED, staff),
        ("REFUND_SUCCEEDED", PARTIALLY_REFUNDED, PARTIALLY_REFUNDED, "system"),
        ("REFUND_REQUESTED", PARTIALLY_REFUNDED, REFUNDED, staff),
        ("REFUND_SUCCEEDED", REFUNDED, REFUNDED, "system"),
    ]


def test_a_refund_of_more_than_is_left_changes_nothing(shop: Shop) -> None:
    delivered = shop.order_in(DELIVERED)
    left = delivered.captured.amount_minor - 300
    shop.refund(delivered.id, 300)
    before = shop.snapshot(delivered.id)
    err = rpc_error(lambda: shop.refund(delivered.id, left + 1))
    assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED")
    assert shop.snapshot(delivered.id) == before
    # Exactly what is left is fine.
    assert shop.refund(delivered.id, left).refunded == delivered.captured


REFUND_VIOLATIONS = [
    (common_pb2.Money(currency_code="USD", amount_minor=100), {"amount.currency_code"}),
    (common_pb2.Money(currency_code="", amount_minor=100), {"amount.currency_code"}),
    (common_pb2.Money(currency_code="EUR", amount_minor=0), {"amount.amount_minor"}),
    (common_pb2.Money(currency_code="EUR", amount_minor=-100), {"amount.amount_minor"}),
    (common_pb2.Money(), {"amount.currency_code", "amount.amount_minor"}),
]


def test_refund_amount_invalid_argument(shop: Shop, subtests: pytest.Subtests) -> None:
    shipped = shop.order_in(SHIPPED)
    before = shop.snapshot(shipped.id)
    for amount, fields in REFUND_VIOLATIONS:
        with subtests.test(amount=str(amount)):
            request = pb.RefundOrderRequest(order_id=shipped.id, request_id=new_id(), amount=amount)
            err = rpc_error(lambda r=request: shop.staff.orders.RefundOrder(r))
            assert err.code() == StatusCode.INVALID_ARGUMENT
            assert violated_fields(err) == fields
    assert shop.snapshot(shipped.id) == before


def test_reasons_are_limited(shop: Shop) -> None:
    shipped, paid = shop.order_in(SHIPPED), shop.place()
    before = [shop.snapshot(shipped.id), shop.snapshot(paid.id)]
    for reason in ("R" * 501, "out of\x00stock"):
        for call in (
            functools.partial(shop.refund, shipped.id, 100, reason=reason),
            functools.partial(shop.cancel, paid.id, reason=reason),
        ):
            err = rpc_error(call)
            assert (err.code(), violated_fields(err)) == (StatusCode.INVALID_ARGUMENT, {"reason"})
    assert [shop.snapshot(shipped.id), shop.snapshot(paid.id)] == before
    longest = "R" * 500
    assert shop.refund(shipped.id, 100, reason=longest).refunds[0].reason == longest
    assert shop.cancel(paid.id, reason=longest).refunds[0].reason == longest


def test_concurrent_refunds_never_exceed_what_was_captured(shop: Shop) -> None:
    delivered = shop.order_in(DELIVERED)
    captured = delivered.captured.amount_minor
    # Twenty slices adding up to about twice the capture.
    amounts = [captured // 10 + i for i in range(20)]
    assert sum(amounts) > captured
    start = threading.Barrier(len(amounts))

    def refund(amount: int) -> tuple[int, str | tuple[grpc.StatusCode, str]]:
        start.wait()
        try:
            return amount, shop.refund_response(delivered.id, amount).refund_id
        except grpc.RpcError as err:
            return amount, reason_of(err)

    with ThreadPoolExecutor(len(amounts)) as pool:
        outcomes = list(pool.map(refund, amounts))

    succeeded = {refund_id: amount for amount, refund_id in outcomes if isinstance(refund_id, str)}
    failed = [(amount, error) for amount, error in outcomes if not isinstance(error, str)]
    order = shop.get(delivered.id)
    refunded = order.refunded.amount_minor
    assert succeeded and failed
    assert refunded == sum(succeeded.values()) <= captured
    assert {r.id: r.amount.amount_minor for r in order.refunds} == succeeded
    assert all(r.status == SUCCEEDED for r in order.refunds)
    assert shop.refunded_at_provider(delivered.id) == refunded
    assert state_name(order.state) == ("REFUNDED" if refunded == captured else "PARTIALLY_REFUNDED")
    requested = [e for e in shop.events(delivered.id) if e.type == "REFUND_REQUESTED"]
    assert len(requested) == len(succeeded)
    for amount, error in failed:
        if error == (StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION"):
            assert order.state == REFUNDED
        else:
            assert error == (StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED")
            # Refused only when it did not fit; what is left now is never more than then.
            assert amount > captured - refunded


def test_concurrent_cancels_and_shipments_let_exactly_one_win(shop: Shop) -> None:
    product_id = shop.new_product(on_hand=10)
    placed = shop.place(quantity=2, product_id=product_id)
    actions = [functools.partial(shop.cancel, placed.id)] * 5
    actions += [functools.partial(shop.ship, placed.id)] * 5
    start = threading.Barrier(len(actions))

    def attempt(act: Callable[[], Order]) -> Order | tuple[grpc.StatusCode, str]:
        start.wait()
        try:
            return act()
        except grpc.RpcError as err:
            return reason_of(err)

    with ThreadPoolExecutor(len(actions)) as pool:
        outcomes = list(pool.map(attempt, actions))

    winners = [outcome for outcome in outcomes if isinstance(outcome, Order)]
    assert len(winners) == 1, [state_name(order.state) for order in winners]
    winner = winners[0]
    losers = [outcome for outcome in outcomes if not isinstance(outcome, Order)]
    assert losers == [(StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION")] * 9
    assert shop.get(placed.id) == winner
    types = [event.type for event in shop.events(placed.id)][2:]
    if winner.state == CANCELLED:
        assert types == ["ORDER_CANCELLED", "REFUND_REQUESTED", "REFUND_SUCCEEDED"]
        assert shop.stock(product_id).on_hand == 10  # restocked exactly once
        assert shop.refunded_at_provider(placed.id) == placed.captured.amount_minor
    else:
        assert state_name(winner.state) == "SHIPPED"
        assert types == ["ORDER_SHIPPED"]
        assert shop.stock(product_id).on_hand == 8
        assert shop.refunded_at_provider(placed.id) == 0


def test_an_order_that_captured_nothing_has_nothing_to_refund(
    server_factory: Callable[..., Running], tmp_path: Path
) -> None:
    rules = tmp_path / "free-shipping.json"
    free = {"service_level": "Free", "min_delivery_days": 1, "max_delivery_days": 2}
    free |= {"base_cost_minor": 0, "per_kg_cost_minor": 0}
    zones = {"zones": [{"id": "de", "countries": ["DE"], **free}]}
    rules.write_text(
        json.dumps({"currency": "EUR", **zones, "default_zone": {"id": "rest", **free}})
    )
    shop = open_shop(server_factory(reconcile_interval_seconds=0, shipping_rules_file=rules))
    gift = shop.staff.catalog.CreateProduct(
        catalog_service_pb2.CreateProductRequest(
            product=product_pb2.Product(sku="GIFT-1", name="Gift", price=eur(0))
        )
    ).product
    shop.staff.inventory.AdjustStock(
        inventory_service_pb2.AdjustStockRequest(
            product_id=gift.id, delta=5, reason="delivery", request_id=new_id()
        )
    )
    placed = shop.place(product_id=gift.id)
    assert (state_name(placed.state), placed.total, placed.captured) == ("PAID", eur(0), eur(0))
    shop.ship(placed.id)
    before = shop.snapshot(placed.id)

    for amount in (None, 1):
        err = rpc_error(lambda a=amount: shop.refund(placed.id, a))
        assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED")
    assert shop.snapshot(placed.id) == before
    assert shop.running.app.reconcile_once().refunds_failed == []


# --- idempotency ----------------------------------------------------------------------------------


def test_a_retried_ship_or_deliver_returns_the_order_as_it_is_now(shop: Shop) -> None:
    placed = shop.place()
    ship_key, deliver_key = new_id(), new_id()
    shipped = shop.ship(placed.id, request_id=ship_key)
    assert shop.ship(placed.id, request_id=ship_key) == shipped
    delivered = shop.deliver(placed.id, request_id=deliver_key)
    assert shop.ship(placed.id, request_id=ship_key) == delivered  # now, not as first answered
    assert shop.deliver(placed.id, request_id=deliver_key) == delivered
    types = [event.type for event in shop.events(placed.id)]
    assert types == ["ORDER_PLACED", "PAYMENT_CAPTURED", "ORDER_SHIPPED", "ORDER_DELIVERED"]


def test_a_retried_refund_refunds_once(shop: Shop) -> None:
    shipped = shop.order_in(SHIPPED)
    key = new_id()
    first = shop.refund_response(shipped.id, 300, request_id=key)
    again = shop.refund_response(shipped.id, 300, request_id=key)
    assert again == first
    assert [r.id for r in again.order.refunds] == [first.refund_id]
    assert again.order.refunded == eur(300)
    assert shop.refunded_at_provider(shipped.id) == 300
    assert [e.type for e in shop.events(shipped.id)].count("REFUND_REQUESTED") == 1


def test_a_retried_cancel_cancels_once(shop: Shop) -> None:
    product_id = shop.new_product(on_hand=4)
    placed = shop.place(quantity=1, product_id=product_id)
    key = new_id()
    cancelled = shop.cancel(placed.id, shop.customer, request_id=key)
    assert shop.cancel(placed.id, shop.customer, request_id=key) == cancelled
    assert len(cancelled.refunds) == 1
    assert shop.refunded_at_provider(placed.id) == placed.captured.amount_minor
    assert shop.stock(product_id).on_hand == 4  # restocked once, not twice
    assert len(shop.events(placed.id)) == 5


def test_duplicates_sent_together_act_once(shop: Shop) -> None:
    shipped = shop.order_in(SHIPPED)
    key = new_id()
    start = threading.Barrier(10)

    def duplicate(_: int) -> str | tuple[grpc.StatusCode, str]:
        start.wait()
        try:
            return shop.refund_response(shipped.id, 300, request_id=key).refund_id
        except grpc.RpcError as err:
            return reason_of(err)

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(duplicate, range(10)))

    order = shop.get(shipped.id)
    [refund] = order.refunds
    # Each duplicate got the first call's answer, or ABORTED while the first was still running.
    assert set(outcomes) <= {refund.id, (StatusCode.ABORTED, "REQUEST_IN_FLIGHT")}
    assert refund.id in outcomes
    assert order.refunded == eur(300)
    assert shop.refunded_at_provider(shipped.id) == 300
    assert shop.refund_response(shipped.id, 300, request_id=key).refund_id == refund.id


def test_a_request_id_reused_for_another_request_is_refused(shop: Shop) -> None:
    shipped = shop.order_in(SHIPPED)
    other = shop.order_in(SHIPPED)
    refund_key = new_id()
    shop.refund(shipped.id, 300, request_id=refund_key)
    ship_key = new_id()
    paid = shop.place()
    shop.ship(paid.id, request_id=ship_key)
    before = [shop.snapshot(order_id) for order_id in (shipped.id, other.id, paid.id)]

    reuses: list[Callable[[], object]] = [
        lambda: shop.refund(shipped.id, 301, request_id=refund_key),
        lambda: shop.refund(shipped.id, 300, request_id=refund_key, reason="other"),
        lambda: shop.refund(shipped.id, request_id=refund_key),
        lambda: shop.refund(other.id, 300, request_id=refund_key),
        lambda: shop.ship(paid.id, request_id=ship_key, tracking_number="JJD9999"),
        lambda: shop.deliver(paid.id, request_id=ship_key),  # another operation
        lambda: shop.deliver(shipped.id, request_id=refund_key),
    ]
    for reuse in reuses:
        err = rpc_error(reuse)
        assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
    after = [shop.snapshot(order_id) for order_id in (shipped.id, other.id, paid.id)]
    assert after == before


def test_a_failed_mutation_is_not_remembered(shop: Shop) -> None:
    paid = shop.place()
    key = new_id()
    err = rpc_error(lambda: shop.deliver(paid.id, request_id=key))
    assert reason_of(err) == (StatusCode.FAILED_PRECONDITION, "ILLEGAL_TRANSITION")
    shop.ship(paid.id)
    # The retry runs again and sees the order as it is now.
    assert state_name(shop.deliver(paid.id, request_id=key).state) == "DELIVERED"


def mutations(order_id: str) -> list[tuple[str, Callable[[StorefrontClient, str], object]]]:
    """Each mutation of `order_id`, called by a client with a given request_id."""
    return [
        (
            "CancelOrder",
            lambda client, key: client.orders.CancelOrder(
                pb.CancelOrderRequest(order_id=order_id, request_id=key)
            ),
        ),
        (
            "ShipOrder",
            lambda client, key: client.orders.ShipOrder(
                pb.ShipOrderRequest(
                    order_id=order_id, request_id=key, carrier="DHL", tracking_number="JJD1"
                )
            ),
        ),
        (
            "MarkOrderDelivered",
            lambda client, key: client.orders.MarkOrderDelivered(
                pb.MarkOrderDeliveredRequest(order_id=order_id, request_id=key)
            ),
        ),
        (
            "RefundOrder",
            lambda client, key: client.orders.RefundOrder(
                pb.RefundOrderRequest(order_id=order_id, request_id=key)
            ),
        ),
    ]


BAD_REQUEST_IDS = ["", "not-a-uuid", "123", uuid.uuid4().hex, str(uuid.uuid4()) + "0"]


def test_a_missing_or_malformed_request_id_is_invalid_argument(
    shop: Shop, subtests: pytest.Subtests
) -> None:
    paid = shop.place()
    before = shop.snapshot(paid.id)
    for name, call in mutations(paid.id):
        for key in BAD_REQUEST_IDS:
            with subtests.test(rpc=name, request_id=key):
                err = rpc_error(functools.partial(call, shop.staff, key))
                assert err.code() == StatusCode.INVALID_ARGUMENT
                assert violated_fields(err) == {"request_id"}
    assert shop.snapshot(paid.id) == before


# --- ownership and ids ----------------------------------------------------------------------------


def test_another_customers_order_is_not_found_byte_identically(shop: Shop) -> None:
    other, _ = shop.login(Role.CUSTOMER)
    mine = shop.place()
    theirs = shop.place(customer=other)
    missing = new_id()

    def as_other(order_id: str) -> list[Callable[[], object]]:
        return [
            lambda: other.orders.GetOrder(pb.GetOrderRequest(order_id=order_id)),
            lambda: other.orders.CancelOrder(
                pb.CancelOrderRequest(order_id=order_id, request_id=new_id())
            ),
            lambda: other.orders.ListOrderEvents(pb.ListOrderEventsRequest(order_id=order_id)),
        ]

    for foreign, absent in zip(as_other(mine.id), as_other(missing), strict=True):
        seen = visible_failure(foreign)
        assert seen == visible_failure(absent)
        assert seen[0] == StatusCode.NOT_FOUND
        assert reason_of(rpc_error(foreign)) == (StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    assert ids(listed(other)) == [theirs.id]
    assert shop.get(mine.id) == mine  # the cancel attempt changed nothing


def test_a_missing_order_is_not_found_for_every_rpc(shop: Shop, subtests: pytest.Subtests) -> None:
    missing = new_id()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("GetOrder", lambda: shop.get(missing)),
        ("ListOrderEvents", lambda: shop.events(missing)),
        *[
            (name, functools.partial(call, shop.staff, new_id()))
            for name, call in mutations(missing)
        ],
    ]
    for name, call in calls:
        with subtests.test(rpc=name):
            assert reason_of(rpc_error(call)) == (StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")


def test_malformed_order_ids_are_invalid_argument(shop: Shop, subtests: pytest.Subtests) -> None:
    def calls(order_id: str) -> list[tuple[str, Callable[[], object]]]:
        key = new_id()
        staff = shop.staff.orders
        return [
            ("GetOrder", lambda: staff.GetOrder(pb.GetOrderRequest(order_id=order_id))),
            (
                "ListOrderEvents",
                lambda: staff.ListOrderEvents(pb.ListOrderEventsRequest(order_id=order_id)),
            ),
            *[
                (name, functools.partial(call, shop.staff, key))
                for name, call in mutations(order_id)
            ],
        ]

    for order_id in ["", "not-an-id", str(uuid.uuid4()).upper(), "' OR 1=1 --"]:
        for name, call in calls(order_id):
            with subtests.test(rpc=name, order_id=order_id):
                err = rpc_error(call)
                assert err.code() == StatusCode.INVALID_ARGUMENT
                assert "order_id" in violated_fields(err)


# --- ListOrderEvents ------------------------------------------------------------------------------


def test_order_events_are_oldest_first_and_paginated(shop: Shop) -> None:
    placed = shop.place()
    shop.ship(placed.id, carrier="UPS", tracking_number="1Z999")
    shop.deliver(placed.id)
    shop.refund(placed.id, 300)
    shop.refund(placed.id)
    customer, staff = placed.customer_id, shop.staff_id
    expected = [
        ("ORDER_PLACED", PENDING_PAYMENT, PENDING_PAYMENT, customer),
        ("PAYMENT_CAPTURED", PENDING_PAYMENT, PAID, customer),
        ("ORDER_SHIPPED", PAID, SHIPPED, staff),
        ("ORDER_DELIVERED", SHIPPED, DELIVERED, staff),
        ("REFUND_REQUESTED", DELIVERED, PARTIALLY_REFUNDED, staff),
        ("REFUND_SUCCEEDED", PARTIALLY_REFUNDED, PARTIALLY_REFUNDED, "system"),
        ("REFUND_REQUESTED", PARTIALLY_REFUNDED, REFUNDED, staff),
        ("REFUND_SUCCEEDED", REFUNDED, REFUNDED, "system"),
    ]

    whole = shop.events(placed.id, shop.customer)
    assert [(e.type, e.from_state, e.to_state, e.actor) for e in whole] == expected
    assert whole == shop.events(placed.id)  # staff see the same history
    assert "UPS 1Z999" in whole[2].note
    stamps = [e.create_time.ToNanoseconds() for e in whole]
    assert stamps == sorted(stamps) and len({e.id for e in whole}) == len(whole)

    for page_size in (1, 3, 7):
        pages: list[order_pb2.OrderEvent] = []
        token = ""
        while True:
            response = shop.customer.orders.ListOrderEvents(
                pb.ListOrderEventsRequest(order_id=placed.id, page_size=page_size, page_token=token)
            )
            assert len(response.events) <= page_size
            pages.extend(response.events)
            token = response.next_page_token
            if not token:
                break
        assert pages == whole


def test_unpaid_orders_have_their_payment_history(shop: Shop) -> None:
    declined, pending = shop.place("tok_declined"), shop.place("tok_timeout")
    customer = declined.customer_id
    history = [(e.type, e.from_state, e.to_state, e.actor) for e in shop.events(declined.id)]
    assert history == [
        ("ORDER_PLACED", PENDING_PAYMENT, PENDING_PAYMENT, customer),
        ("PAYMENT_DECLINED", PENDING_PAYMENT, PAYMENT_FAILED, customer),
    ]
    assert declined.payment_failure_code == "card_declined"
    history = [(e.type, e.from_state, e.to_state, e.actor) for e in shop.events(pending.id)]
    assert history == [
        ("ORDER_PLACED", PENDING_PAYMENT, PENDING_PAYMENT, customer),
        ("PAYMENT_OUTCOME_UNKNOWN", PENDING_PAYMENT, PENDING_PAYMENT, customer),
    ]


def test_bad_order_event_page_requests_are_invalid_argument(shop: Shop) -> None:
    first, second = shop.place(), shop.place()
    token = shop.staff.orders.ListOrderEvents(
        pb.ListOrderEventsRequest(order_id=first.id, page_size=1)
    ).next_page_token
    assert token
    bad: list[tuple[pb.ListOrderEventsRequest, str]] = [
        (pb.ListOrderEventsRequest(order_id=first.id, page_size=-1), "page_size"),
        (pb.ListOrderEventsRequest(order_id=first.id, page_token=token[:-2] + "xx"), "page_token"),
        (pb.ListOrderEventsRequest(order_id=first.id, page_token="garbage"), "page_token"),
        (pb.ListOrderEventsRequest(order_id=second.id, page_token=token), "page_token"),
    ]
    for request, field in bad:
        err = rpc_error(lambda r=request: shop.staff.orders.ListOrderEvents(r))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {field}


def test_an_order_action_stored_before_replays_after(shop: Shop) -> None:
    placed = shop.place()
    request = pb.ShipOrderRequest(
        order_id=placed.id,
        request_id=str(uuid.uuid4()),
        carrier="DHL",
        tracking_number="JJD0001",
    )
    store_as_before(
        shop.running,
        shop.staff_id,
        "/storefront.v1.OrderService/ShipOrder",
        request,
        placed.id.encode(),
    )
    # Judged the same request: answered from the store, so nothing is shipped now.
    replayed = shop.staff.orders.ShipOrder(request).order
    assert replayed.id == placed.id and replayed.state == PAID

    changed = pb.ShipOrderRequest()
    changed.CopyFrom(request)
    changed.tracking_number = "JJD0002"
    err = rpc_error(lambda: shop.staff.orders.ShipOrder(changed))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err)[0] == "IDEMPOTENCY_KEY_REUSED"
