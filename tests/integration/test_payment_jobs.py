"""The payment reconciler and refund delivery on both engines, with orders placed by checkout.

The provider is the in-process SandboxGateway behind `ScriptedProvider`, a stand-in for the
payment provider's network that can be down, lose answers, or let a test act while a lookup is
in progress. Nothing of storefront's own is replaced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import DEFAULT_SHIPPING_RULES_FILE, DEFAULT_TAX_RATES_FILE
from server.db import database, is_sqlite, lock_transaction_on, utcnow
from server.domain import (
    carts,
    checkout,
    order_actions,
    order_payments,
    orders,
    outbox,
    payment_jobs,
    shipping,
    taxes,
)
from server.domain.orders import RefundStatus, State
from server.domain.principal import Principal, Role
from server.errors import DomainError, FailedPrecondition
from server.models.order import Order, OrderEvent, OrderLine, OrderRefund
from server.models.stock import StockLevel, StockMovement
from server.payments import (
    Charge,
    ChargeStatus,
    PaymentOutcomeUnknown,
    PaymentProviderAuthError,
    PaymentProviderError,
    PaymentProviderUnavailable,
    Refund,
    SandboxGateway,
)
from tests.conftest import insert_product
from tests.integration.test_inventory import run_concurrently

RULES = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE)
RATES = taxes.load_rates(DEFAULT_TAX_RATES_FILE)
ADDRESS = orders.Address("Ada Lovelace", "1 Main St", "", "Berlin", "", "10115", "DE")
STAFF = Principal("staff-1", Role.STAFF, "token-staff")
AFTER = dt.timedelta(seconds=60)
TTL = dt.timedelta(seconds=900)
LEASE = dt.timedelta(seconds=10)
WAIT = 10.0  # seconds: a bound on waiting for another thread, never reached when all is well


class ScriptedProvider:
    """A PaymentGateway: the sandbox behind a network the test controls."""

    def __init__(self) -> None:
        self.sandbox = SandboxGateway()
        self.down = False
        self.lose_next_answers = 0  # calls carried out whose answer is then lost
        self.during_next_lookup: Callable[[], None] | None = None
        self.before_next_charge: Callable[[], None] | None = None
        self.rejects_credentials = False  # as a provider does for a wrong or rotated secret key
        self.refuses_requests = False  # as a provider does for a request it finds malformed
        self.recorded: dict[str, Charge] = {}  # what lookups by key answer instead of the sandbox

    def _network(self) -> None:
        if self.down:
            raise PaymentProviderUnavailable("The payment provider is unavailable; retry later.")

    def _answer_lost(self, key: str) -> None:
        if self.lose_next_answers:
            self.lose_next_answers -= 1
            raise PaymentOutcomeUnknown("The answer was lost.", idempotency_key=key)

    def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        description: str,
    ) -> Charge:
        hook, self.before_next_charge = self.before_next_charge, None
        if hook is not None:
            hook()
        self._network()
        charge = self.sandbox.charge(
            idempotency_key=idempotency_key,
            amount_minor=amount_minor,
            currency=currency,
            payment_method_token=payment_method_token,
            description=description,
        )
        self._answer_lost(idempotency_key)
        return charge

    def refund(self, *, idempotency_key: str, charge_id: str, amount_minor: int) -> Refund:
        self._network()
        if self.rejects_credentials:
            raise PaymentProviderAuthError("The provider rejected the secret key (HTTP 401).")
        if self.refuses_requests:
            raise PaymentProviderError("The provider refused the refund: HTTP 400.")
        refund = self.sandbox.refund(
            idempotency_key=idempotency_key, charge_id=charge_id, amount_minor=amount_minor
        )
        self._answer_lost(idempotency_key)
        return refund

    def find_charge(self, *, idempotency_key: str) -> Charge | None:
        self._network()
        # The answer is what the provider knew when asked; the hook runs before it arrives.
        answer = self.recorded.get(idempotency_key) or self.sandbox.find_charge(
            idempotency_key=idempotency_key
        )
        hook, self.during_next_lookup = self.during_next_lookup, None
        if hook is not None:
            hook()
        return answer


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


def new_customer() -> Principal:
    return Principal(f"user-{uuid.uuid4().hex[:12]}", Role.CUSTOMER, "token-customer")


def order_request(token: str, request_id: str | None = None) -> checkout.PlaceOrder:
    return checkout.PlaceOrder(request_id or str(uuid.uuid4()), ADDRESS, "EUR", token)


def place(
    gateway: ScriptedProvider,
    customer: Principal,
    request: checkout.PlaceOrder,
    lines: dict[str, int] | None = None,
) -> Order:
    """Fills the cart with `lines`, places the order (whatever the outcome); returns it."""
    for product_id, quantity in (lines or {}).items():
        carts.add(customer.subject, product_id=product_id, quantity=quantity)
    config = checkout.Checkout(gateway=gateway, shipping_rules=RULES, tax_rates=RATES)
    with contextlib.suppress(DomainError):
        checkout.place_order(config, customer, request)
    return Order.get(
        (Order.customer_id == customer.subject) & (Order.request_id == request.request_id)
    )


def current(order_id: str) -> Order:
    return Order.get_by_id(order_id)


def later(seconds: float = 3600) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def reconcile(provider: ScriptedProvider, now: dt.datetime | None = None) -> payment_jobs.Report:
    return payment_jobs.reconcile(
        provider, reconcile_after=AFTER, reservation_ttl=TTL, lease=LEASE, now=now or later()
    )


def movements(order_id: str) -> Counter[tuple[str, str]]:
    """(product id, kind) -> entries in the ledger for the order."""
    rows = StockMovement.select().where(StockMovement.reference == orders.stock_reference(order_id))
    return Counter((row.product_id, row.kind) for row in rows)


def events(order_id: str) -> list[str]:
    rows = OrderEvent.select().where(OrderEvent.order == order_id).order_by(OrderEvent.id)
    return [row.type for row in rows]


def levels(product_id: str) -> tuple[int, int]:
    level = StockLevel.get(StockLevel.product == product_id)
    return int(level.on_hand), int(level.reserved)


# --- when an attempt is old enough -------------------------------------------------------------


def test_young_attempts_are_left_alone(db: peewee.Database, provider: ScriptedProvider) -> None:
    product_id = insert_product(on_hand=5)
    order = place(provider, new_customer(), order_request("tok_timeout"), {product_id: 2})
    assert order.state == State.PENDING_PAYMENT
    attempt = order.charge_attempt_time

    just_too_young = attempt + AFTER - dt.timedelta(microseconds=1)
    report = reconcile(provider, now=just_too_young)
    assert (report.paid, report.failed, report.expired, report.still_pending) == ([], [], [], 0)
    assert current(order.id).state == State.PENDING_PAYMENT
    assert levels(product_id) == (5, 2)

    report = reconcile(provider, now=attempt + AFTER)
    assert report.paid == [order.id]
    assert current(order.id).state == State.PAID
    assert levels(product_id) == (3, 0)


@pytest.mark.parametrize(
    ("token", "state", "failure_code", "event"),
    [
        ("tok_timeout", State.PAID, "", "PAYMENT_CAPTURED"),
        ("tok_timeout_declined", State.PAYMENT_FAILED, "card_declined", "PAYMENT_DECLINED"),
        (
            "tok_provider_down",
            State.PAYMENT_FAILED,
            orders.NOT_COMPLETED,
            "PAYMENT_NOT_COMPLETED",
        ),
    ],
)
def test_the_providers_answer_settles_a_pending_order(
    db: peewee.Database,
    provider: ScriptedProvider,
    token: str,
    state: State,
    failure_code: str,
    event: str,
) -> None:
    product_id = insert_product(on_hand=5)
    customer = new_customer()
    order = place(provider, customer, order_request(token), {product_id: 2})
    assert order.state == State.PENDING_PAYMENT
    assert levels(product_id) == (5, 2)

    reconcile(provider)
    settled = current(order.id)
    assert (settled.state, settled.payment_failure_code) == (state, failure_code)
    assert events(order.id)[-1] == event
    kind = "SALE" if state == State.PAID else "RELEASE"
    assert movements(order.id) == {(product_id, "RESERVATION"): 1, (product_id, kind): 1}
    assert levels(product_id) == ((3, 0) if state == State.PAID else (5, 0))
    in_cart = [line.quantity for line in carts.get(customer.subject).lines]
    assert in_cart == ([] if state == State.PAID else [2])


def test_a_newer_attempt_than_the_one_read_is_not_overtaken(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    customer = new_customer()
    request = order_request("tok_visa")
    provider.down = True
    order = place(provider, customer, request, {product_id: 1})
    assert order.state == State.PENDING_PAYMENT  # nothing charged; the retry will charge it
    provider.down = False

    charging, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def customer_retries() -> None:
        # A retry with the same request_id: a new attempt that is charging while the
        # reconciler acts on the lookup it made before the retry began.
        def hold_the_charge() -> None:
            charging.set()
            assert release.wait(WAIT)

        provider.before_next_charge = hold_the_charge
        with db.connection_context():
            outcome.append(place(provider, customer, request))

    retry = threading.Thread(target=customer_retries)

    def retry_starts_during_the_lookup() -> None:
        retry.start()
        assert charging.wait(WAIT)

    provider.during_next_lookup = retry_starts_during_the_lookup
    try:
        report = reconcile(provider)
        # The lookup found nothing, but the order has a newer attempt: the reconciler leaves it.
        assert (report.failed, report.paid) == ([], [])
        assert current(order.id).state == State.PENDING_PAYMENT
        assert current(order.id).charge_attempt_time > order.charge_attempt_time
        assert levels(product_id) == (5, 1)
    finally:
        release.set()
        retry.join(WAIT)
    assert not retry.is_alive()

    paid = current(order.id)
    assert paid.state == State.PAID and paid.captured_minor == paid.total_minor
    assert [c.idempotency_key for c in provider.sandbox.list_charges()] == [
        orders.payment_key(order.id)
    ]
    assert movements(order.id) == {(product_id, "RESERVATION"): 1, (product_id, "SALE"): 1}
    assert events(order.id).count("PAYMENT_CAPTURED") == 1


def test_concurrent_passes_settle_each_order_once(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    products = [insert_product(on_hand=100) for _ in range(2)]
    tokens = ["tok_timeout", "tok_timeout_declined", "tok_provider_down"] * 3
    placed = {
        place(provider, new_customer(), order_request(token), {p: 2 for p in products}).id: token
        for token in tokens
    }
    assert {current(order_id).state for order_id in placed} == {State.PENDING_PAYMENT}

    now = later()
    reports = run_concurrently(db, [lambda: reconcile(provider, now=now)] * 2)
    assert all(isinstance(report, payment_jobs.Report) for report in reports)
    paid = [order_id for r in reports for order_id in r.paid]  # type: ignore[union-attr]
    failed = [order_id for r in reports for order_id in r.failed]  # type: ignore[union-attr]
    assert sorted(paid) == sorted(o for o, t in placed.items() if t == "tok_timeout")
    assert sorted(failed) == sorted(o for o, t in placed.items() if t != "tok_timeout")

    for order_id, token in placed.items():
        kind = "SALE" if token == "tok_timeout" else "RELEASE"
        expected = {(p, k): 1 for p in products for k in ("RESERVATION", kind)}
        assert movements(order_id) == expected, token
        settling = [e for e in events(order_id) if e.startswith("PAYMENT_")]
        assert len(settling) == 1 + (token != "tok_provider_down"), settling
    sold = 2 * tokens.count("tok_timeout")
    assert [levels(p) for p in products] == [(100 - sold, 0)] * 2


def test_a_lookup_that_cannot_be_made_keeps_the_order_until_its_reservation_expires(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    order = place(provider, new_customer(), order_request("tok_timeout"), {product_id: 1})
    provider.down = True

    report = reconcile(provider, now=order.create_time + TTL - dt.timedelta(seconds=1))
    assert (report.expired, report.still_pending) == ([], 1)
    assert current(order.id).state == State.PENDING_PAYMENT

    report = reconcile(provider, now=order.create_time + TTL)
    assert report.expired == [order.id]
    expired = current(order.id)
    assert (expired.state, expired.payment_failure_code) == (
        State.PAYMENT_FAILED,
        orders.RESERVATION_EXPIRED,
    )
    assert expired.payment_unresolved
    assert levels(product_id) == (5, 0)

    # The provider is back and holds the charge the lost answer was about: refunded in full.
    provider.down = False
    report = reconcile(provider)
    assert report.late_charges_refunded == [order.id]
    [charge] = provider.sandbox.list_charges()
    assert provider.sandbox.refunded_minor(charge.id) == charge.amount_minor == expired.total_minor
    refunded = current(order.id)
    assert (refunded.state, refunded.payment_unresolved) == (State.PAYMENT_FAILED, False)
    assert (refunded.captured_minor, refunded.refunded_minor) == (charge.amount_minor,) * 2
    assert [r.status for r in OrderRefund.select().where(OrderRefund.order == order.id)] == [
        RefundStatus.SUCCEEDED
    ]
    assert events(order.id)[-3:] == [
        "RESERVATION_EXPIRED",
        "LATE_CHARGE_REFUNDED",
        "REFUND_SUCCEEDED",
    ]
    assert levels(product_id) == (5, 0)

    report = reconcile(provider)  # nothing left to do
    assert (report.late_charges_refunded, report.refunds_succeeded) == ([], [])
    assert provider.sandbox.refunded_minor(charge.id) == charge.amount_minor


def test_an_expired_order_the_provider_never_charged_is_marked_resolved(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    provider.down = True
    order = place(provider, new_customer(), order_request("tok_visa"), {product_id: 1})
    assert reconcile(provider, now=order.create_time + TTL).expired == [order.id]
    assert current(order.id).payment_unresolved

    provider.down = False
    report = reconcile(provider)
    assert report.late_charges_refunded == []
    resolved = current(order.id)
    assert (resolved.state, resolved.payment_unresolved) == (State.PAYMENT_FAILED, False)
    assert (resolved.captured_minor, resolved.refunded_minor) == (0, 0)
    assert provider.sandbox.list_charges() == []


# --- refunds -------------------------------------------------------------------------------------


def shipped_order(provider: ScriptedProvider, on_hand: int = 5, quantity: int = 2) -> Order:
    """A PAID order placed through checkout with tok_visa, then shipped."""
    product_id = insert_product(on_hand=on_hand)
    order = place(provider, new_customer(), order_request("tok_visa"), {product_id: quantity})
    assert order.state == State.PAID
    order_actions.ship(STAFF, order_id=order.id, carrier="DHL", tracking_number="JJD000")
    return current(order.id)


def refunds_of(order_id: str) -> list[OrderRefund]:
    return list(
        OrderRefund.select().where(OrderRefund.order == order_id).order_by(OrderRefund.create_time)
    )


def refund(order_id: str, amount_minor: int | None) -> str:
    return order_actions.refund(
        STAFF, order_id=order_id, amount_minor=amount_minor, currency="EUR", reason="damaged"
    )


def test_pending_refunds_are_retried_until_the_provider_confirms_them(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    refund_id = refund(order.id, 700)
    provider.down = True
    for attempt in (1, 2):
        report = payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)
        assert (report.refunds_succeeded, report.still_pending) == ([], 1)
        [pending] = refunds_of(order.id)
        assert (pending.status, pending.attempts) == (RefundStatus.PENDING, attempt)
    assert current(order.id).refunded_minor == 700  # owed, whatever the provider says

    provider.down = False
    report = payment_jobs.deliver_refunds(provider, lease=LEASE)
    assert report.refunds_succeeded == [refund_id]
    [sent] = refunds_of(order.id)
    assert (sent.status, sent.attempts) == (RefundStatus.SUCCEEDED, 3)
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == 700
    assert events(order.id)[-2:] == ["REFUND_REQUESTED", "REFUND_SUCCEEDED"]

    # Nothing is pending any more; a repeat sends nothing.
    assert payment_jobs.deliver_refunds(provider, lease=LEASE).refunds_succeeded == []
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == 700


def test_a_refund_sent_again_after_a_lost_answer_is_made_once(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    refund(order.id, None)
    provider.lose_next_answers = 1  # the provider refunds, the answer never arrives
    report = payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)
    assert report.still_pending == 1
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == order.total_minor

    report = payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)
    [sent] = refunds_of(order.id)
    assert report.refunds_succeeded == [sent.id]
    assert sent.status == RefundStatus.SUCCEEDED
    # Under its own key the second request is a replay; a new key would have been refused.
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == order.total_minor

    # Even recorded PENDING again (a crash before the answer was stored), it refunds nothing.
    first_id = sent.provider_refund_id
    OrderRefund.update(status=RefundStatus.PENDING.value).where(OrderRefund.id == sent.id).execute()
    payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)
    [again] = refunds_of(order.id)
    assert (again.status, again.provider_refund_id) == (RefundStatus.SUCCEEDED, first_id)
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == order.total_minor


def test_a_refund_by_lines_the_provider_refuses_gives_its_units_back(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider, quantity=2)
    [line] = OrderLine.select().where(OrderLine.order == order.id)
    # Someone refunded nearly all of the charge at the provider, outside storefront.
    provider.sandbox.refund(
        idempotency_key="dashboard-2",
        charge_id=str(order.charge_id),
        amount_minor=int(order.total_minor) - 1,
    )
    order_actions.refund(
        STAFF, order_id=order.id, amount_minor=None, currency="", reason="", lines=[(line.id, 2)]
    )
    assert orders.units_refunded(order.id) == {line.id: 2}
    with pytest.raises(FailedPrecondition) as exceeded:
        order_actions.refund(
            STAFF,
            order_id=order.id,
            amount_minor=None,
            currency="",
            reason="",
            lines=[(line.id, 1)],
        )
    assert exceeded.value.reason == "REFUND_EXCEEDS_LINE"

    report = payment_jobs.deliver_refunds(provider, lease=LEASE)
    [refused] = refunds_of(order.id)
    assert report.refunds_failed == [refused.id]
    assert orders.refunded_lines(refused) == [(line.id, 2)]  # the record stays, not counted
    assert orders.units_refunded(order.id) == {}
    # The units can be refunded again (the provider's refusal needs staff anyway).
    order_actions.refund(
        STAFF, order_id=order.id, amount_minor=None, currency="", reason="", lines=[(line.id, 1)]
    )
    assert orders.units_refunded(order.id) == {line.id: 1}


def test_concurrent_deliveries_settle_a_refund_once(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    refund_id = refund(order.id, 500)
    reports = run_concurrently(
        db, [lambda: payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)] * 4
    )
    succeeded = [r for report in reports for r in report.refunds_succeeded]  # type: ignore[union-attr]
    assert succeeded == [refund_id]
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == 500
    assert events(order.id).count("REFUND_SUCCEEDED") == 1


def test_a_refund_the_provider_refuses_is_failed_and_not_retried(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    charge_id = str(order.charge_id)
    # Someone refunded part of the charge at the provider, outside storefront.
    provider.sandbox.refund(idempotency_key="dashboard-1", charge_id=charge_id, amount_minor=100)
    refund(order.id, None)  # everything: more than the provider has left
    report = payment_jobs.deliver_refunds(provider, lease=LEASE)
    [refused] = refunds_of(order.id)
    assert report.refunds_failed == [refused.id]
    assert refused.status == RefundStatus.FAILED
    assert events(order.id)[-1] == "REFUND_FAILED"
    # No longer counted as refunded: `refunded` is what is owed or made, and the order, owed
    # money again, can be refunded again.
    assert current(order.id).refunded_minor == 0
    assert current(order.id).state == State.PARTIALLY_REFUNDED
    note = OrderEvent.select().where(OrderEvent.order == order.id).order_by(OrderEvent.id)[-1].note
    assert note.endswith("refused by the payment provider")  # the provider's words stay in the log
    assert payment_jobs.deliver_refunds(provider, lease=LEASE).refunds_failed == []
    assert provider.sandbox.refunded_minor(charge_id) == 100


def test_a_refund_refused_for_the_secret_key_stays_owed(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    refund_id = refund(order.id, 300)
    provider.rejects_credentials = True  # configuration, not an answer about this refund
    report = payment_jobs.deliver_refunds(provider, lease=LEASE)
    assert (report.refunds_failed, report.still_pending) == ([], 1)
    [owed] = refunds_of(order.id)
    assert (owed.status, owed.attempts) == (RefundStatus.PENDING, 1)
    assert current(order.id).refunded_minor == 300

    provider.rejects_credentials = False  # the key file is mended
    assert payment_jobs.deliver_refunds(provider, lease=LEASE).refunds_succeeded == [refund_id]
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == 300


def test_an_order_that_cannot_be_resolved_does_not_stop_the_pass(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    # Order A's reservation expired while the provider was down.
    product_id = insert_product(on_hand=5)
    provider.down = True
    stuck = place(provider, new_customer(), order_request("tok_visa"), {product_id: 1})
    assert reconcile(provider, now=later(TTL.total_seconds() + 60)).expired == [stuck.id]
    provider.down = False
    # The provider answers with a charge storefront cannot record (more than the order's
    # total), so settling A fails on every pass.
    provider.recorded[orders.payment_key(stuck.id)] = Charge(
        id="ch_odd",
        idempotency_key=orders.payment_key(stuck.id),
        status=ChargeStatus.SUCCEEDED,
        amount_minor=int(stuck.total_minor) + 1,
        currency="EUR",
    )
    # Order B was cancelled while the provider was down: its refund waits.
    cancelled = shipped_order(provider)  # placed while the provider was up
    provider.down = True
    refund_id = refund(cancelled.id, None)
    payment_jobs.deliver_refunds(provider, lease=LEASE)
    provider.down = False

    report = reconcile(provider)
    assert report.refunds_succeeded == [refund_id]  # B is served although A fails
    assert current(stuck.id).payment_unresolved  # A stays to be looked at again


@pytest.fixture
def refunds_sent_at_commit(provider: ScriptedProvider) -> Iterator[None]:
    """Wires the outbox's refund consumer to the provider, as the server does."""
    subscription = outbox.subscribe("refunds", payment_jobs.refund_sender(provider, lease=LEASE))
    yield
    outbox.unsubscribe(subscription)


