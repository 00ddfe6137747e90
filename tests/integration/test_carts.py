"""Cart rules on both engines: limits, ownership, current prices, and concurrent adds."""

from __future__ import annotations

import uuid
from functools import partial

import peewee
import pytest

from server.db import database
from server.domain import carts
from server.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from server.models.cart import CartLine
from server.models.product import Product
from tests.conftest import insert_product
from tests.integration.test_inventory import run_concurrently

ALICE = "user-alice"
BOB = "user-bob"


def violations(exc: InvalidArgument) -> set[str]:
    return {v.field for v in exc.violations}


def test_a_new_customer_has_an_empty_cart(db: peewee.Database) -> None:
    cart = carts.get(ALICE)
    assert (cart.lines, cart.subtotals, cart.total_quantity, cart.update_time) == ([], [], 0, None)


def test_add_creates_a_line_then_adds_to_it(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=5)
    cart, line_id = carts.add(ALICE, product_id=product_id, quantity=2)
    again, same_id = carts.add(ALICE, product_id=product_id, quantity=3)
    assert same_id == line_id
    [line] = again.lines
    assert (line.id, line.product_id, line.quantity) == (line_id, product_id, 5)
    assert (line.currency_code, line.unit_price_minor, line.line_total_minor) == ("EUR", 1000, 5000)
    assert (line.available, line.in_stock, line.product_state) == (5, True, "ACTIVE")
    assert again.subtotals == [("EUR", 5000)]
    assert again.total_quantity == 5
    assert again.update_time is not None
    assert cart.lines[0].quantity == 2


def test_in_stock_compares_available_with_the_quantity(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=5, reserved=3)
    cart, _ = carts.add(ALICE, product_id=product_id, quantity=3)
    assert (cart.lines[0].available, cart.lines[0].in_stock) == (2, False)


def test_the_cart_shows_current_product_details(db: peewee.Database) -> None:
    product_id = insert_product(on_hand=1)
    carts.add(ALICE, product_id=product_id, quantity=2)
    Product.update(name="Gadget", price_minor=1250, price_currency="USD").where(
        Product.id == product_id
    ).execute()
    [line] = carts.get(ALICE).lines
    assert (line.name, line.currency_code, line.unit_price_minor) == ("Gadget", "USD", 1250)
    assert carts.get(ALICE).subtotals == [("USD", 2500)]


def test_subtotals_are_per_currency(db: peewee.Database) -> None:
    eur = insert_product()
    usd = insert_product()
    Product.update(price_currency="USD", price_minor=300).where(Product.id == usd).execute()
    carts.add(ALICE, product_id=eur, quantity=2)
    carts.add(ALICE, product_id=usd, quantity=3)
    assert carts.get(ALICE).subtotals == [("EUR", 2000), ("USD", 900)]


@pytest.mark.parametrize("quantity", [0, -1, 100])
def test_add_refuses_quantities_outside_1_to_99(db: peewee.Database, quantity: int) -> None:
    product_id = insert_product()
    with pytest.raises(InvalidArgument) as caught:
        carts.add(ALICE, product_id=product_id, quantity=quantity)
    assert violations(caught.value) == {"quantity"}


def test_add_refuses_a_malformed_product_id(db: peewee.Database) -> None:
    with pytest.raises(InvalidArgument) as caught:
        carts.add(ALICE, product_id="nope", quantity=1)
    assert violations(caught.value) == {"product_id"}


def test_add_unknown_product_is_not_found(db: peewee.Database) -> None:
    with pytest.raises(NotFound) as caught:
        carts.add(ALICE, product_id=str(uuid.uuid4()), quantity=1)
    assert caught.value.reason == "PRODUCT_NOT_FOUND"


def test_add_archived_product_is_refused(db: peewee.Database) -> None:
    product_id = insert_product(state="ARCHIVED")
    with pytest.raises(FailedPrecondition) as caught:
        carts.add(ALICE, product_id=product_id, quantity=1)
    assert caught.value.reason == "PRODUCT_ARCHIVED"
    assert carts.get(ALICE).lines == []


def test_a_line_holds_at_most_99_units(db: peewee.Database) -> None:
    product_id = insert_product()
    carts.add(ALICE, product_id=product_id, quantity=99)
    with pytest.raises(FailedPrecondition) as caught:
        carts.add(ALICE, product_id=product_id, quantity=1)
    assert caught.value.reason == "LINE_QUANTITY_EXCEEDED"
    assert carts.get(ALICE).lines[0].quantity == 99


def test_a_cart_holds_at_most_100_lines(db: peewee.Database) -> None:
    products = [insert_product() for _ in range(carts.MAX_LINES + 1)]
    for product_id in products[:-1]:
        carts.add(ALICE, product_id=product_id, quantity=1)
    with pytest.raises(FailedPrecondition) as caught:
        carts.add(ALICE, product_id=products[-1], quantity=1)
    assert caught.value.reason == "CART_FULL"
    # Adding to an existing line of a full cart still works; another customer is unaffected.
    assert carts.add(ALICE, product_id=products[0], quantity=1)[0].lines[0].quantity == 2
    assert len(carts.add(BOB, product_id=products[-1], quantity=1)[0].lines) == 1
    assert len(carts.get(ALICE).lines) == carts.MAX_LINES


def test_update_sets_the_quantity_and_zero_removes(db: peewee.Database) -> None:
    product_id = insert_product()
    _, line_id = carts.add(ALICE, product_id=product_id, quantity=2)
    assert carts.update(ALICE, line_id=line_id, quantity=7).lines[0].quantity == 7
    assert carts.update(ALICE, line_id=line_id, quantity=0).lines == []
    with pytest.raises(NotFound):
        carts.update(ALICE, line_id=line_id, quantity=1)


