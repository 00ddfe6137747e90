"""Stock and idempotency rules on both engines, alone and under concurrency."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from functools import partial

import peewee
import pytest

from server.db import database, utcnow
from server.domain import idempotency, inventory
from server.domain.idempotency import DONE, IN_FLIGHT, KEY_TTL, STALE_CLAIM_AFTER
from server.domain.listing import PageRequest
from server.domain.page_tokens import PageTokenSigner
from server.errors import Aborted, DomainError, FailedPrecondition, InvalidArgument, NotFound
from server.models.idempotency_key import IdempotencyKey
from server.models.stock import StockLevel, StockMovement
from server.validation import Validator
from tests.conftest import insert_product

ACTOR = "staff-1"
PAGES = PageTokenSigner(b"s" * 32)


def levels(product_id: str) -> tuple[int, int]:
    level = StockLevel.get(StockLevel.product == product_id)
    return level.on_hand, level.reserved


def ledger(product_id: str) -> list[StockMovement]:
    return list(
        StockMovement.select().where(StockMovement.product == product_id).order_by(StockMovement.id)
    )


def assert_ledger_replays(product_id: str, start: tuple[int, int]) -> None:
    """Each entry's levels are the previous ones plus its deltas, ending at the current levels."""
    on_hand, reserved = start
    for movement in ledger(product_id):
        on_hand += movement.on_hand_delta
        reserved += movement.reserved_delta
        assert (movement.on_hand_after, movement.reserved_after) == (on_hand, reserved)
        assert on_hand >= reserved >= 0
    assert levels(product_id) == (on_hand, reserved)


def run_concurrently(
    db: peewee.Database, works: list[Callable[[], object]]
) -> list[object | DomainError]:
    """Runs each work in its own thread and connection, all released at once; returns outcomes
    in the order of `works`."""
    outcomes: list[object | DomainError] = [None] * len(works)
    barrier = threading.Barrier(len(works))

    def run(index: int) -> None:
        # The barrier comes before connecting: there may be more threads than pooled connections.
        barrier.wait()
        with db.connection_context():
            try:
                outcomes[index] = works[index]()
            except DomainError as exc:
                outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


# --- levels and adjustments -------------------------------------------------------------------


def test_adjust_changes_on_hand_and_records_the_entry(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=5, reserved=2)
    level, movement = inventory.adjust(
        product_id=product_id, delta=10, reason="  delivery 42 ", actor=ACTOR
    )
    assert (level.on_hand, level.reserved, inventory.available(level)) == (15, 2, 13)
    assert movement.kind == "ADJUSTMENT"
    assert (movement.on_hand_delta, movement.reserved_delta) == (10, 0)
    assert (movement.on_hand_after, movement.reserved_after) == (15, 2)
    assert (movement.reason, movement.actor, movement.reference) == ("delivery 42", ACTOR, None)
    assert inventory.get_level(product_id).on_hand == 15


def test_a_decrease_may_take_available_to_zero_but_not_below(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=10, reserved=4)
    with pytest.raises(FailedPrecondition) as caught:
        inventory.adjust(product_id=product_id, delta=-7, reason="breakage", actor=ACTOR)
    assert caught.value.reason == "INSUFFICIENT_STOCK"
    assert caught.value.metadata == {"product_id": product_id, "available": "6"}
    assert levels(product_id) == (10, 4)
    assert ledger(product_id) == []
    inventory.adjust(product_id=product_id, delta=-6, reason="breakage", actor=ACTOR)
    assert levels(product_id) == (4, 4)


@pytest.mark.parametrize(
    ("delta", "reason", "product_id", "fields"),
    [
        (0, "r", None, {"delta"}),
        (1_000_001, "r", None, {"delta"}),
        (-1_000_001, "r", None, {"delta"}),
        (1, "", None, {"reason"}),
        (1, "   ", None, {"reason"}),
        (1, "x" * 201, None, {"reason"}),
        (1, "bad\x00reason", None, {"reason"}),
        (1, "r", "not-a-uuid", {"product_id"}),
        (0, "", "", {"delta", "reason", "product_id"}),
    ],
)
def test_adjust_rejects_invalid_fields(
    db: peewee.Database, delta: int, reason: str, product_id: str | None, fields: set[str]
) -> None:
    real = insert_product(on_hand=1)
    with pytest.raises(InvalidArgument) as caught:
        inventory.adjust(
            product_id=real if product_id is None else product_id,
            delta=delta,
            reason=reason,
            actor=ACTOR,
        )
    assert {v.field for v in caught.value.violations} == fields
    assert levels(real) == (1, 0)


