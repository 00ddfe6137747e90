"""Orders: the state machine, reads scoped to their owner, and the transitions that move them.

Every transition runs in one transaction that first serialises on the order (an advisory lock on
PostgreSQL, the IMMEDIATE write lock on SQLite), reads it, asks TRANSITIONS whether the action is
allowed from its state, and writes the new state, its side effects on stock and the order's
event together. An illegal action raises FAILED_PRECONDITION (ILLEGAL_TRANSITION) and writes
nothing.

Customers are scoped to their own orders by the WHERE clause, so another customer's order is
indistinguishable from a missing one.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.db import database, lock_transaction_on, utcnow
from server.domain import inventory, listing
from server.domain.principal import Principal, Role
from server.errors import FailedPrecondition, NotFound, Validator
from server.models.cart import CartLine
from server.models.order import Order, OrderEvent, OrderLine, OrderRefund
from server.payments import Charge

SYSTEM_ACTOR = inventory.SYSTEM_ACTOR
REASON_MAX_LENGTH = 500
CARRIER_MAX_LENGTH = 100
TRACKING_NUMBER_MAX_LENGTH = 100
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
    State.PAID: {Action.CANCEL: State.CANCELLED, Action.SHIP: State.SHIPPED},
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


def _check_order_id(v: Validator, order_id: str) -> None:
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
    _check_order_id(v, order_id)
    v.raise_if_any()
    order = Order.get_or_none((Order.id == order_id) & _scoped(viewer))
    if order is None:
        raise order_not_found()
    return details([order])[0]


ORDER_LIST = listing.ListSpec(
    name="orders",
    model=Order,
    filter_fields={
        "state": listing.FilterField(
            Order.state,
            listing.FieldKind.ENUM,
            enum_values={f"ORDER_STATE_{state.value}": state.value for state in State},
        ),
        "create_time": listing.FilterField(Order.create_time, listing.FieldKind.TIMESTAMP),
        "customer_id": listing.FilterField(
            Order.customer_id, listing.FieldKind.STRING, operators=("=", "!=")
        ),
    },
    order_fields={"create_time": Order.create_time, "total_minor": Order.total_minor},
    default_order="create_time desc",
)


def list_(
    viewer: Principal,
    *,
    page_size: int,
    page_token: str,
    filter_text: str,
    order_by: str,
    secret: bytes,
) -> listing.Page[OrderDetails]:
    """Returns one page of the orders `viewer` may see."""
    sees_all = viewer.role in SEES_ALL_ORDERS
    # A token is bound to the caller (as the contract says, staff included) and to what the
    # caller sees, so nobody resumes a listing someone else started.
    request = listing.parse_list_request(
        ORDER_LIST,
        page_size=page_size,
        page_token=page_token,
        filter_text=filter_text,
        order_by=order_by,
        secret=secret,
        scope=f"{'all' if sees_all else 'customer'}={viewer.subject}",
    )
    if not sees_all and any(term.field == "customer_id" for term in request.filter):
        raise listing.filter_error("customer_id may only be filtered on by staff")
    page = listing.fetch_page(Order.select().where(_scoped(viewer)), request)
    return listing.Page(details(page.items), page.next_page_token)


EVENT_LIST = listing.ListSpec(
    name="order_events",
    model=OrderEvent,
    filter_fields={},
    order_fields={"id": OrderEvent.id},
    default_order="id",
)


def list_events(
    viewer: Principal, *, order_id: str, page_size: int, page_token: str, secret: bytes
) -> listing.Page[OrderEvent]:
    """Returns one page of the order's history, oldest first; raises NotFound like get()."""
    v = Validator()
    _check_order_id(v, order_id)
    v.raise_if_any()
    request = listing.parse_list_request(
        EVENT_LIST,
        page_size=page_size,
        page_token=page_token,
        filter_text="",
        order_by="",
        secret=secret,
        scope=order_id,
    )
    if not Order.select().where((Order.id == order_id) & _scoped(viewer)).exists():
        raise order_not_found()
    return listing.fetch_page(OrderEvent.select().where(OrderEvent.order == order_id), request)


# --- writing ------------------------------------------------------------------------------------


def record_event(
    order_id: str,
    event_type: str,
    *,
    from_state: State,
    to_state: State,
    actor: str,
    now: dt.datetime,
    note: str = "",
) -> None:
    """Appends to the order's history; call in the transaction that made the change."""
    OrderEvent.create(
        order=order_id,
        type=event_type,
        from_state=from_state.value,
        to_state=to_state.value,
        actor=actor,
        note=note,
        create_time=now,
    )


