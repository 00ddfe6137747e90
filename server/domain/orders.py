"""Orders: the state machine, reads scoped to their owner, and the writes every order path shares.

The writes here (locking an order, setting its state, recording its history entry with its
outbox event, owing a refund) are what order_actions (cancel, ship, deliver, refund) and
order_payments (the provider's answers) are made of, always inside the caller's transaction.

Customers are scoped to their own orders by the WHERE clause, so another customer's order is
indistinguishable from a missing one.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.db import lock_transaction_on, rfc3339
from server.domain import inventory, list_filter, listing, outbox
from server.domain.principal import Principal, Role
from server.errors import FailedPrecondition, NotFound
from server.models.order import Order, OrderEvent, OrderLine, OrderRefund
from server.validation import Validator

SYSTEM_ACTOR = inventory.SYSTEM_ACTOR
# Staff and admins see and act on every order; customers only on their own.
SEES_ALL_ORDERS = frozenset({Role.STAFF, Role.ADMIN})
# payment_failure_code values of orders whose card was never refused (else: the decline code).
NOT_COMPLETED = "payment_not_completed"
RESERVATION_EXPIRED = "reservation_expired"


class State(enum.StrEnum):
    """Where an order is in its life (OrderState in the proto)."""

    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    PAYMENT_FAILED = "PAYMENT_FAILED"


class Action(enum.StrEnum):
    """What a caller can ask of an order."""

    CANCEL = "CANCEL"
    SHIP = "SHIP"
    DELIVER = "DELIVER"
    REFUND = "REFUND"


# The whole state machine for callers; any (state, action) pair not listed is illegal. A refund
# lands on PARTIALLY_REFUNDED, or on REFUNDED once everything captured has been refunded.
# PENDING_PAYMENT -> PAID | PAYMENT_FAILED is decided by the payment provider only (see
# payment_captured and payment_failed).
TRANSITIONS: Mapping[State, Mapping[Action, State]] = {
    State.PENDING_PAYMENT: {},
    # A PAID order's refund is partial (an item it will not ship) and leaves it PAID: refunding
    # all of an unshipped order is cancelling it (refund_order refuses that, REFUND_ALL_UNSHIPPED).
    State.PAID: {
        Action.CANCEL: State.CANCELLED,
        Action.SHIP: State.SHIPPED,
        Action.REFUND: State.PAID,
    },
    State.SHIPPED: {Action.DELIVER: State.DELIVERED, Action.REFUND: State.PARTIALLY_REFUNDED},
    State.DELIVERED: {Action.REFUND: State.PARTIALLY_REFUNDED},
    State.PARTIALLY_REFUNDED: {Action.REFUND: State.PARTIALLY_REFUNDED},
    State.CANCELLED: {},
    State.REFUNDED: {},
    State.PAYMENT_FAILED: {},
}


class RefundStatus(enum.StrEnum):
    """Where a refund is at the payment provider."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


# Some units of an order line: (line id, quantity).
RefundedUnits = tuple[str, int]


@dataclass(frozen=True)
class Address:
    """A shipping address, as a caller sends it and an order keeps it."""

    recipient_name: str
    line1: str
    line2: str
    city: str
    region: str
    postal_code: str
    country_code: str


@dataclass(frozen=True)
class OrderDetails:
    """An order with its lines and refunds."""

    order: Order
    lines: list[OrderLine]
    refunds: list[OrderRefund]


def next_state(state: State, action: Action) -> State:
    """Returns the state `action` leads to from `state`; raises ILLEGAL_TRANSITION."""
    target = TRANSITIONS[state].get(action)
    if target is None:
        raise FailedPrecondition(
            f"An order in state {state.value} cannot be {_PAST[action]}.",
            reason="ILLEGAL_TRANSITION",
            metadata={"state": state.value, "action": action.value},
        )
    return target


_PAST = {
    Action.CANCEL: "cancelled",
    Action.SHIP: "shipped",
    Action.DELIVER: "marked delivered",
    Action.REFUND: "refunded",
}


