"""Order actions: cancel, ship, deliver and refund, and the use cases OrderService calls.

Every action runs in one transaction that first serialises on the order (an advisory lock on
PostgreSQL, the IMMEDIATE write lock on SQLite), reads it, asks the state machine
(orders.TRANSITIONS) whether the action is allowed from its state, and writes the new state, its
side effects on stock, the order's history entry and its outbox event together. An illegal
action raises FAILED_PRECONDITION (ILLEGAL_TRANSITION) and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from server.db import database, utcnow
from server.domain import idempotency, inventory, orders, promotions
from server.domain.commands import RequestKey
from server.domain.principal import Principal
from server.errors import FailedPrecondition
from server.models.order import Order, OrderLine
from server.validation import Validator

REASON_MAX_LENGTH = 500
CARRIER_MAX_LENGTH = 100
TRACKING_NUMBER_MAX_LENGTH = 100


def check_ship(v: Validator, *, order_id: str, carrier: str, tracking_number: str) -> None:
    """Adds the violations of a ShipOrder request."""
    orders.check_order_id(v, order_id)
    v.text("carrier", carrier, CARRIER_MAX_LENGTH, required=True)
    v.text("tracking_number", tracking_number, TRACKING_NUMBER_MAX_LENGTH, required=True)


def check_order_action(v: Validator, *, order_id: str, reason: str = "") -> None:
    """Adds the violations of a request naming an order and an optional reason."""
    orders.check_order_id(v, order_id)
    v.text("reason", reason, REASON_MAX_LENGTH, required=False)


def _transition(
    actor: Principal,
    order_id: str,
    action: orders.Action,
    event_type: str,
    now: dt.datetime,
    *,
    note: str = "",
    **changes: Any,
) -> Order:
    """Moves the caller's order by `action` and records the event; call in a transaction."""
    order = orders.locked(order_id, actor)
    source = orders.State(order.state)
    target = orders.next_state(source, action)
    orders.set_state(order, target, now, **changes)
    orders.record_event(
        order,
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
            orders.Action.SHIP,
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
        _transition(
            actor, order_id, orders.Action.DELIVER, "ORDER_DELIVERED", now, deliver_time=now
        )


def cancel(actor: Principal, *, order_id: str, reason: str) -> str | None:
    """PAID -> CANCELLED: stock back on hand, everything not yet refunded owed back.

    Returns the id of the refund now owed (None if nothing was captured).
    """
    now = utcnow()
    reason = reason.strip()
    with database.atomic():
        order = _transition(
            actor,
            order_id,
            orders.Action.CANCEL,
            "ORDER_CANCELLED",
            now,
            note=reason,
            cancel_time=now,
        )
        target = orders.State(order.state)
        inventory.restock(
            orders.stock_lines(order.id),
            reference=orders.stock_reference(order.id),
            actor=actor.subject,
            reason="order cancelled",
        )
        promotions.release(order.id, now)
        remaining = int(order.captured_minor) - int(order.refunded_minor)
        if remaining <= 0:
            return None
        refund_id = orders.owe_refund(order, remaining, reason or "order cancelled", now)
        orders.record_event(
            order,
            "REFUND_REQUESTED",
            from_state=target,
            to_state=target,
            actor=actor.subject,
            now=now,
            note=f"{remaining} {order.currency} (refund {refund_id})",
        )
        return refund_id


def refund(
    actor: Principal,
    *,
    order_id: str,
    amount_minor: int | None,
    currency: str,
    reason: str,
    lines: Sequence[orders.RefundedUnits] = (),
) -> str:
    """Owes part (or, with amount_minor None and no lines, all that is left) of the capture
    back; with `lines`, what the customer paid for those units (see paid_for).

    The order becomes REFUNDED once everything captured is refunded, else PARTIALLY_REFUNDED; a
    PAID order stays PAID (still to ship), and may not be refunded in full (CancelOrder does
    that, and restocks). Returns the refund's id; the provider is asked by
    payment_jobs.deliver_refunds.
    """
    now = utcnow()
    reason = reason.strip()
    with database.atomic():
        order = orders.locked(order_id, actor)
        if amount_minor is not None and currency != order.currency:
            v = Validator()
            v.add("amount.currency_code", f"must be the order's currency, {order.currency}")
            v.raise_if_any()
        source = orders.State(order.state)
        target = orders.next_state(source, orders.Action.REFUND)
        remaining = int(order.captured_minor) - int(order.refunded_minor)
        if lines:
            amount = paid_for(order, lines)
        else:
            amount = remaining if amount_minor is None else amount_minor
        # amount is only below 1 when nothing is left to refund, e.g. an order whose total was 0.
        if amount > remaining or amount < 1:
            raise orders.exceeds_captured(remaining)
        if amount == remaining and source is orders.State.PAID:
            raise FailedPrecondition(
                "Refunding all of an order that has not shipped is cancelling it: use "
                "CancelOrder, which also returns its stock.",
                reason="REFUND_ALL_UNSHIPPED",
            )
        if amount == remaining:
            target = orders.State.REFUNDED
        orders.set_state(order, target, now)
        refund_id = orders.owe_refund(order, amount, reason or "refund", now, lines)
        orders.record_event(
            order,
            "REFUND_REQUESTED",
            from_state=source,
            to_state=target,
            actor=actor.subject,
            now=now,
            note=f"{amount} {order.currency} (refund {refund_id})"
            + (f": {reason}" if reason else ""),
        )
        return refund_id


def paid_for(order: Order, lines: Sequence[orders.RefundedUnits]) -> int:
    """What the customer paid for these units of the order's lines: each line's total less its
    share of the discount, pro rata to the units, plus the tax on that at the order's rate,
    rounded half to even once. Call with the order locked. INVALID_ARGUMENT for a line of
    another order; FAILED_PRECONDITION (REFUND_EXCEEDS_LINE) for more units than are left."""
    ordered = {line.id: line for line in OrderLine.select().where(OrderLine.order == order.id)}
    v = Validator()
    for index, (line_id, _) in enumerate(lines):
        v.check(line_id in ordered, f"lines[{index}].line_id", "is not a line of this order")
    v.raise_if_any()
    refunded = orders.units_refunded(order.id)
    goods = Fraction(0)
    for line_id, quantity in lines:
        line = ordered[line_id]
        left = int(line.quantity) - refunded[line_id]
        if quantity > left:
            raise FailedPrecondition(
                f"Line {line_id} has {left} units left to refund.",
                reason="REFUND_EXCEEDS_LINE",
                metadata={"line_id": line_id, "refundable_quantity": str(left)},
            )
        paid = int(line.line_total_minor) - int(line.discount_minor)
        goods += Fraction(paid * quantity, int(line.quantity))
    # round() of a Fraction rounds half to even, as the checkout's tax does.
    return round(goods * (1 + Fraction(Decimal(order.tax_rate))))


def check_refund(
    v: Validator,
    *,
    order_id: str,
    amount: tuple[str, int] | None,
    reason: str,
    lines: Sequence[orders.RefundedUnits] = (),
) -> None:
    """Adds the violations of a RefundOrder request; amount is (currency, minor) when set."""
    check_order_action(v, order_id=order_id, reason=reason)
    if amount is not None:
        currency, minor = amount
        v.check(bool(currency), "amount.currency_code", "is required with an amount")
        v.check(minor > 0, "amount.amount_minor", "must be positive")
        v.check(not lines, "lines", "must be empty when amount is set")
    seen: set[str] = set()
    for index, (line_id, quantity) in enumerate(lines):
        v.check_id(f"lines[{index}].line_id", line_id, "order line")
        v.check(line_id not in seen, f"lines[{index}].line_id", "is repeated")
        v.check(quantity >= 1, f"lines[{index}].quantity", "must be at least 1")
        seen.add(line_id)


# --- use cases: one call per OrderService mutation ------------------------------------------------
# Each claims the request_id, makes the change (with its history entry and outbox event) and
# stores what a retry replays, all in one transaction, then reads the order as it is now. The
# refund owed by a cancellation or refund is sent by the outbox consumer that runs at commit.
# Operation names and stored values are those the servicers used before: keys stored then still
# match (and replay) now.

CANCEL_OPERATION = "/storefront.v1.OrderService/CancelOrder"
SHIP_OPERATION = "/storefront.v1.OrderService/ShipOrder"
DELIVER_OPERATION = "/storefront.v1.OrderService/MarkOrderDelivered"
REFUND_OPERATION = "/storefront.v1.OrderService/RefundOrder"


@dataclass(frozen=True)
class CancelOrder:
    """A CancelOrder request."""

    request: RequestKey
    order_id: str
    reason: str


@dataclass(frozen=True)
class ShipOrder:
    """A ShipOrder request."""

    request: RequestKey
    order_id: str
    carrier: str
    tracking_number: str


@dataclass(frozen=True)
class MarkOrderDelivered:
    """A MarkOrderDelivered request."""

    request: RequestKey
    order_id: str


@dataclass(frozen=True)
class RefundOrder:
    """A RefundOrder request; `amount` is (currency code, minor units), None for all that is
    left or a refund by `lines`."""

    request: RequestKey
    order_id: str
    amount: tuple[str, int] | None
    reason: str
    lines: tuple[orders.RefundedUnits, ...] = ()


def cancel_order(actor: Principal, command: CancelOrder) -> orders.OrderDetails:
    """Cancels a PAID order once per request_id (see OrderService.CancelOrder)."""
    idempotency.run_once_for_id(
        principal=actor.subject,
        operation=CANCEL_OPERATION,
        request=command.request,
        validate=lambda v: check_order_action(v, order_id=command.order_id, reason=command.reason),
        execute=lambda: cancel(actor, order_id=command.order_id, reason=command.reason) or "",
    )
    return orders.get(actor, command.order_id)


def ship_order(actor: Principal, command: ShipOrder) -> orders.OrderDetails:
    """Ships a PAID order once per request_id (see OrderService.ShipOrder)."""

    def execute() -> str:
        ship(
            actor,
            order_id=command.order_id,
            carrier=command.carrier,
            tracking_number=command.tracking_number,
        )
        return command.order_id

    idempotency.run_once_for_id(
        principal=actor.subject,
        operation=SHIP_OPERATION,
        request=command.request,
        validate=lambda v: check_ship(
            v,
            order_id=command.order_id,
            carrier=command.carrier,
            tracking_number=command.tracking_number,
        ),
        execute=execute,
    )
    return orders.get(actor, command.order_id)


def mark_order_delivered(actor: Principal, command: MarkOrderDelivered) -> orders.OrderDetails:
    """Marks a SHIPPED order delivered once per request_id (see OrderService)."""

    def execute() -> str:
        deliver(actor, order_id=command.order_id)
        return command.order_id

    idempotency.run_once_for_id(
        principal=actor.subject,
        operation=DELIVER_OPERATION,
        request=command.request,
        validate=lambda v: check_order_action(v, order_id=command.order_id),
        execute=execute,
    )
    return orders.get(actor, command.order_id)


def refund_order(actor: Principal, command: RefundOrder) -> tuple[orders.OrderDetails, str]:
    """Owes a refund once per request_id (see OrderService.RefundOrder); returns the order and
    the refund's id."""
    amount = command.amount
    if amount is not None:
        amount = (amount[0].strip().upper(), amount[1])
    refund_id = idempotency.run_once_for_id(
        principal=actor.subject,
        operation=REFUND_OPERATION,
        request=command.request,
        validate=lambda v: check_refund(
            v,
            order_id=command.order_id,
            amount=amount,
            reason=command.reason,
            lines=command.lines,
        ),
        execute=lambda: refund(
            actor,
            order_id=command.order_id,
            amount_minor=None if amount is None else amount[1],
            currency="" if amount is None else amount[0],
            reason=command.reason,
            lines=command.lines,
        ),
    )
    return orders.get(actor, command.order_id), refund_id