@pytest.mark.usefixtures("refunds_sent_at_commit")
def test_a_charge_that_lands_on_a_failed_order_is_refunded_in_full(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    customer = new_customer()
    request = order_request("tok_visa")
    provider.down = True
    order = place(provider, customer, request, {product_id: 1})
    provider.down = False

    def order_fails_meanwhile() -> None:
        # As if its reservation expired while this retry's charge was on its way.
        assert order_payments.payment_failed(
            current(order.id),
            failure_code=orders.RESERVATION_EXPIRED,
            event_type="RESERVATION_EXPIRED",
            actor=orders.SYSTEM_ACTOR,
        )

    provider.before_next_charge = order_fails_meanwhile
    config = checkout.Checkout(gateway=provider, shipping_rules=RULES, tax_rates=RATES)
    with pytest.raises(FailedPrecondition) as refused:
        checkout.place_order(config, customer, request)
    assert refused.value.reason == "PAYMENT_NOT_COMPLETED"

    failed = current(order.id)
    assert failed.state == State.PAYMENT_FAILED
    assert failed.captured_minor == failed.refunded_minor == failed.total_minor
    [back] = refunds_of(order.id)
    assert (back.status, back.amount_minor) == (RefundStatus.SUCCEEDED, failed.total_minor)
    assert provider.sandbox.refunded_minor(str(failed.charge_id)) == failed.total_minor
    # The stock was released once and never sold.
    assert movements(order.id) == {(product_id, "RESERVATION"): 1, (product_id, "RELEASE"): 1}
    assert levels(product_id) == (5, 0)


def test_a_cart_awaiting_its_payment_is_not_checked_out_twice(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id, other_id = insert_product(on_hand=5), insert_product(on_hand=5)
    customer = new_customer()
    provider.lose_next_answers = 1  # charged, but the answer never arrives
    pending = place(provider, customer, order_request("tok_visa"), {product_id: 1})
    assert pending.state == State.PENDING_PAYMENT
    config = checkout.Checkout(gateway=provider, shipping_rules=RULES, tax_rates=RATES)

    # A double submit: the same cart under a new request_id.
    with pytest.raises(FailedPrecondition) as twice:
        checkout.place_order(config, customer, order_request("tok_visa"))
    assert (twice.value.reason, twice.value.metadata) == (
        "CHECKOUT_PENDING",
        {"order_id": pending.id},
    )
    assert len(provider.sandbox.list_charges()) == 1

    # Another cart is another order.
    carts.add(customer.subject, product_id=other_id, quantity=1)
    assert checkout.place_order(config, customer, order_request("tok_visa")).order.state == "PAID"
    # Once the first is settled (PAID: its units leave the cart), nothing is pending.
    assert reconcile(provider).paid == [pending.id]
    assert len(provider.sandbox.list_charges()) == 2


def test_a_retry_waits_for_the_orders_lock_before_its_new_attempt(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    """On PostgreSQL the reconciler settles an order under its lock; a retry's new attempt must
    wait for that lock, or the reconciler could fail an order whose new charge then succeeds."""
    if is_sqlite():
        pytest.skip("SQLite runs one write transaction at a time anyway")
    product_id = insert_product(on_hand=5)
    customer = new_customer()
    request = order_request("tok_visa")
    provider.down = True
    order = place(provider, customer, request, {product_id: 1})
    provider.down = False

    locked, release = threading.Event(), threading.Event()

    def hold_the_orders_lock() -> None:
        with db.connection_context(), database.atomic():
            lock_transaction_on(f"order:{order.id}")
            locked.set()
            assert release.wait(WAIT)

    holder = threading.Thread(target=hold_the_orders_lock)
    holder.start()
    assert locked.wait(WAIT)
    outcome: list[Order] = []

    def customer_retries() -> None:
        with db.connection_context():
            outcome.append(place(provider, customer, request))

    retry = threading.Thread(target=customer_retries)
    retry.start()
    try:
        # The retry queues on the order's advisory lock, its attempt not yet stamped.
        pause = threading.Event()  # never set: waits between polls, bounded by WAIT in all
        waiting = False
        for _ in range(int(WAIT / 0.05)):
            row = database.execute_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if row[0] >= 1:
                waiting = True
                break
            pause.wait(0.05)
        assert waiting
        assert current(order.id).charge_attempt_time == order.charge_attempt_time
    finally:
        release.set()
        holder.join(WAIT)
        retry.join(WAIT)
    assert outcome and outcome[0].state == State.PAID


def test_a_charge_the_provider_records_after_saying_none_is_refunded(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    customer = new_customer()
    provider.down = True
    order = place(provider, customer, order_request("tok_visa"), {product_id: 1})
    provider.down = False
    soon = later(AFTER.total_seconds() + 60)  # old enough to ask, well within the TTL
    # The provider has no charge yet: the order fails, its stock is released...
    assert reconcile(provider, now=soon).failed == [order.id]
    assert current(order.id).payment_failure_code == orders.NOT_COMPLETED
    assert levels(product_id) == (5, 0)
    # ...but "none" may mean "not yet": the charge is processed late.
    provider.sandbox.charge(
        idempotency_key=orders.payment_key(order.id),
        amount_minor=int(order.total_minor),
        currency="EUR",
        payment_method_token="tok_visa",
        description=f"storefront order {order.id}",
    )
    report = reconcile(provider, now=soon)
    assert report.late_charges_refunded == [order.id]
    assert provider.sandbox.refunded_minor(str(current(order.id).charge_id)) == order.total_minor


def test_a_failed_order_with_no_charge_is_resolved_once_its_ttl_is_over(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    product_id = insert_product(on_hand=5)
    provider.down = True
    order = place(provider, new_customer(), order_request("tok_visa"), {product_id: 1})
    provider.down = False
    soon = later(AFTER.total_seconds() + 60)
    reconcile(provider, now=soon)
    assert current(order.id).payment_unresolved  # asked again while a late charge may come
    reconcile(provider, now=soon)
    assert current(order.id).payment_unresolved
    reconcile(provider, now=later(TTL.total_seconds() + 60))
    assert not current(order.id).payment_unresolved


def test_a_refund_the_provider_rejects_as_a_request_is_failed(
    db: peewee.Database, provider: ScriptedProvider
) -> None:
    order = shipped_order(provider)
    refund(order.id, 300)
    provider.refuses_requests = True  # e.g. HTTP 400 for the refund itself
    report = payment_jobs.deliver_refunds(provider, lease=LEASE)
    [refused] = refunds_of(order.id)
    assert (report.refunds_failed, refused.status) == ([refused.id], RefundStatus.FAILED)
    assert current(order.id).refunded_minor == 0


# --- refunds never exceed the capture ------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(amounts=st.lists(st.one_of(st.none(), st.integers(min_value=1, max_value=6000)), max_size=8))
def test_a_sequence_of_refunds_never_exceeds_the_capture(
    db: peewee.Database, amounts: list[int | None]
) -> None:
    provider = ScriptedProvider()
    order = shipped_order(provider, on_hand=3, quantity=3)
    captured = int(order.captured_minor)
    owed = 0
    for amount in amounts:
        remaining = captured - owed
        try:
            refund(order.id, amount)
        except FailedPrecondition as exc:
            if remaining == 0:
                assert exc.reason == "ILLEGAL_TRANSITION"  # REFUNDED is final
            else:
                assert exc.reason == "REFUND_EXCEEDS_CAPTURED"
                assert amount is not None and amount > remaining
                assert exc.metadata == {"refundable_minor": str(remaining)}
        else:
            assert remaining > 0
            owed += remaining if amount is None else amount
        now = current(order.id)
        assert now.refunded_minor == owed <= captured
        assert sum(r.amount_minor for r in refunds_of(order.id)) == owed
        expected = State.REFUNDED if owed == captured else State.SHIPPED
        if 0 < owed < captured:
            expected = State.PARTIALLY_REFUNDED
        assert now.state == expected
    payment_jobs.deliver_refunds(provider, lease=LEASE, order_id=order.id)
    assert provider.sandbox.refunded_minor(str(order.charge_id)) == owed


def test_concurrent_refunds_never_exceed_the_capture(db: peewee.Database) -> None:
    provider = ScriptedProvider()
    order = shipped_order(provider, on_hand=3, quantity=3)
    captured = int(order.captured_minor)
    share = captured // 3 + 1  # three of these would be too much; two fit
    outcomes = run_concurrently(db, [lambda: refund(order.id, share)] * 6)
    made = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert len(made) == 2 and len(refused) == 4
    assert {e.reason for e in refused} == {"REFUND_EXCEEDS_CAPTURED"}
    after = current(order.id)
    assert (after.refunded_minor, after.state) == (2 * share, State.PARTIALLY_REFUNDED)
    assert sorted(r.id for r in refunds_of(order.id)) == sorted(made)


@pytest.fixture(autouse=True)
def _no_leftover_hooks(provider: ScriptedProvider) -> Iterator[None]:
    yield
    assert provider.during_next_lookup is None and provider.before_next_charge is None