def shipping_address(order: Order) -> Address:
    """Returns where the order ships to, as checkout took it."""
    return Address(
        recipient_name=order.ship_name,
        line1=order.ship_line1,
        line2=order.ship_line2,
        city=order.ship_city,
        region=order.ship_region,
        postal_code=order.ship_postal_code,
        country_code=order.ship_country,
    )


def order_not_found() -> NotFound:
    """The one answer for a missing order and another customer's order."""
    return NotFound("The order does not exist.", reason="ORDER_NOT_FOUND")


def payment_key(order_id: str) -> str:
    """The payment provider idempotency key of the order's charge."""
    return f"order:{order_id}"


def refund_key(refund_id: str) -> str:
    """The payment provider idempotency key of one refund (the refund's own id)."""
    return refund_id


def stock_reference(order_id: str) -> str:
    """The reference the order's stock movements carry."""
    return f"order:{order_id}"


def _scoped(viewer: Principal) -> Any:
    """The WHERE condition limiting orders to those `viewer` may see."""
    if viewer.role in SEES_ALL_ORDERS:
        return True
    return Order.customer_id == viewer.subject


def check_order_id(v: Validator, order_id: str) -> None:
    v.check_id("order_id", order_id, "order")


# --- reading ------------------------------------------------------------------------------------


def details(orders: Sequence[Order]) -> list[OrderDetails]:
    """Loads the lines and refunds of `orders` (two queries) and returns them together."""
    ids = [order.id for order in orders]
    lines: dict[str, list[OrderLine]] = {order_id: [] for order_id in ids}
    refunds: dict[str, list[OrderRefund]] = {order_id: [] for order_id in ids}
    if ids:
        for line in (
            OrderLine.select()
            .where(OrderLine.order.in_(ids))
            .order_by(OrderLine.order, OrderLine.position)
        ):
            lines[line.order_id].append(line)
        for refund in (
            OrderRefund.select()
            .where(OrderRefund.order.in_(ids))
            .order_by(OrderRefund.order, OrderRefund.create_time, OrderRefund.id)
        ):
            refunds[refund.order_id].append(refund)
    return [OrderDetails(order, lines[order.id], refunds[order.id]) for order in orders]


def get(viewer: Principal, order_id: str) -> OrderDetails:
    """Returns the order if `viewer` may see it; raises NotFound otherwise."""
    v = Validator()
    check_order_id(v, order_id)
    v.raise_if_any()
    order = Order.get_or_none((Order.id == order_id) & _scoped(viewer))
    if order is None:
        raise order_not_found()
    return details([order])[0]


ORDER_LIST = listing.ListSpec(
    name="orders",
    model=Order,
    filter_fields={
        "state": list_filter.FilterField(
            Order.state,
            list_filter.FieldKind.ENUM,
            enum_values={f"ORDER_STATE_{state.value}": state.value for state in State},
        ),
        "create_time": list_filter.FilterField(Order.create_time, list_filter.FieldKind.TIMESTAMP),
        "customer_id": list_filter.FilterField(
            Order.customer_id, list_filter.FieldKind.STRING, operators=("=", "!=")
        ),
    },
    order_fields={"create_time": Order.create_time, "total_minor": Order.total_minor},
    default_order="create_time desc",
)


def list_(viewer: Principal, page: listing.PageRequest) -> listing.Page[OrderDetails]:
    """Returns one page of the orders `viewer` may see."""
    sees_all = viewer.role in SEES_ALL_ORDERS
    # A token is bound to the caller (as the contract says, staff included) and to what the
    # caller sees, so nobody resumes a listing someone else started.
    request = listing.parse_list_request(
        ORDER_LIST, page, scope=f"{'all' if sees_all else 'customer'}={viewer.subject}"
    )
    if not sees_all and any(term.field == "customer_id" for term in request.filter):
        raise list_filter.filter_error("customer_id may only be filtered on by staff")
    rows = listing.fetch_page(Order.select().where(_scoped(viewer)), request)
    return listing.Page(details(rows.items), rows.next_page_token)


