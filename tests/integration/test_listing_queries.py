"""Keyset pagination and filters against real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain import listing
from server.domain.list_filter import FieldKind, FilterField
from server.domain.listing import ListSpec, PageRequest
from server.domain.page_tokens import PageTokenSigner
from server.errors import InvalidArgument

PAGES = PageTokenSigner(b"integration-test-page-token-secret")
BASE_TIME = dt.datetime(2026, 3, 1, 12, 0, 0)
ID_NAMESPACE = uuid.UUID("6f1d3c1e-7d0a-4c1b-9a57-3f3e2b8c9d10")


class Widget(peewee.Model):
    """A throwaway model, bound to the test database only while a test runs."""

    id = peewee.CharField(max_length=36, primary_key=True)
    name = peewee.CharField(max_length=20)
    kind = peewee.CharField(max_length=10)
    price = peewee.IntegerField()
    created = peewee.DateTimeField()
    active = peewee.BooleanField()
    weight = peewee.IntegerField(null=True)

    class Meta:
        table_name = "listing_test_widgets"


SPEC = ListSpec(
    name="widgets",
    model=Widget,
    filter_fields={
        "name": FilterField(Widget.name, FieldKind.STRING),
        "kind": FilterField(
            Widget.kind,
            FieldKind.ENUM,
            enum_values={"KIND_GADGET": "gadget", "KIND_GIZMO": "gizmo"},
        ),
        "price": FilterField(Widget.price, FieldKind.INT),
        "created": FilterField(Widget.created, FieldKind.TIMESTAMP),
        "active": FilterField(Widget.active, FieldKind.BOOL),
        "weight": FilterField(Widget.weight, FieldKind.INT),
    },
    order_fields={
        "name": Widget.name,
        "price": Widget.price,
        "created": Widget.created,
        "active": Widget.active,
        "weight": Widget.weight,
    },
    default_order="created desc",
)

ORDER_FIELDS = list(SPEC.order_fields)


@pytest.fixture
def widgets(db: peewee.Database) -> Iterator[peewee.Database]:
    """The Widget table, created on the test database and dropped afterwards."""
    with Widget.bind_ctx(db):
        db.create_tables([Widget])
        try:
            yield db
        finally:
            db.drop_tables([Widget])


def make_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Returns rows with many duplicate sort values, some NULL weights and sub-second times."""
    return [
        {
            "id": str(uuid.uuid5(ID_NAMESPACE, f"{rng.random()}-{i}")),
            "name": rng.choice(["a", "b", "bb", "c"]),
            "kind": rng.choice(["gadget", "gizmo"]),
            "price": rng.randint(-2, 4),
            "created": BASE_TIME
            + dt.timedelta(seconds=rng.randint(0, 3), microseconds=rng.choice([0, 5])),
            "active": rng.random() < 0.5,
            "weight": rng.choice([None, 1, 2]),
        }
        for i in range(count)
    ]


def insert(rows: list[dict[str, Any]]) -> None:
    Widget.delete().execute()
    if rows:
        Widget.insert_many(rows).execute()


def sort_key(value: Any) -> tuple[Any, ...]:
    # NULLs sort last ascending and therefore first descending, as the module promises.
    return (True,) if value is None else (False, value)


def reference(
    rows: list[dict[str, Any]], order_by: str, keep: Callable[[dict[str, Any]], bool]
) -> list[str]:
    """Returns the ids `order_by` should list, computed in Python."""
    order = listing.parse_order_by(SPEC, order_by)
    selected = [row for row in rows if keep(row)]
    for term in reversed(order):  # stable sorts, least significant key first
        name = term.column.name
        selected.sort(key=lambda row: sort_key(row[name]), reverse=term.descending)
    return [row["id"] for row in selected]


def walk(order_by: str, page_size: int, filter_text: str = "", scope: str = "") -> list[str]:
    """Lists every page and returns the ids in order, checking the page shapes on the way."""
    ids: list[str] = []
    token = ""
    pages = 0
    effective = listing.page_size_or_default(page_size)
    while True:
        page = listing.list_page(
            SPEC,
            Widget.select(),
            PageRequest(
                PAGES, page_size=page_size, page_token=token, filter=filter_text, order_by=order_by
            ),
            scope=scope,
        )
        pages += 1
        ids.extend(widget.id for widget in page.items)
        token = page.next_page_token
        if not token:
            break
        assert len(page.items) == effective
        assert pages < 1000, "pagination does not terminate"
    assert pages == max(1, math.ceil(len(ids) / effective))
    return ids


@pytest.mark.parametrize(
    ("order_by", "page_size"),
    [
        ("", 7),
        ("", 0),
        ("name", 5),
        ("name desc", 1),
        ("name desc, price", 3),
        ("price, created desc", 4),
        ("price desc, name, created", 2),
        ("active desc, weight, name", 4),
        ("weight desc", 6),
        ("weight, price desc", 5),
        ("created, active", 100),
        ("name, price desc, created, active desc, weight", 3),
    ],
)
def test_walking_all_pages_lists_every_row_once_in_order(
    widgets: peewee.Database, order_by: str, page_size: int
) -> None:
    rows = make_rows(random.Random(order_by + str(page_size)), 41)
    insert(rows)
    assert walk(order_by, page_size) == reference(rows, order_by, lambda row: True)


@pytest.mark.parametrize("page_size", [1, 3, 41, 100])
def test_last_page_exactly_full_has_no_next_token(widgets: peewee.Database, page_size: int) -> None:
    rows = make_rows(random.Random(page_size), 41 if page_size == 41 else 3 * page_size)
    insert(rows)
    assert walk("price", page_size) == reference(rows, "price", lambda row: True)