def _locked(order_id: str, viewer: Principal | None) -> Order:
    """Serialises on the order until the transaction ends and reads it (scoped to `viewer`)."""
    lock_transaction_on(f"order:{order_id}")
    condition = Order.id == order_id
    if viewer is not None:
        condition &= _scoped(viewer)
    order = Order.get_or_none(condition)
    if order is None:
        raise order_not_found()
    return order


def locked(order_id: str) -> Order:
    """Serialises on the order until the transaction ends and reads it (any owner)."""
    return _locked(order_id, None)


def refund_refused(order: Order, amount_minor: int, now: dt.datetime) -> State:
    """The provider refused a refund: it no longer counts as refunded, and a REFUNDED order that
    is owed money again becomes PARTIALLY_REFUNDED, so staff can refund the rest. Call with the
    order locked; returns its state."""
    order.refunded_minor = int(order.refunded_minor) - amount_minor
    Order.update(refunded_minor=order.refunded_minor, update_time=now).where(
        Order.id == order.id
    ).execute()
    if order.state == State.REFUNDED and order.refunded_minor < order.captured_minor:
        _set_state(order, State.PARTIALLY_REFUNDED, now)
    return State(order.state)


def _set_state(order: Order, target: State, now: dt.datetime, **changes: Any) -> None:
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


def _stock_lines(order_id: str) -> list[inventory.StockLine]:
    return [
        (line.product_id, int(line.quantity))
        for line in OrderLine.select().where(OrderLine.order == order_id)
    ]


def check_ship(v: Validator, *, order_id: str, carrier: str, tracking_number: str) -> None:
    """Adds the violations of a ShipOrder request."""
    _check_order_id(v, order_id)
    v.text("carrier", carrier, CARRIER_MAX_LENGTH, required=True)
    v.text("tracking_number", tracking_number, TRACKING_NUMBER_MAX_LENGTH, required=True)


def check_order_action(v: Validator, *, order_id: str, reason: str = "") -> None:
    """Adds the violations of a request naming an order and an optional reason."""
    _check_order_id(v, order_id)
    v.text("reason", reason, REASON_MAX_LENGTH, required=False)


def _transition(
    actor: Principal,
    order_id: str,
    action: Action,
    event_type: str,
    now: dt.datetime,
    *,
    note: str = "",
    **changes: Any,
) -> Order:
    """Moves the caller's order by `action` and records the event; call in a transaction."""
    order = _locked(order_id, actor)
    source = State(order.state)
    target = next_state(source, action)
    _set_state(order, target, now, **changes)
    record_event(
        order.id,
        event_type,
        from_state=source,
        to_state=target,
        actor=actor.subject,
        now=now,
        note=note,
    )
    return order


def ship(actor: Principal, *, order_id: str, carrier: str, tracking_number: str) -> None:
    """PAID -> SHIPPED with the carrier's tracking number."""
    carrier, tracking_number = carrier.strip(), tracking_number.strip()
    now = utcnow()
    with database.atomic():
        _transition(
            actor,
            order_id,
            Action.SHIP,
            "ORDER_SHIPPED",
            now,
            note=f"{carrier} {tracking_number}",
            carrier=carrier,
            tracking_number=tracking_number,
            ship_time=now,
        )


def deliver(actor: Principal, *, order_id: str) -> None:
    """SHIPPED -> DELIVERED."""
    now = utcnow()
    with database.atomic():
        _transition(actor, order_id, Action.DELIVER, "ORDER_DELIVERED", now, deliver_time=now)


def _owe_refund(order: Order, amount_minor: int, reason: str, now: dt.datetime) -> str:
    """Commits a refund the provider still has to make (delivered by payment_jobs); returns
    its id. The guarded UPDATE keeps the total refunded within what was captured."""
    added = (
        Order.update(refunded_minor=Order.refunded_minor + amount_minor)
        .where(
            (Order.id == order.id) & (Order.refunded_minor + amount_minor <= Order.captured_minor)
        )
        .execute()
    )
    if added != 1:
        raise _exceeds_captured(int(order.captured_minor) - int(order.refunded_minor))
    refund_id = str(uuid.uuid4())
    OrderRefund.create(
        id=refund_id,
        order=order.id,
        amount_minor=amount_minor,
        status=RefundStatus.PENDING.value,
        reason=reason,
        create_time=now,
        update_time=now,
    )
    return refund_id


def _exceeds_captured(remaining: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"The refund is more than the {remaining} minor units left to refund.",
        reason="REFUND_EXCEEDS_CAPTURED",
        metadata={"refundable_minor": str(remaining)},
    )


