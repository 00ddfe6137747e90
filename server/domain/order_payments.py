"""Payment outcomes: what checkout and the reconciler record once the provider has answered.

Each outcome runs in one transaction that takes the locks in the order every path takes them
(cart, then order, then stock rows), checks that the order is still where the caller found it,
and writes the new state, the stock movements, the history entry and its outbox event together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from server.db import database, lock_transaction_on, utcnow
from server.domain import inventory, orders, promotions
from server.models.cart import CartLine
from server.models.order import Order
from server.payments import Charge


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
    current = orders.locked(order.id)
    if current.state != orders.State.PENDING_PAYMENT or (
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
        orders.set_state(
            current,
            orders.State.PAID,
            now,
            captured_minor=captured,
            charge_id=None if charge is None else charge.id,
            paid_time=now,
        )
        lines = orders.stock_lines(current.id)
        inventory.commit_sale(lines, reference=orders.stock_reference(current.id), actor=actor)
        remove_ordered_from_cart(current.customer_id, lines)
        orders.record_event(
            current,
            "PAYMENT_CAPTURED",
            from_state=orders.State.PENDING_PAYMENT,
            to_state=orders.State.PAID,
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
        orders.set_state(
            current,
            orders.State.PAYMENT_FAILED,
            now,
            payment_failure_code=failure_code,
            payment_unresolved=unresolved,
        )
        inventory.release(
            orders.stock_lines(current.id),
            reference=orders.stock_reference(current.id),
            actor=actor,
            reason=f"payment failed: {failure_code}",
        )
        promotions.release(current.id, now)
        orders.record_event(
            current,
            event_type,
            from_state=orders.State.PENDING_PAYMENT,
            to_state=orders.State.PAYMENT_FAILED,
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
        order = orders.locked(order_id)
        if order.state != orders.State.PAYMENT_FAILED or order.charge_id is not None:
            return None
        Order.update(
            captured_minor=charge.amount_minor,
            charge_id=charge.id,
            payment_unresolved=False,
            update_time=now,
        ).where(Order.id == order.id).execute()
        order = Order.get_by_id(order.id)
        refund_id = orders.owe_refund(
            order, charge.amount_minor, "charged after the order failed", now
        )
        orders.record_event(
            order,
            "LATE_CHARGE_REFUNDED",
            from_state=orders.State.PAYMENT_FAILED,
            to_state=orders.State.PAYMENT_FAILED,
            actor=orders.SYSTEM_ACTOR,
            now=now,
            note=f"{charge.amount_minor} {order.currency} (charge {charge.id}, refund {refund_id})",
        )
        return refund_id


def mark_resolved(order_id: str) -> None:
    """The provider confirmed it holds no charge for an unresolved PAYMENT_FAILED order."""
    Order.update(payment_unresolved=False, update_time=utcnow()).where(
        (Order.id == order_id) & (Order.state == orders.State.PAYMENT_FAILED.value)
    ).execute()


def payment_outcome_unknown(order: Order, *, actor: str) -> None:
    """Notes in the order's history that the provider's answer was lost."""
    with database.atomic():
        orders.record_event(
            order,
            "PAYMENT_OUTCOME_UNKNOWN",
            from_state=orders.State.PENDING_PAYMENT,
            to_state=orders.State.PENDING_PAYMENT,
            actor=actor,
            now=utcnow(),
            note="the payment provider's answer was lost; the outcome is being reconciled",
        )