EVENT_LIST = listing.ListSpec(
    name="order_events",
    model=OrderEvent,
    filter_fields={},
    order_fields={"id": OrderEvent.id},
    default_order="id",
)


def list_events(
    viewer: Principal, page: listing.PageRequest, *, order_id: str
) -> listing.Page[OrderEvent]:
    """Returns one page of the order's history, oldest first; raises NotFound like get()."""
    v = Validator()
    check_order_id(v, order_id)
    v.raise_if_any()
    request = listing.parse_list_request(EVENT_LIST, page, scope=order_id)
    if not Order.select().where((Order.id == order_id) & _scoped(viewer)).exists():
        raise order_not_found()
    return listing.fetch_page(OrderEvent.select().where(OrderEvent.order == order_id), request)


# --- writing ------------------------------------------------------------------------------------


def outbox_event_type(event_type: str) -> str:
    """The outbox name of an order history entry: ORDER_SHIPPED -> order.shipped,
    PAYMENT_CAPTURED -> order.payment_captured."""
    return f"{outbox.ORDER}.{event_type.lower().removeprefix('order_')}"


def record_event(
    order: Order,
    event_type: str,
    *,
    from_state: State,
    to_state: State,
    actor: str,
    now: dt.datetime,
    note: str = "",
) -> None:
    """Appends to the order's history and emits the outbox event; call in the transaction that
    made the change."""
    OrderEvent.create(
        order=order.id,
        type=event_type,
        from_state=from_state.value,
        to_state=to_state.value,
        actor=actor,
        note=note,
        create_time=now,
    )
    outbox.emit(
        outbox.ORDER,
        order.id,
        outbox_event_type(event_type),
        {
            "order_id": order.id,
            "customer_id": order.customer_id,
            "currency": order.currency,
            "from_state": from_state.value,
            "to_state": to_state.value,
            "actor": actor,
            "note": note,
            "order": snapshot(order),
        },
        now=now,
    )


def snapshot(order: Order) -> dict[str, Any]:
    """The order as its events carry it to webhooks (`data.order`), as of the event: amounts in
    minor units of `currency`, times in RFC 3339 UTC."""
    lines = (
        OrderLine.select(
            OrderLine.product,
            OrderLine.sku,
            OrderLine.name,
            OrderLine.quantity,
            OrderLine.unit_price_minor,
            OrderLine.line_total_minor,
            OrderLine.discount_minor,
        )
        .where(OrderLine.order == order.id)
        .order_by(OrderLine.position)
    )
    return {
        "id": order.id,
        "customer_id": order.customer_id,
        "state": order.state,
        "currency": order.currency,
        "subtotal_minor": int(order.subtotal_minor),
        "shipping_minor": int(order.shipping_minor),
        "tax_minor": int(order.tax_minor),
        "total_minor": int(order.total_minor),
        "discount_minor": int(order.discount_minor),
        "discount_code": order.discount_code,
        "captured_minor": int(order.captured_minor),
        "refunded_minor": int(order.refunded_minor),
        "shipping_address": {
            "recipient_name": order.ship_name,
            "line1": order.ship_line1,
            "line2": order.ship_line2,
            "city": order.ship_city,
            "region": order.ship_region,
            "postal_code": order.ship_postal_code,
            "country_code": order.ship_country,
        },
        "shipping_service_level": order.shipping_service_level,
        "carrier": order.carrier,
        "tracking_number": order.tracking_number,
        "lines": [
            {
                "product_id": line.product_id,
                "sku": line.sku,
                "name": line.name,
                "quantity": int(line.quantity),
                "unit_price_minor": int(line.unit_price_minor),
                "line_total_minor": int(line.line_total_minor),
                "discount_minor": int(line.discount_minor),
            }
            for line in lines
        ],
        "create_time": rfc3339(order.create_time),
        "update_time": rfc3339(order.update_time),
    }