def cancel(actor: Principal, *, order_id: str, reason: str) -> str | None:
    """PAID -> CANCELLED: stock back on hand, everything not yet refunded owed back.

    Returns the id of the refund now owed (None if nothing was captured).
    """
    now = utcnow()
    reason = reason.strip()
    with database.atomic():
        order = _transition(
            actor, order_id, Action.CANCEL, "ORDER_CANCELLED", now, note=reason, cancel_time=now
        )
        target = State(order.state)
        inventory.restock(
            _stock_lines(order.id),
            reference=stock_reference(order.id),
            actor=actor.subject,
            reason="order cancelled",
        )
        remaining = int(order.captured_minor) - int(order.refunded_minor)
        if remaining <= 0:
            return None
        refund_id = _owe_refund(order, remaining, reason or "order cancelled", now)
        record_event(
            order.id,
            "REFUND_REQUESTED",
            from_state=target,
            to_state=target,
            actor=actor.subject,
            now=now,
            note=f"{remaining} {order.currency} (refund {refund_id})",
        )
        return refund_id


def refund(
    actor: Principal, *, order_id: str, amount_minor: int | None, currency: str, reason: str
) -> str:
    """Owes part (or, with amount_minor None, all that is left) of the capture back.

    The order becomes REFUNDED once everything captured is refunded, else PARTIALLY_REFUNDED.
    Returns the refund's id; the provider is asked by payment_jobs.deliver_refunds.
    """
    now = utcnow()
    reason = reason.strip()
    with database.atomic():
        order = _locked(order_id, actor)
        if amount_minor is not None and currency != order.currency:
            v = Validator()
            v.add("amount.currency_code", f"must be the order's currency, {order.currency}")
            v.raise_if_any()
        source = State(order.state)
        target = next_state(source, Action.REFUND)
        remaining = int(order.captured_minor) - int(order.refunded_minor)
        amount = remaining if amount_minor is None else amount_minor
        # amount is only below 1 when nothing is left to refund, e.g. an order whose total was 0.
        if amount > remaining or amount < 1:
            raise _exceeds_captured(remaining)
        if amount == remaining:
            target = State.REFUNDED
        _set_state(order, target, now)
        refund_id = _owe_refund(order, amount, reason or "refund", now)
        record_event(
            order.id,
            "REFUND_REQUESTED",
            from_state=source,
            to_state=target,
            actor=actor.subject,
            now=now,
            note=f"{amount} {order.currency} (refund {refund_id})"
            + (f": {reason}" if reason else ""),
        )
        return refund_id


def check_refund(
    v: Validator, *, order_id: str, amount: tuple[str, int] | None, reason: str
) -> None:
    """Adds the violations of a RefundOrder request; amount is (currency, minor) when set."""
    check_order_action(v, order_id=order_id, reason=reason)
    if amount is not None:
        currency, minor = amount
        v.check(bool(currency), "amount.currency_code", "is required with an amount")
        v.check(minor > 0, "amount.amount_minor", "must be positive")


# --- payment outcomes (checkout and the reconciler) ----------------------------------------------


def remove_ordered_from_cart(customer_id: str, lines: Sequence[inventory.StockLine]) -> None:
    """Takes the ordered units out of the customer's cart (lines added since stay); call with the
    cart's lock held."""
    ordered = dict(lines)
    in_cart = list(
        CartLine.select(CartLine.id, CartLine.product, CartLine.quantity).where(
            (CartLine.cart == customer_id) & CartLine.product.in_(list(ordered))
        )
    )
    emptied = [line.id for line in in_cart if line.quantity <= ordered[line.product_id]]
    if emptied:
        CartLine.delete().where(CartLine.id.in_(emptied)).execute()
    for line in in_cart:
        if line.quantity > ordered[line.product_id]:
            CartLine.update(quantity=CartLine.quantity - ordered[line.product_id]).where(
                CartLine.id == line.id
            ).execute()


def _still_pending(order: Order, attempt_time: dt.datetime | None) -> Order | None:
    """Locks the order and returns it as it is now if it is still PENDING_PAYMENT (and, with
    `attempt_time`, still on that charge attempt: the reconciler must not overtake a newer one)."""
    current = _locked(order.id, None)
    if current.state != State.PENDING_PAYMENT or (
        attempt_time is not None and current.charge_attempt_time != attempt_time
    ):
        return None
    return current