def test_the_delta_limits_are_inclusive(db: peewee.Database) -> None:
    product_id = insert_product()
    inventory.adjust(product_id=product_id, delta=1_000_000, reason="r", actor=ACTOR)
    inventory.adjust(product_id=product_id, delta=-1_000_000, reason="r", actor=ACTOR)
    assert levels(product_id) == (0, 0)


def test_unknown_products_are_not_found(db: peewee.Database) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(NotFound):
        inventory.adjust(product_id=unknown, delta=1, reason="r", actor=ACTOR)
    with pytest.raises(NotFound):
        inventory.get_level(unknown)
    with pytest.raises(NotFound):
        inventory.list_movements(PageRequest(PAGES), product_id=unknown)


def test_batch_get_keeps_the_order_asked_and_lists_the_missing(db: peewee.Database) -> None:
    a, b = insert_product(on_hand=1), insert_product(on_hand=2)
    missing = str(uuid.uuid4())
    found, not_found = inventory.batch_get_levels([b, missing, a, b])
    assert [level.product_id for level in found] == [b, a, b]
    assert not_found == [missing]


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        ([], "product_ids"),
        ([str(uuid.uuid4()) for _ in range(101)], "product_ids"),
        (["nope"], "product_ids[0]"),
        ([str(uuid.uuid4()), str(uuid.uuid4()).upper()], "product_ids[1]"),
    ],
)
def test_batch_get_rejects_bad_id_lists(db: peewee.Database, ids: list[str], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        inventory.batch_get_levels(ids)
    assert [v.field for v in caught.value.violations] == [field]


def test_batch_get_accepts_a_hundred_ids(db: peewee.Database) -> None:
    product_id = insert_product()
    found, missing = inventory.batch_get_levels([product_id] + [str(uuid.uuid4())] * 99)
    assert len(found) == 1 and len(missing) == 1


def test_movements_are_listed_newest_first_in_pages(db: peewee.Database) -> None:
    product_id = insert_product()
    other = insert_product()
    for delta in range(1, 6):
        inventory.adjust(product_id=product_id, delta=delta, reason=f"r{delta}", actor=ACTOR)
    inventory.adjust(product_id=other, delta=9, reason="other", actor=ACTOR)

    first = inventory.list_movements(PageRequest(PAGES, page_size=2), product_id=product_id)
    assert [m.on_hand_delta for m in first.items] == [5, 4]
    second = inventory.list_movements(
        PageRequest(PAGES, page_size=2, page_token=first.next_page_token), product_id=product_id
    )
    assert [m.on_hand_delta for m in second.items] == [3, 2]
    third = inventory.list_movements(
        PageRequest(PAGES, page_size=2, page_token=second.next_page_token), product_id=product_id
    )
    assert [m.on_hand_delta for m in third.items] == [1]
    assert third.next_page_token == ""
    # A token is bound to its product.
    with pytest.raises(InvalidArgument) as caught:
        inventory.list_movements(
            PageRequest(PAGES, page_size=2, page_token=first.next_page_token), product_id=other
        )
    assert [v.field for v in caught.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument):
        inventory.list_movements(PageRequest(PAGES, page_size=-1), product_id=product_id)


def test_fifty_concurrent_adjustments_end_at_the_exact_totals(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=10, reserved=3)
    # Increases total 25 and decreases 75 against 7 available: at least 14 decreases must fail,
    # whatever the order.
    deltas = [+1, -3] * 25
    outcomes = run_concurrently(
        db,
        [
            partial(inventory.adjust, product_id=product_id, delta=d, reason="r", actor=ACTOR)
            for d in deltas
        ],
    )
    applied = [d for d, o in zip(deltas, outcomes, strict=True) if not isinstance(o, DomainError)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert all(isinstance(o, FailedPrecondition) for o in refused)
    assert all(o.reason == "INSUFFICIENT_STOCK" for o in refused)
    assert len(refused) >= 14
    assert all(d < 0 for d, o in zip(deltas, outcomes, strict=True) if isinstance(o, DomainError))
    assert levels(product_id) == (10 + sum(applied), 3)
    entries = ledger(product_id)
    assert len(entries) == len(applied)
    assert sum(m.on_hand_delta for m in entries) == sum(applied)
    assert_ledger_replays(product_id, (10, 3))


# --- reservations, releases, sales, restocks ----------------------------------------------------


def test_reserve_release_sell_and_restock_keep_the_arithmetic_and_the_ledger(
    db: peewee.Database,
) -> None:
    a, b = insert_product(on_hand=10), insert_product(on_hand=5)
    reserved = inventory.reserve([(a, 4), (b, 2)], reference="order-1", actor="checkout")
    assert {(m.product_id, m.kind, m.reserved_delta) for m in reserved} == {
        (a, "RESERVATION", 4),
        (b, "RESERVATION", 2),
    }
    assert (levels(a), levels(b)) == ((10, 4), (5, 2))

    inventory.release([(a, 1)], reference="order-1", actor="checkout")
    assert levels(a) == (10, 3)
    inventory.commit_sale([(a, 3), (b, 2)], reference="order-1", actor="checkout")
    assert (levels(a), levels(b)) == ((7, 0), (3, 0))
    inventory.restock([(a, 2)], reference="order-1", actor="system", reason="refund 7")
    assert levels(a) == (9, 0)

    entries = ledger(a)
    assert [(m.kind, m.on_hand_delta, m.reserved_delta) for m in entries] == [
        ("RESERVATION", 0, 4),
        ("RELEASE", 0, -1),
        ("SALE", -3, -3),
        ("RESTOCK", 2, 0),
    ]
    assert {m.reference for m in entries} == {"order-1"}
    assert entries[-1].reason == "refund 7" and entries[-1].actor == "system"
    assert entries[0].reason and entries[0].actor == "checkout"
    assert_ledger_replays(a, (10, 0))
    assert_ledger_replays(b, (5, 0))


def test_reserve_is_all_or_nothing_and_names_every_short_product(db: peewee.Database) -> None:
    plenty, short, archived = (
        insert_product(on_hand=5),
        insert_product(on_hand=3, reserved=2),
        insert_product(on_hand=9, state="ARCHIVED"),
    )
    missing = str(uuid.uuid4())
    with pytest.raises(FailedPrecondition) as caught:
        inventory.reserve(
            [(plenty, 2), (short, 2), (archived, 1), (missing, 1)],
            reference="order-2",
            actor="checkout",
        )
    assert caught.value.reason == "OUT_OF_STOCK"
    assert set(caught.value.metadata["product_ids"].split(",")) == {short, archived, missing}
    assert (levels(plenty), levels(short), levels(archived)) == ((5, 0), (3, 2), (9, 0))
    assert StockMovement.select().count() == 0


def test_reserve_merges_lines_of_one_product(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=3)
    with pytest.raises(FailedPrecondition):
        inventory.reserve([(product_id, 2), (product_id, 2)], reference="o", actor="checkout")
    [movement] = inventory.reserve(
        [(product_id, 1), (product_id, 2)], reference="o", actor="checkout"
    )
    assert (movement.reserved_delta, movement.reserved_after) == (3, 3)


def test_releasing_or_selling_more_than_is_reserved_changes_nothing(db: peewee.Database) -> None:
    a, b = insert_product(on_hand=5, reserved=2), insert_product(on_hand=5, reserved=5)
    for operation in (inventory.release, inventory.commit_sale):
        with pytest.raises(FailedPrecondition) as caught:
            operation([(a, 3), (b, 1)], reference="o", actor="checkout")
        assert caught.value.reason == "RESERVATION_NOT_HELD"
        assert caught.value.metadata == {"product_ids": a}
    assert (levels(a), levels(b)) == ((5, 2), (5, 5))


def test_restocking_an_unknown_product_is_not_found_and_changes_nothing(
    db: peewee.Database,
) -> None:
    known, unknown = insert_product(on_hand=1), str(uuid.uuid4())
    with pytest.raises(NotFound) as caught:
        inventory.restock([(known, 1), (unknown, 1)], reference="o", actor="system")
    assert caught.value.metadata == {"product_ids": unknown}
    assert levels(known) == (1, 0)


@pytest.mark.parametrize(
    ("lines", "reference", "fields"),
    [
        ([], "o", {"lines"}),
        ([("x", 1)], "o", {"lines[0].product_id"}),
        ([("x", 0)], "o", {"lines[0].product_id", "lines[0].quantity"}),
        ([(None, -1)], "o", {"lines[0].quantity"}),
        ([(None, 1_000_001)], "o", {"lines[0].quantity"}),
        ([(None, 1)], "", {"reference"}),
        ([(None, 1)], "r" * 65, {"reference"}),
        ([(None, 1)] * 101, "o", {"lines"}),
    ],
)
def test_line_operations_reject_invalid_input(
    db: peewee.Database, lines: list[tuple[str | None, int]], reference: str, fields: set[str]
) -> None:
    product_id = insert_product(on_hand=5)
    concrete = [(product_id if pid is None else pid, q) for pid, q in lines]
    with pytest.raises(InvalidArgument) as caught:
        inventory.reserve(concrete, reference=reference, actor="checkout")
    assert {v.field for v in caught.value.violations} == fields


def test_thirty_concurrent_reservations_of_ten_units_never_oversell(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=10)
    outcomes = run_concurrently(
        db,
        [
            partial(inventory.reserve, [(product_id, 1)], reference=f"o{i}", actor="checkout")
            for i in range(30)
        ],
    )
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert len(refused) == 20
    assert all(isinstance(o, FailedPrecondition) and o.reason == "OUT_OF_STOCK" for o in refused)
    assert levels(product_id) == (10, 10)
    assert len(ledger(product_id)) == 10
    assert_ledger_replays(product_id, (10, 0))


def test_reservations_listing_products_in_opposite_orders_do_not_deadlock(
    db: peewee.Database,
) -> None:
    a, b = insert_product(on_hand=100), insert_product(on_hand=100)
    orders = [[(a, 1), (b, 1)], [(b, 1), (a, 1)]] * 10
    outcomes = run_concurrently(
        db,
        [partial(inventory.reserve, lines, reference="o", actor="checkout") for lines in orders],
    )
    assert not [o for o in outcomes if isinstance(o, DomainError)]
    assert (levels(a), levels(b)) == ((100, 20), (100, 20))


def test_concurrent_sales_adjustments_and_reservations_keep_the_ledger_exact(
    db: peewee.Database,
) -> None:
    product_id = insert_product(on_hand=20, reserved=10)
    works: list[Callable[[], object]] = []
    for i in range(10):
        works.append(
            partial(inventory.commit_sale, [(product_id, 1)], reference=f"s{i}", actor="c")
        )
        works.append(partial(inventory.reserve, [(product_id, 2)], reference=f"r{i}", actor="c"))
        works.append(
            partial(inventory.adjust, product_id=product_id, delta=-2, reason="r", actor=ACTOR)
        )
    run_concurrently(db, works)
    assert_ledger_replays(product_id, (20, 10))


# --- idempotency --------------------------------------------------------------------------------


def new_key() -> str:
    return str(uuid.uuid4())


def once(
    key: str,
    execute: Callable[[], bytes],
    *,
    principal: str = "p1",
    operation: str = "/op",
    fingerprint: bytes = b"f",
) -> bytes:
    """Calls run_once with defaults for what a test does not vary."""
    return idempotency.run_once(
        principal=principal,
        key=key,
        operation=operation,
        request_fingerprint=fingerprint,
        execute=execute,
    )


def test_a_retry_gets_the_first_response_without_running_again(db: peewee.Database) -> None:
    key, calls = new_key(), []

    def execute() -> bytes:
        calls.append(1)
        return f"response {len(calls)}".encode()

    assert once(key, execute) == b"response 1"
    assert once(key, execute) == b"response 1"
    assert len(calls) == 1
    stored = IdempotencyKey.get()
    assert stored.state == DONE
    assert stored.expire_time - stored.create_time == KEY_TTL


def test_upper_case_keys_are_the_same_key(db: peewee.Database) -> None:
    key = new_key()
    assert once(key, lambda: b"first") == b"first"
    assert once(key.upper(), lambda: b"second") == b"first"


def test_twenty_concurrent_calls_with_one_key_run_once(db: peewee.Database) -> None:
    product_id = insert_product()
    key = new_key()
    calls: list[int] = []

    def execute() -> bytes:
        calls.append(1)
        level, _ = inventory.adjust(product_id=product_id, delta=1, reason="r", actor=ACTOR)
        return str(level.on_hand).encode()

    def call() -> bytes:
        return once(key, execute)

    outcomes = run_concurrently(db, [call] * 20)
    assert len(calls) == 1
    assert levels(product_id) == (1, 0)
    for outcome in outcomes:
        if isinstance(outcome, DomainError):
            assert isinstance(outcome, Aborted) and outcome.reason == "REQUEST_IN_FLIGHT"
        else:
            assert outcome == b"1"
    assert b"1" in outcomes
    assert call() == b"1"


def test_the_same_key_for_a_different_request_is_refused(db: peewee.Database) -> None:
    key = new_key()
    once(key, lambda: b"a", fingerprint=b"a")
    for operation, fingerprint in [("/op", b"b"), ("/other", b"a")]:
        with pytest.raises(FailedPrecondition) as caught:
            once(key, lambda: b"b", operation=operation, fingerprint=fingerprint)
        assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"


def test_principals_have_separate_keys(db: peewee.Database) -> None:
    key = new_key()
    assert once(key, lambda: b"one", principal="p1") == b"one"
    assert once(key, lambda: b"two", principal="p2") == b"two"
    assert once(key, lambda: b"x", principal="p1") == b"one"


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument("bad"),
        FailedPrecondition("short", reason="INSUFFICIENT_STOCK"),
        NotFound("gone"),
        RuntimeError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failed_call_stores_nothing_and_undoes_its_writes(
    db: peewee.Database, error: Exception
) -> None:
    product_id = insert_product()
    key = new_key()

    def failing() -> bytes:
        inventory.adjust(product_id=product_id, delta=5, reason="r", actor=ACTOR)
        raise error

    with pytest.raises(type(error)):
        once(key, failing)
    assert IdempotencyKey.select().count() == 0
    assert levels(product_id) == (0, 0) and ledger(product_id) == []
    # The retry runs for real.
    assert once(key, lambda: b"ok") == b"ok"


def test_invalid_keys_and_fields_are_refused_together_before_anything_is_claimed(
    db: peewee.Database,
) -> None:
    def validate(v: Validator) -> None:
        v.add("delta", "must not be zero")

    with pytest.raises(InvalidArgument) as caught:
        idempotency.run_once(
            principal="p1",
            key="not-a-uuid",
            operation="/op",
            request_fingerprint=b"f",
            execute=lambda: b"",
            validate=validate,
        )
    assert {v.field for v in caught.value.violations} == {"request_id", "delta"}
    assert IdempotencyKey.select().count() == 0


def _store_key(
    key: str, *, state: str, digest_of: bytes = b"f", claimed: dt.timedelta, response: bytes = b""
) -> None:
    create_time = utcnow() - claimed
    IdempotencyKey.create(
        principal="p1",
        key=key,
        operation="/op",
        request_hash=idempotency.request_hash("/op", digest_of),
        state=state,
        response=response if state == DONE else None,
        create_time=create_time,
        expire_time=create_time + KEY_TTL,
    )


def test_a_call_in_flight_makes_a_duplicate_abort(db: peewee.Database) -> None:
    key = new_key()
    _store_key(key, state=IN_FLIGHT, claimed=dt.timedelta(seconds=1))
    with pytest.raises(Aborted) as caught:
        once(key, lambda: b"x")
    assert caught.value.reason == "REQUEST_IN_FLIGHT"
    with pytest.raises(FailedPrecondition):
        once(key, lambda: b"x", fingerprint=b"other")


def test_a_stale_claim_and_an_expired_key_are_taken_over(db: peewee.Database) -> None:
    stale, expired = new_key(), new_key()
    _store_key(stale, state=IN_FLIGHT, claimed=STALE_CLAIM_AFTER + dt.timedelta(seconds=1))
    _store_key(expired, state=DONE, claimed=KEY_TTL, digest_of=b"old", response=b"old")
    assert once(stale, lambda: b"new") == b"new"
    assert once(expired, lambda: b"new") == b"new"
    assert once(expired, lambda: b"newer") == b"new"


def test_a_call_whose_claim_was_taken_over_rolls_back(db: peewee.Database) -> None:
    product_id = insert_product()
    key = new_key()

    def overtaken() -> bytes:
        inventory.adjust(product_id=product_id, delta=5, reason="r", actor=ACTOR)
        # What a second call taking over the stale claim would do.
        IdempotencyKey.update(create_time=utcnow() + dt.timedelta(seconds=1)).execute()
        return b"late"

    with pytest.raises(Aborted):
        once(key, overtaken)
    assert levels(product_id) == (0, 0)


def test_expired_keys_are_purged(db: peewee.Database) -> None:
    old, young = new_key(), new_key()
    _store_key(old, state=DONE, claimed=KEY_TTL + dt.timedelta(minutes=1))
    _store_key(young, state=DONE, claimed=KEY_TTL - dt.timedelta(minutes=1))
    assert idempotency.purge_expired(utcnow()) == 1
    assert [k.key for k in IdempotencyKey.select()] == [young]


def test_run_once_refuses_to_run_inside_a_transaction(db: peewee.Database) -> None:
    # Its claim must commit before execute runs, or a duplicate could not see it in flight.
    with database.atomic(), pytest.raises(RuntimeError):
        once(new_key(), lambda: b"x")