def locked(order_id: str, viewer: Principal | None = None) -> Order:
    """Serialises on the order until the transaction ends and reads it (scoped to `viewer`, when
    given; any owner's otherwise)."""
    lock_transaction_on(f"order:{order_id}")
    condition = Order.id == order_id
    if viewer is not None:
        condition &= _scoped(viewer)
    order = Order.get_or_none(condition)
    if order is None:
        raise order_not_found()
    return order


def refund_refused(order: Order, amount_minor: int, now: dt.datetime) -> State:
    """The provider refused a refund: it no longer counts as refunded, and a REFUNDED order that
    is owed money again becomes PARTIALLY_REFUNDED, so staff can refund the rest. Call with the
    order locked; returns its state."""
    order.refunded_minor = int(order.refunded_minor) - amount_minor
    Order.update(refunded_minor=order.refunded_minor, update_time=now).where(
        Order.id == order.id
    ).execute()
    if order.state == State.REFUNDED and order.refunded_minor < order.captured_minor:
        set_state(order, State.PARTIALLY_REFUNDED, now)
    return State(order.state)


def set_state(order: Order, target: State, now: dt.datetime, **changes: Any) -> None:
    """Writes the new state if the order is still in the state it was read in, and updates
    `order` to match."""
    updated = (
        Order.update(state=target.value, update_time=now, **changes)
        .where((Order.id == order.id) & (Order.state == order.state))
        .execute()
    )
    if updated != 1:  # cannot happen while the order's lock is held; refuse rather than guess
        raise RuntimeError(f"order {order.id} changed state under its lock")
    for name, value in {"state": target.value, "update_time": now, **changes}.items():
        setattr(order, name, value)


def stock_lines(order_id: str) -> list[inventory.StockLine]:
    """Returns the order's (product id, quantity) lines: what its stock movements move."""
    return [
        (line.product_id, int(line.quantity))
        for line in OrderLine.select().where(OrderLine.order == order_id)
    ]


def owe_refund(
    order: Order,
    amount_minor: int,
    reason: str,
    now: dt.datetime,
    lines: Sequence[RefundedUnits] = (),
) -> str:
    """Commits a refund the provider still has to make (delivered by payment_jobs), of `lines`'
    units when it is a refund by lines; returns its id. The guarded UPDATE keeps the total
    refunded within what was captured."""
    added = (
        Order.update(refunded_minor=Order.refunded_minor + amount_minor)
        .where(
            (Order.id == order.id) & (Order.refunded_minor + amount_minor <= Order.captured_minor)
        )
        .execute()
    )
    if added != 1:
        raise exceeds_captured(int(order.captured_minor) - int(order.refunded_minor))
    refund_id = str(uuid.uuid4())
    OrderRefund.create(
        id=refund_id,
        order=order.id,
        amount_minor=amount_minor,
        status=RefundStatus.PENDING.value,
        reason=reason,
        lines=json.dumps([{"line_id": line_id, "quantity": n} for line_id, n in lines]),
        create_time=now,
        update_time=now,
    )
    return refund_id


def refunded_lines(refund: OrderRefund) -> list[RefundedUnits]:
    """The (line id, units) a refund by lines refunded; empty for a refund of an amount."""
    return [(unit["line_id"], int(unit["quantity"])) for unit in json.loads(refund.lines)]


def units_refunded(order_id: str) -> Counter[str]:
    """Units refunded per line of the order, by refunds the provider has not refused."""
    refunded: Counter[str] = Counter()
    for refund in OrderRefund.select(OrderRefund.lines).where(
        (OrderRefund.order == order_id) & (OrderRefund.status != RefundStatus.FAILED.value)
    ):
        for line_id, units in refunded_lines(refund):
            refunded[line_id] += units
    return refunded


def exceeds_captured(remaining: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"The refund is more than the {remaining} minor units left to refund.",
        reason="REFUND_EXCEEDS_CAPTURED",
        metadata={"refundable_minor": str(remaining)},
    )
