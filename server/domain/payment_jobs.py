"""The payment reconciler: settles what checkout and refunds could not finish at once.

One pass (`reconcile`) does three things, each safe to run in several processes at once (every
change is a guarded transition, every provider call is keyed):

1. Orders PENDING_PAYMENT whose last charge attempt is older than `reconcile_after` (longer than
   a charge call can take, so none is still in flight): ask the provider by the order's key.
   A succeeded charge -> PAID; a declined one -> PAYMENT_FAILED; none at all -> PAYMENT_FAILED
   (payment_not_completed, marked unresolved). Either failure releases the reservations.
2. If the provider cannot be asked and the order is older than `reservation_ttl`, its
   reservations expire: PAYMENT_FAILED (reservation_expired), marked unresolved. Unresolved
   orders are asked again on later passes until `reservation_ttl` after their creation; a charge
   that turns up is refunded in full.
3. Refunds still PENDING (no answer, or the secret key was rejected) are sent again under their
   own keys, which never refunds twice, oldest attempt first.

Every worker of every replica runs passes. Each order and each refund is leased (work_leases)
to one process for `lease` (the pass interval) before the provider is asked about it, so in
each interval it is asked once, whichever process asks.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from server.db import database, utcnow
from server.domain import order_payments, orders, outbox, work_leases
from server.domain.orders import RefundStatus, State
from server.models.order import Order, OrderRefund
from server.payments import (
    ChargeStatus,
    PaymentGateway,
    PaymentOutcomeUnknown,
    PaymentProviderAuthError,
    PaymentProviderError,
    PaymentProviderUnavailable,
    RefundExceedsCharge,
)

log = logging.getLogger(__name__)

BATCH_SIZE = 100
# Lease kinds: an order's payment (pending or unresolved: asked about once per lease either way),
# and a refund to send.
PAYMENT_LEASE = "payment"
REFUND_LEASE = "refund"
# Provider answers that say "ask again later" rather than anything about the payment.
_TRY_LATER = (PaymentOutcomeUnknown, PaymentProviderUnavailable)


@dataclass
class Report:
    """What one pass did, by outcome."""

    paid: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    late_charges_refunded: list[str] = field(default_factory=list)
    refunds_succeeded: list[str] = field(default_factory=list)
    refunds_failed: list[str] = field(default_factory=list)
    still_pending: int = 0


def reconcile(
    gateway: PaymentGateway,
    *,
    reconcile_after: dt.timedelta,
    reservation_ttl: dt.timedelta,
    lease: dt.timedelta,
    now: dt.datetime | None = None,
) -> Report:
    """Runs one pass (see the module docstring); returns what it did. What it works on is
    leased to this process for `lease`."""
    now = now or utcnow()
    report = Report()
    _settle_pending(gateway, report, now - reconcile_after, now - reservation_ttl, lease, now)
    # Those the first step just failed were asked already in this pass.
    asked = {*report.failed, *report.expired}
    _settle_unresolved(gateway, report, now - reservation_ttl, lease, now, skip=asked)
    deliver_refunds(gateway, lease=lease, report=report, now=now)
    return report


def _settle_pending(
    gateway: PaymentGateway,
    report: Report,
    attempted_before: dt.datetime,
    expire_before: dt.datetime,
    lease: dt.timedelta,
    now: dt.datetime,
) -> None:
    pending = work_leases.claim(
        PAYMENT_LEASE,
        Order.select(Order.id, Order.customer_id, Order.charge_attempt_time, Order.create_time)
        .where(
            (Order.state == State.PENDING_PAYMENT.value)
            & (Order.charge_attempt_time <= attempted_before)
        )
        .order_by(Order.charge_attempt_time),
        Order.id,
        lease=lease,
        limit=BATCH_SIZE,
        now=now,
    )
    for order in pending:
        try:
            _settle_one(gateway, report, order, expire_before)
        except Exception:
            # One order the pass cannot settle (a bug, a database hiccup) must not stop the rest.
            log.exception("could not reconcile the payment of order %s", order.id)


def _settle_one(
    gateway: PaymentGateway, report: Report, order: Order, expire_before: dt.datetime
) -> None:
    attempt = order.charge_attempt_time
    try:
        charge = gateway.find_charge(idempotency_key=orders.payment_key(order.id))
    except (*_TRY_LATER, PaymentProviderError) as exc:
        if order.create_time <= expire_before and order_payments.payment_failed(
            order,
            failure_code=orders.RESERVATION_EXPIRED,
            event_type="RESERVATION_EXPIRED",
            actor=orders.SYSTEM_ACTOR,
            attempt_time=attempt,
            unresolved=True,
        ):
            report.expired.append(order.id)
        else:
            report.still_pending += 1
        log.warning("payment of order %s not settled: %s", order.id, type(exc).__name__)
        return
    if charge is not None and charge.status is ChargeStatus.SUCCEEDED:
        if order_payments.payment_captured(
            order, charge, actor=orders.SYSTEM_ACTOR, attempt_time=attempt
        ):
            report.paid.append(order.id)
        return
    code = orders.NOT_COMPLETED if charge is None else (charge.decline_code or "card_declined")
    if order_payments.payment_failed(
        order,
        failure_code=code,
        event_type="PAYMENT_DECLINED" if charge is not None else "PAYMENT_NOT_COMPLETED",
        actor=orders.SYSTEM_ACTOR,
        attempt_time=attempt,
        # "No charge" may only mean "not yet": asked again until the reservation TTL is over,
        # a charge that still turns up is refunded.
        unresolved=charge is None,
    ):
        report.failed.append(order.id)


def _settle_unresolved(
    gateway: PaymentGateway,
    report: Report,
    expire_before: dt.datetime,
    lease: dt.timedelta,
    now: dt.datetime,
    *,
    skip: set[str],
) -> None:
    candidates = Order.select(Order.id, Order.create_time).where(
        (Order.state == State.PAYMENT_FAILED.value) & Order.payment_unresolved
    )
    if skip:
        candidates = candidates.where(Order.id.not_in(sorted(skip)))
    unresolved = work_leases.claim(
        PAYMENT_LEASE,
        candidates.order_by(Order.update_time),
        Order.id,
        lease=lease,
        limit=BATCH_SIZE,
        now=now,
    )
    for order in unresolved:
        try:
            _resolve_one(gateway, report, order, expire_before)
        except Exception:
            log.exception("could not resolve the payment of order %s", order.id)


def _resolve_one(
    gateway: PaymentGateway, report: Report, order: Order, expire_before: dt.datetime
) -> None:
    try:
        charge = gateway.find_charge(idempotency_key=orders.payment_key(order.id))
    except (*_TRY_LATER, PaymentProviderError):
        return
    if charge is not None and charge.status is ChargeStatus.SUCCEEDED:
        if order_payments.charge_after_failure(order.id, charge) is not None:
            report.late_charges_refunded.append(order.id)
    elif charge is not None or order.create_time <= expire_before:
        order_payments.mark_resolved(order.id)


# The order events that commit a refund owed to the customer.
REFUND_OWED_EVENTS = frozenset(
    {orders.outbox_event_type("REFUND_REQUESTED"), orders.outbox_event_type("LATE_CHARGE_REFUNDED")}
)


def refund_sender(gateway: PaymentGateway, *, lease: dt.timedelta) -> outbox.Consumer:
    """Returns the outbox consumer that asks the provider for a refund as soon as it is owed
    (the reconciler sends whatever this misses, once the lease is over)."""

    def send(event: outbox.Event) -> None:
        if event.type in REFUND_OWED_EVENTS:
            deliver_refunds(gateway, lease=lease, order_id=event.aggregate_id)

    return send


def deliver_refunds(
    gateway: PaymentGateway,
    *,
    lease: dt.timedelta,
    order_id: str | None = None,
    report: Report | None = None,
    now: dt.datetime | None = None,
) -> Report:
    """Sends the PENDING refunds (of one order, or the oldest BATCH_SIZE) that no other process
    holds to the provider."""
    report = report or Report()
    query = (
        OrderRefund.select(OrderRefund, Order)
        .join(Order)
        .where(OrderRefund.status == RefundStatus.PENDING.value)
    )
    if order_id is not None:
        query = query.where(OrderRefund.order == order_id)
    # Oldest attempt first: a refund tried again goes behind the others.
    leased = work_leases.claim(
        REFUND_LEASE,
        query.order_by(OrderRefund.update_time),
        OrderRefund.id,
        lease=lease,
        limit=BATCH_SIZE,
        now=now,
    )
    for refund in leased:
        try:
            _deliver(gateway, refund, report)
        except Exception:
            # Stays PENDING and is tried again on the next pass; the others go on.
            log.exception("could not send refund %s", refund.id)
    return report


def _deliver(gateway: PaymentGateway, refund: OrderRefund, report: Report) -> None:
    order: Order = refund.order
    if order.charge_id is None:  # a refund is only ever owed on a captured charge
        raise RuntimeError(f"refund {refund.id} of order {order.id} has no charge")
    try:
        made = gateway.refund(
            idempotency_key=orders.refund_key(refund.id),
            charge_id=order.charge_id,
            amount_minor=int(refund.amount_minor),
        )
    except (*_TRY_LATER, PaymentProviderAuthError) as exc:
        # A rejected secret key is configuration, not an answer about this refund: it stays
        # owed and is sent again once the key is mended. Retried refunds go to the back.
        OrderRefund.update(attempts=OrderRefund.attempts + 1, update_time=utcnow()).where(
            OrderRefund.id == refund.id
        ).execute()
        report.still_pending += 1
        log.warning("refund %s not made yet: %s", refund.id, exc)
        return
    except (RefundExceedsCharge, PaymentProviderError) as exc:
        log.error("refund %s of order %s refused by the provider: %s", refund.id, order.id, exc)
        made = None
    _settle_refund(refund, order, made.id if made else None, report)


def _settle_refund(
    refund: OrderRefund, order: Order, provider_refund_id: str | None, report: Report
) -> None:
    """Records the provider's answer: SUCCEEDED, or FAILED with the amount no longer counted as
    refunded (the provider holds less to refund than storefront thought: staff look into it)."""
    now = utcnow()
    status = RefundStatus.SUCCEEDED if provider_refund_id else RefundStatus.FAILED
    with database.atomic():
        # The order's lock first, as every path that changes what an order has refunded.
        current = orders.locked(order.id)
        settled = (
            OrderRefund.update(
                status=status.value,
                provider_refund_id=provider_refund_id,
                attempts=OrderRefund.attempts + 1,
                update_time=now,
            )
            .where(
                (OrderRefund.id == refund.id) & (OrderRefund.status == RefundStatus.PENDING.value)
            )
            .execute()
        )
        if settled != 1:
            return  # another process settled it first
        before = after = State(current.state)
        if status is RefundStatus.FAILED:
            after = orders.refund_refused(current, int(refund.amount_minor), now)
        orders.record_event(
            current,
            f"REFUND_{status.value}",
            from_state=before,
            to_state=after,
            actor=orders.SYSTEM_ACTOR,
            now=now,
            note=f"{refund.amount_minor} {order.currency} (refund {refund.id})"
            + ("" if provider_refund_id else ": refused by the payment provider"),
        )
    (report.refunds_succeeded if provider_refund_id else report.refunds_failed).append(refund.id)