def payment_captured(
    order: Order,
    charge: Charge | None,
    *,
    actor: str,
    attempt_time: dt.datetime | None = None,
) -> Order | None:
    """PENDING_PAYMENT -> PAID: reserved units sold, ordered units out of the cart.

    `charge` is None for an order whose total is zero. Returns the order as it is now, or None
    if it was no longer pending (on `attempt_time`), when nothing is changed.
    """
    now = utcnow()
    with database.atomic():
        # Locks in the order every path takes them: cart, then order, then stock rows.
        lock_transaction_on(f"cart:{order.customer_id}")
        current = _still_pending(order, attempt_time)
        if current is None:
            return None
        captured = 0 if charge is None else charge.amount_minor
        if captured != current.total_minor:
            raise RuntimeError(f"order {order.id}: charge of {captured}, total {order.total_minor}")
        _set_state(
            current,
            State.PAID,
            now,
            captured_minor=captured,
            charge_id=None if charge is None else charge.id,
            paid_time=now,
        )
        lines = _stock_lines(current.id)
        inventory.commit_sale(lines, reference=stock_reference(current.id), actor=actor)
        remove_ordered_from_cart(current.customer_id, lines)
        record_event(
            current.id,
            "PAYMENT_CAPTURED",
            from_state=State.PENDING_PAYMENT,
            to_state=State.PAID,
            actor=actor,
            now=now,
            note="" if charge is None else f"{captured} {current.currency} (charge {charge.id})",
        )
        return current


def payment_failed(
    order: Order,
    *,
    failure_code: str,
    event_type: str,
    actor: str,
    attempt_time: dt.datetime | None = None,
    unresolved: bool = False,
) -> Order | None:
    """PENDING_PAYMENT -> PAYMENT_FAILED: the reservations are released.

    `unresolved` marks an order whose provider outcome is still unknown (its reservation
    expired); the reconciler keeps asking and refunds a charge that turns up. Returns the order
    as it is now, or None if it was no longer pending (on `attempt_time`).
    """
    now = utcnow()
    with database.atomic():
        current = _still_pending(order, attempt_time)
        if current is None:
            return None
        _set_state(
            current,
            State.PAYMENT_FAILED,
            now,
            payment_failure_code=failure_code,
            payment_unresolved=unresolved,
        )
        inventory.release(
            _stock_lines(current.id),
            reference=stock_reference(current.id),
            actor=actor,
            reason=f"payment failed: {failure_code}",
        )
        record_event(
            current.id,
            event_type,
            from_state=State.PENDING_PAYMENT,
            to_state=State.PAYMENT_FAILED,
            actor=actor,
            now=now,
            note=failure_code,
        )
        return current


def charge_after_failure(order_id: str, charge: Charge) -> str | None:
    """A succeeded charge turned up for a PAYMENT_FAILED order (its reservation expired while
    the provider could not be asked, or while the charge was on its way): records it as
    captured and owes it back in full. Returns the refund's id (None if already recorded)."""
    now = utcnow()
    with database.atomic():
        order = _locked(order_id, None)
        if order.state != State.PAYMENT_FAILED or order.charge_id is not None:
            return None
        Order.update(
            captured_minor=charge.amount_minor,
            charge_id=charge.id,
            payment_unresolved=False,
            update_time=now,
        ).where(Order.id == order.id).execute()
        order = Order.get_by_id(order.id)
        refund_id = _owe_refund(order, charge.amount_minor, "charged after the order failed", now)
        record_event(
            order.id,
            "LATE_CHARGE_REFUNDED",
            from_state=State.PAYMENT_FAILED,
            to_state=State.PAYMENT_FAILED,
            actor=SYSTEM_ACTOR,
            now=now,
            note=f"{charge.amount_minor} {order.currency} (charge {charge.id}, refund {refund_id})",
        )
        return refund_id


def mark_resolved(order_id: str) -> None:
    """The provider confirmed it holds no charge for an unresolved PAYMENT_FAILED order."""
    Order.update(payment_unresolved=False, update_time=utcnow()).where(
        (Order.id == order_id) & (Order.state == State.PAYMENT_FAILED.value)
    ).execute()


def payment_outcome_unknown(order_id: str, *, actor: str) -> None:
    """Notes in the order's history that the provider's answer was lost."""
    with database.atomic():
        record_event(
            order_id,
            "PAYMENT_OUTCOME_UNKNOWN",
            from_state=State.PENDING_PAYMENT,
            to_state=State.PENDING_PAYMENT,
            actor=actor,
            now=utcnow(),
            note="the payment provider's answer was lost; the outcome is being reconciled",
        )