@pytest.mark.parametrize(
    ("line_id", "quantity", "fields"),
    [
        ("", 1, {"line_id"}),
        ("x", 1, {"line_id"}),
        (str(uuid.uuid4()), -1, {"quantity"}),
        (str(uuid.uuid4()), 100, {"quantity"}),
    ],
)
def test_update_validates(
    db: peewee.Database, line_id: str, quantity: int, fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        carts.update(ALICE, line_id=line_id, quantity=quantity)
    assert violations(caught.value) == fields


def test_an_archived_products_line_may_shrink_but_not_grow(db: peewee.Database) -> None:
    product_id = insert_product()
    _, line_id = carts.add(ALICE, product_id=product_id, quantity=5)
    Product.update(state="ARCHIVED").where(Product.id == product_id).execute()
    [line] = carts.get(ALICE).lines
    assert (line.product_state, line.in_stock) == ("ARCHIVED", False)
    with pytest.raises(FailedPrecondition) as caught:
        carts.update(ALICE, line_id=line_id, quantity=6)
    assert caught.value.reason == "PRODUCT_ARCHIVED"
    assert carts.update(ALICE, line_id=line_id, quantity=3).lines[0].quantity == 3


def test_another_customers_line_is_not_found_like_a_missing_one(db: peewee.Database) -> None:
    product_id = insert_product()
    _, line_id = carts.add(ALICE, product_id=product_id, quantity=2)
    missing = str(uuid.uuid4())
    for call in (
        partial(carts.update, BOB, line_id=line_id, quantity=1),
        partial(carts.update, BOB, line_id=line_id, quantity=0),
        partial(carts.remove, BOB, line_id=line_id),
    ):
        with pytest.raises(NotFound) as foreign:
            call()
        with pytest.raises(NotFound) as absent:
            carts.remove(BOB, line_id=missing)
        assert (foreign.value.message, foreign.value.reason, foreign.value.metadata) == (
            absent.value.message,
            absent.value.reason,
            absent.value.metadata,
        )
    carts.empty(BOB)
    assert carts.get(ALICE).lines[0].quantity == 2
    assert carts.get(BOB).lines == []


def test_remove_and_empty(db: peewee.Database) -> None:
    first, second = insert_product(), insert_product()
    _, line_id = carts.add(ALICE, product_id=first, quantity=1)
    carts.add(ALICE, product_id=second, quantity=1)
    assert [line.product_id for line in carts.remove(ALICE, line_id=line_id).lines] == [second]
    with pytest.raises(NotFound):
        carts.remove(ALICE, line_id=line_id)
    assert carts.empty(ALICE).lines == []
    assert carts.empty(ALICE).lines == []


def test_lines_of_a_deleted_product_go_with_it(db: peewee.Database) -> None:
    product_id = insert_product()
    carts.add(ALICE, product_id=product_id, quantity=1)
    with database.atomic():
        Product.delete().where(Product.id == product_id).execute()
    assert carts.get(ALICE).lines == []


def test_the_database_refuses_a_second_line_for_one_product(db: peewee.Database) -> None:
    product_id = insert_product()
    _, line_id = carts.add(ALICE, product_id=product_id, quantity=1)
    with pytest.raises(peewee.IntegrityError), database.atomic():
        CartLine.insert(id=str(uuid.uuid4()), cart=ALICE, product=product_id, quantity=1).execute()
    with pytest.raises(peewee.IntegrityError), database.atomic():
        CartLine.update(quantity=100).where(CartLine.id == line_id).execute()


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_adds_of_one_product_make_one_line_capped_at_99(db: peewee.Database) -> None:
    product_id = insert_product()
    outcomes = run_concurrently(
        db, [partial(carts.add, ALICE, product_id=product_id, quantity=15) for _ in range(10)]
    )
    failures = [o for o in outcomes if isinstance(o, DomainError)]
    # 6 adds of 15 fit in 99 units; the other 4 are refused whole.
    assert len(failures) == 4
    assert {(type(f), f.reason) for f in failures} == {
        (FailedPrecondition, "LINE_QUANTITY_EXCEEDED")
    }
    [line] = carts.get(ALICE).lines
    assert line.quantity == 90
    assert CartLine.select().count() == 1


def test_concurrent_small_adds_sum_exactly(db: peewee.Database) -> None:
    product_id = insert_product()
    outcomes = run_concurrently(
        db, [partial(carts.add, ALICE, product_id=product_id, quantity=3) for _ in range(10)]
    )
    assert not any(isinstance(o, DomainError) for o in outcomes)
    assert [line.quantity for line in carts.get(ALICE).lines] == [30]


def test_concurrent_adds_never_make_a_101st_line(db: peewee.Database) -> None:
    products = [insert_product() for _ in range(carts.MAX_LINES + 5)]
    for product_id in products[: carts.MAX_LINES - 5]:
        carts.add(ALICE, product_id=product_id, quantity=1)
    outcomes = run_concurrently(
        db,
        [
            partial(carts.add, ALICE, product_id=product_id, quantity=1)
            for product_id in products[carts.MAX_LINES - 5 :]
        ],
    )
    failures = [o for o in outcomes if isinstance(o, DomainError)]
    assert len(failures) == 5
    assert {f.reason for f in failures} == {"CART_FULL"}
    assert CartLine.select().where(CartLine.cart == ALICE).count() == carts.MAX_LINES