def test_empty_table_gives_one_empty_page(widgets: peewee.Database) -> None:
    assert walk("name", 5) == []


AFTER = BASE_TIME + dt.timedelta(seconds=2)


@pytest.mark.parametrize(
    ("filter_text", "keep"),
    [
        ('name = "bb"', lambda r: r["name"] == "bb"),
        ('name != "a" AND name < "c"', lambda r: r["name"] in ("b", "bb")),
        ('name >= "b"', lambda r: r["name"] >= "b"),
        ("price > 0", lambda r: r["price"] > 0),
        ("price <= -1", lambda r: r["price"] <= -1),
        ("price >= 0 AND price < 3 AND price != 1", lambda r: r["price"] in (0, 2)),
        ("active = true", lambda r: r["active"]),
        ("active != true", lambda r: not r["active"]),
        ("kind = KIND_GIZMO", lambda r: r["kind"] == "gizmo"),
        (
            "kind != KIND_GIZMO AND active = false",
            lambda r: r["kind"] == "gadget" and not r["active"],
        ),
        ("weight = 2", lambda r: r["weight"] == 2),
        ('created >= "2026-03-01T12:00:02Z"', lambda r: r["created"] >= AFTER),
        ('created > "2026-03-01T12:00:02Z"', lambda r: r["created"] > AFTER),
        ('created < "2026-03-01T13:00:02+01:00"', lambda r: r["created"] < AFTER),
        (
            'created = "2026-03-01T12:00:02.000005Z"',
            lambda r: r["created"] == AFTER + dt.timedelta(microseconds=5),
        ),
        ("name = \"x' OR '1'='1\"", lambda r: False),
        ('name = "1=1; DROP TABLE listing_test_widgets"', lambda r: False),
    ],
)
def test_filters_select_the_right_rows(
    widgets: peewee.Database, filter_text: str, keep: Callable[[dict[str, Any]], bool]
) -> None:
    rows = make_rows(random.Random(filter_text), 60)
    insert(rows)
    for order_by, page_size in [("", 50), ("name desc, price", 4)]:
        expected = reference(rows, order_by, keep)
        assert walk(order_by, page_size, filter_text) == expected
    assert Widget.select().count() == 60  # nothing was dropped or changed


def test_token_is_bound_to_its_scope(widgets: peewee.Database) -> None:
    insert(make_rows(random.Random(1), 10))
    first = listing.list_page(
        SPEC, Widget.select(), PageRequest(PAGES, page_size=3), scope="owner-1"
    )
    with pytest.raises(InvalidArgument) as exc:
        listing.list_page(
            SPEC,
            Widget.select(),
            PageRequest(PAGES, page_size=3, page_token=first.next_page_token),
            scope="owner-2",
        )
    assert [v.field for v in exc.value.violations] == ["page_token"]


def test_base_query_conditions_are_kept(widgets: peewee.Database) -> None:
    rows = make_rows(random.Random(2), 30)
    insert(rows)
    ids: list[str] = []
    token = ""
    while True:
        page = listing.list_page(
            SPEC,
            Widget.select().where(Widget.kind == "gadget"),
            PageRequest(
                PAGES, page_size=4, page_token=token, filter="price > 0", order_by="weight desc"
            ),
            scope="gadgets",
        )
        ids.extend(w.id for w in page.items)
        token = page.next_page_token
        if not token:
            break
    assert ids == reference(rows, "weight desc", lambda r: r["kind"] == "gadget" and r["price"] > 0)


row_strategy = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["", "a", "ab", "b", "z"]),
        "kind": st.sampled_from(["gadget", "gizmo"]),
        "price": st.integers(-3, 3),
        "created": st.sampled_from(
            [BASE_TIME, BASE_TIME + dt.timedelta(microseconds=1), BASE_TIME + dt.timedelta(days=1)]
        ),
        "active": st.booleans(),
        "weight": st.none() | st.integers(0, 2),
    }
)
orders = st.lists(
    st.tuples(st.sampled_from(ORDER_FIELDS), st.sampled_from(["", " asc", " desc"])),
    max_size=4,
    unique_by=lambda term: term[0],
).map(lambda terms: ", ".join(name + direction for name, direction in terms))
filters = st.sampled_from(
    [
        "",
        "price > 0",
        "active = true AND price <= 1",
        'name >= "ab"',
        "weight != 1",
        "kind = KIND_GADGET",
    ]
)
FILTER_MEANING: dict[str, Callable[[dict[str, Any]], bool]] = {
    "": lambda r: True,
    "price > 0": lambda r: r["price"] > 0,
    "active = true AND price <= 1": lambda r: r["active"] and r["price"] <= 1,
    'name >= "ab"': lambda r: r["name"] >= "ab",
    "weight != 1": lambda r: (
        r["weight"] is not None and r["weight"] != 1
    ),  # SQL: NULL != 1 is not true
    "kind = KIND_GADGET": lambda r: r["kind"] == "gadget",
}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.lists(row_strategy, max_size=25),
    order_by=orders,
    page_size=st.integers(1, 6),
    filter_text=filters,
)
def test_pagination_matches_a_python_sort_for_random_data(
    widgets: peewee.Database,
    data: list[dict[str, Any]],
    order_by: str,
    page_size: int,
    filter_text: str,
) -> None:
    rows = [{**row, "id": str(uuid.uuid5(ID_NAMESPACE, str(i)))} for i, row in enumerate(data)]
    insert(rows)
    expected = reference(rows, order_by, FILTER_MEANING[filter_text])
    assert walk(order_by, page_size, filter_text) == expected
