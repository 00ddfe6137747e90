"""The outbox: events in the change's transaction, numbered per aggregate, seen after commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import peewee
import pytest
from prometheus_client import CollectorRegistry

from server.db import database
from server.domain import (
    idempotency,
    order_actions,
    orders,
    outbox,
    product_cache,
    product_fields,
    products,
)
from server.domain.commands import RequestKey
from server.domain.principal import Principal, Role
from server.domain.product_cache import ProductCache
from server.errors import Aborted
from server.models.order import OrderEvent
from server.models.outbox_event import OutboxEvent
from server.payments import SandboxGateway
from tests.conftest import insert_product
from tests.integration.test_inventory import run_concurrently
from tests.integration.test_payment_jobs import new_customer, order_request, place

STAFF = Principal("staff-1", Role.STAFF, "token-staff")


@pytest.fixture
def seen() -> Iterator[list[outbox.Event]]:
    """The events the in-process consumers are handed, in order."""
    events: list[outbox.Event] = []
    subscription = outbox.subscribe("test-recorder", events.append)
    yield events
    outbox.unsubscribe(subscription)


def paid_order() -> str:
    product_id = insert_product(on_hand=5)
    order = place(SandboxGateway(), new_customer(), order_request("tok_visa"), {product_id: 1})  # type: ignore[arg-type]
    assert order.state == orders.State.PAID
    return str(order.id)


def stored(aggregate_type: str, aggregate_id: str) -> list[tuple[int, str]]:
    return [(e.sequence, e.type) for e in outbox.events_of(aggregate_type, aggregate_id)]


def test_emit_refuses_to_run_outside_a_transaction(db: peewee.Database) -> None:
    with pytest.raises(RuntimeError, match="transaction"):
        outbox.emit(outbox.ORDER, "o-1", "order.test", {})
    assert OutboxEvent.select().count() == 0


def test_every_order_state_change_has_its_event_in_order(
    db: peewee.Database, seen: list[outbox.Event]
) -> None:
    order_id = paid_order()
    order_actions.ship(STAFF, order_id=order_id, carrier="DHL", tracking_number="JJD1")
    order_actions.deliver(STAFF, order_id=order_id)
    order_actions.refund(STAFF, order_id=order_id, amount_minor=100, currency="EUR", reason="dent")

    history = [
        e.type
        for e in OrderEvent.select().where(OrderEvent.order == order_id).order_by(OrderEvent.id)
    ]
    assert stored(outbox.ORDER, order_id) == [
        (number, orders.outbox_event_type(kind)) for number, kind in enumerate(history, start=1)
    ]
    assert [t for _, t in stored(outbox.ORDER, order_id)] == [
        "order.placed",
        "order.payment_captured",
        "order.shipped",
        "order.delivered",
        "order.refund_requested",
    ]
    mine = [e for e in seen if e.aggregate_id == order_id]
    assert [e.sequence for e in mine] == [1, 2, 3, 4, 5]
    shipped = mine[2]
    assert shipped.payload["from_state"] == "PAID" and shipped.payload["to_state"] == "SHIPPED"
    assert shipped.payload["currency"] == "EUR"


def test_every_product_change_has_its_event(db: peewee.Database, seen: list[outbox.Event]) -> None:
    created = products.create(
        product_fields.ProductFields(
            sku="OUT-1", name="Mug", price_currency="EUR", price_minor=900
        ),
        actor=STAFF,
    )
    updated = products.update(
        product_id=created.id,
        fields=product_fields.ProductFields(name="Big mug"),
        paths=["name"],
        expected_etag="",
        actor=STAFF,
    )
    products.archive(product_id=created.id, expected_etag=product_fields.etag(updated), actor=STAFF)
    products.restore(product_id=created.id, expected_etag="", actor=STAFF)
    products.import_rows(
        [
            product_fields.ProductFields(
                sku="OUT-1", name="Bigger mug", price_currency="EUR", price_minor=900
            )
        ],
        actor=STAFF,
    )
    assert [t for _, t in stored(outbox.PRODUCT, created.id)] == [
        "product.created",
        "product.updated",
        "product.archived",
        "product.restored",
        "product.updated",
    ]
    assert [e.type for e in seen if e.aggregate_id == created.id][-1] == "product.updated"


def test_a_committed_product_change_drops_it_from_the_cache(db: peewee.Database) -> None:
    subscription = outbox.subscribe("product-cache", product_cache.on_committed)
    try:
        cache = ProductCache(CollectorRegistry())
        product_id = insert_product()
        assert products.get_or_raise(product_id, cache=cache).name == "Widget"
        products.update(
            product_id=product_id,
            fields=product_fields.ProductFields(name="Gadget"),
            paths=["name"],
            expected_etag="",
            actor=STAFF,
        )
        assert products.get_or_raise(product_id, cache=cache).name == "Gadget"
    finally:
        outbox.unsubscribe(subscription)


def test_a_failure_after_the_change_leaves_neither_the_change_nor_its_event(
    db: peewee.Database, seen: list[outbox.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = paid_order()
    before = stored(outbox.ORDER, order_id)
    seen.clear()

    def taken_over(claim: idempotency.Claim, response: bytes) -> None:
        raise Aborted("taken over", reason="REQUEST_IN_FLIGHT")

    # Fails after ship() made its change, inside the same transaction (storing the response).
    monkeypatch.setattr(idempotency, "complete", taken_over)
    with pytest.raises(Aborted):
        order_actions.ship_order(
            STAFF,
            order_actions.ShipOrder(
                RequestKey(str(uuid.uuid4()), b"ship"), order_id, "DHL", "JJD1"
            ),
        )
    assert orders.get(STAFF, order_id).order.state == orders.State.PAID
    assert stored(outbox.ORDER, order_id) == before
    assert not OrderEvent.select().where(OrderEvent.type == "ORDER_SHIPPED").exists()
    assert seen == []  # consumers only ever see committed events


def test_a_rolled_back_transaction_hands_nothing_to_the_consumers(
    db: peewee.Database, seen: list[outbox.Event]
) -> None:
    with pytest.raises(ZeroDivisionError), database.atomic():
        outbox.emit(outbox.ORDER, "o-rolled-back", "order.test", {"n": 1})
        _ = 1 / 0
    assert stored(outbox.ORDER, "o-rolled-back") == []
    assert seen == []


def test_sequence_numbers_have_no_gaps_under_concurrency(db: peewee.Database) -> None:
    def emit_one(n: int) -> outbox.Event:
        with database.atomic():
            return outbox.emit(outbox.ORDER, "o-busy", "order.test", {"n": n})

    outcomes = run_concurrently(db, [lambda n=n: emit_one(n) for n in range(24)])  # type: ignore[misc]
    assert all(isinstance(o, outbox.Event) for o in outcomes)
    assert [n for n, _ in stored(outbox.ORDER, "o-busy")] == list(range(1, 25))


def test_concurrent_refunds_of_one_order_number_their_events_without_gaps(
    db: peewee.Database,
) -> None:
    order_id = paid_order()
    order_actions.ship(STAFF, order_id=order_id, carrier="DHL", tracking_number="JJD1")
    refunds = [
        lambda: order_actions.refund(
            STAFF, order_id=order_id, amount_minor=1, currency="EUR", reason="goodwill"
        )
        for _ in range(8)
    ]
    outcomes = run_concurrently(db, refunds)  # type: ignore[arg-type]
    assert all(isinstance(o, str) for o in outcomes)
    numbers = [n for n, _ in stored(outbox.ORDER, order_id)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) == 3 + 8  # placed, captured, shipped, then one per refund
