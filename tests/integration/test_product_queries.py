"""Product writes, lists, search and categories against real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from server.db import database
from server.domain import listing, product_fields, product_search, products
from server.domain.listing import PageRequest
from server.domain.page_tokens import PageTokenSigner
from server.domain.principal import Principal, Role
from server.domain.product_cache import ProductCache
from server.domain.product_fields import ProductFields
from server.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.models.product import Product, ProductCategory
from server.models.stock import StockLevel

PAGES = PageTokenSigner(b"integration-test-page-token-secret")
ACTOR = Principal(subject="staff-1", role=Role.STAFF, token_id="t")


@pytest.fixture(autouse=True)
def log_writes(caplog: pytest.LogCaptureFixture) -> None:
    """Formats every write's log record, as a server logging at INFO would."""
    caplog.set_level(logging.INFO, logger="storefront.catalog")


def fields(sku: str, name: str, **overrides: Any) -> ProductFields:
    """Returns valid product fields with the given sku and name."""
    values: dict[str, Any] = {
        "sku": sku,
        "name": name,
        "price_currency": "USD",
        "price_minor": 1000,
    }
    values.update(overrides)
    return ProductFields(**values)


def make(sku: str, name: str, **overrides: Any) -> Product:
    """Creates a product through the domain."""
    return products.create(fields(sku, name, **overrides), actor=ACTOR)


def walk_list(
    *,
    page_size: int,
    order_by: str = "",
    filter_text: str = "",
    show_archived: bool = False,
    cache: ProductCache | None = None,
) -> list[Product]:
    """Lists every page (through `cache` when given); returns the products in order."""
    items: list[Product] = []
    token = ""
    for _ in range(10_000):
        page = products.list_(
            PageRequest(
                PAGES, page_size=page_size, page_token=token, filter=filter_text, order_by=order_by
            ),
            show_archived=show_archived,
            cache=cache,
        )
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items
    raise AssertionError("pagination does not terminate")


def walk_search(query: str, *, page_size: int, show_archived: bool = False) -> list[str]:
    """Searches every page; returns the product names in order."""
    return [p.name for p in search_pages(query, page_size=page_size, show_archived=show_archived)]


def search_pages(
    query: str, *, page_size: int, show_archived: bool = False, cache: ProductCache | None = None
) -> list[Product]:
    """Searches every page (through `cache` when given); returns the products in order."""
    found: list[Product] = []
    token = ""
    for _ in range(1_000):
        page = product_search.search(
            PageRequest(PAGES, page_size=page_size, page_token=token),
            query=query,
            show_archived=show_archived,
            cache=cache,
        )
        found.extend(page.items)
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("pagination does not terminate")


# --- writes keep the derived tables in step ---------------------------------------------------


def test_create_stores_normalised_fields_categories_and_a_zero_stock_level(
    db: peewee.Database,
) -> None:
    product = make(
        " kn-001 ",
        "  Chef Knife ",
        price_currency="eur",
        categories=["Kitchen", "knives", "kitchen"],
        attributes={"colour": "black", "blade": {"cm": 20}},
        image_urls=["https://img.example.com/kn-001.jpg"],
        description_html='<p onclick="x()">Sharp <script>alert(1)</script></p>',
    )
    stored = Product.get_by_id(product.id)
    assert (stored.sku, stored.name, stored.price_currency) == ("KN-001", "Chef Knife", "EUR")
    assert product_fields.categories_of(stored) == ["kitchen", "knives"]
    assert stored.categories_text == "kitchen knives"
    slugs = {c.slug for c in ProductCategory.select().where(ProductCategory.product == product.id)}
    assert slugs == {"kitchen", "knives"}
    assert product_fields.attributes_of(stored) == {"colour": "black", "blade": {"cm": 20}}
    assert product_fields.image_urls_of(stored) == ["https://img.example.com/kn-001.jpg"]
    assert stored.description_html == "<p>Sharp </p>"
    assert stored.state == "ACTIVE" and product_fields.etag(stored) == 'W/"1"'
    stock = StockLevel.get_by_id(product.id)
    assert (stock.on_hand, stock.reserved) == (0, 0)


def test_a_taken_sku_is_already_exists_and_writes_nothing(db: peewee.Database) -> None:
    make("KN-001", "Chef Knife")
    with pytest.raises(AlreadyExists) as caught:
        make("kn-001", "Other Knife", categories=["new-category"])
    assert caught.value.reason == "SKU_TAKEN"
    assert Product.select().count() == 1
    assert StockLevel.select().count() == 1
    assert not ProductCategory.select().where(ProductCategory.slug == "new-category").exists()


def test_update_replaces_categories_and_bumps_the_version(db: peewee.Database) -> None:
    product = make("KN-001", "Chef Knife", categories=["kitchen"])
    updated = products.update(
        product_id=product.id,
        fields=fields("", "Chef's Knife", categories=["knives", "sale"]),
        paths=["name", "categories", "update_time"],
        expected_etag=product_fields.etag(product),
        actor=ACTOR,
    )
    assert updated.name == "Chef's Knife" and updated.version == 2
    assert updated.sku == "KN-001"  # not in the mask
    slugs = {c.slug for c in ProductCategory.select().where(ProductCategory.product == product.id)}
    assert slugs == {"knives", "sale"} and updated.categories_text == "knives sale"


def test_update_that_changes_nothing_keeps_the_version(db: peewee.Database) -> None:
    product = make("KN-001", "Chef Knife")
    same = products.update(
        product_id=product.id,
        fields=fields("kn-001", "Chef Knife"),
        paths=["sku", "name"],
        expected_etag="",
        actor=ACTOR,
    )
    assert same.version == 1


def test_update_errors(db: peewee.Database) -> None:
    product = make("KN-001", "Chef Knife")
    make("KN-002", "Paring Knife")

    def update(**kwargs: Any) -> Product:
        args: dict[str, Any] = {
            "product_id": product.id,
            "fields": fields("", "New"),
            "paths": ["name"],
            "expected_etag": "",
            "actor": ACTOR,
        }
        args.update(kwargs)
        return products.update(**args)

    with pytest.raises(AlreadyExists):
        update(fields=fields("kn-002", ""), paths=["sku"])
    with pytest.raises(Aborted):
        update(expected_etag='W/"7"')
    with pytest.raises(NotFound):
        update(product_id=str(uuid.uuid4()))
    with pytest.raises(InvalidArgument):
        update(paths=[])
    with pytest.raises(InvalidArgument):
        update(paths=["name", "stock"])
    products.archive(product_id=product.id, expected_etag="", actor=ACTOR)
    with pytest.raises(FailedPrecondition) as caught:
        update()
    assert caught.value.reason == "PRODUCT_ARCHIVED"
    assert Product.get_by_id(product.id).name == "Chef Knife"


def test_concurrent_updates_with_one_etag_let_exactly_one_win(db: peewee.Database) -> None:
    product = make("KN-001", "Chef Knife")
    tag = product_fields.etag(product)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        try:
            barrier.wait()
            products.update(
                product_id=product.id,
                fields=fields("", f"Name {n}"),
                paths=["name"],
                expected_etag=tag,
                actor=ACTOR,
            )
            outcomes.append("ok")
        except Aborted:
            outcomes.append("aborted")
        finally:
            database.close()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["aborted"] * 5 + ["ok"]
    assert Product.get_by_id(product.id).version == 2


def test_archive_and_restore_are_idempotent(db: peewee.Database) -> None:
    product = make("KN-001", "Chef Knife")
    archived = products.archive(product_id=product.id, expected_etag="", actor=ACTOR)
    again = products.archive(product_id=product.id, expected_etag="", actor=ACTOR)
    assert archived.state == again.state == "ARCHIVED" and again.version == archived.version
    with pytest.raises(Aborted):
        products.restore(
            product_id=product.id, expected_etag=product_fields.etag(product), actor=ACTOR
        )
    restored = products.restore(
        product_id=product.id, expected_etag=product_fields.etag(again), actor=ACTOR
    )
    assert restored.state == "ACTIVE" and restored.version == archived.version + 1


def test_upsert_by_sku_creates_then_replaces_every_field(db: peewee.Database) -> None:
    first = products.upsert_by_sku(
        fields("kn-001", "Chef Knife", categories=["kitchen"], weight_grams=200)
    )
    second = products.upsert_by_sku(fields("KN-001", "Chef's Knife", price_minor=1500))
    assert second.id == first.id and second.version == 2
    assert (second.name, second.price_minor, second.weight_grams) == ("Chef's Knife", 1500, 0)
    assert product_fields.categories_of(second) == []
    assert not ProductCategory.select().exists()


def test_import_counts_rows_and_reports_failures_by_row(
    db: peewee.Database, caplog: pytest.LogCaptureFixture
) -> None:
    make("KN-001", "Chef Knife")
    rows = [
        fields("KN-001", "Chef Knife v2"),
        fields("KN-002", "Paring Knife"),
        fields("KN-003", "", price_currency="XYZ"),
        fields("KN-002", "Paring Knife, again"),
    ]
    result = products.import_rows(iter(rows), actor=ACTOR)
    assert (result.created_count, result.updated_count, result.failed_count) == (1, 2, 1)
    assert [(e.row, e.sku) for e in result.errors] == [(3, "KN-003")]
    assert "price.currency_code: unknown currency" in result.errors[0].message
    assert "name: is required" in result.errors[0].message
    assert Product.select().count() == 2
    assert caplog.records[-1].__dict__["created_count"] == 1


def test_an_import_over_the_row_limit_writes_nothing(
    db: peewee.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(products, "IMPORT_MAX_ROWS", 3)
    rows = (fields(f"SKU-{n}", f"Product {n}") for n in itertools.count())
    with pytest.raises(InvalidArgument):
        products.import_rows(rows, actor=ACTOR)
    assert not Product.select().exists()


# --- ListProducts -----------------------------------------------------------------------------


@pytest.fixture
def catalog(db: peewee.Database) -> dict[str, Product]:
    """Six products over two currencies and three categories; one archived."""
    made = {
        "apron": make("AP-001", "Apron", price_minor=1500, categories=["textiles"]),
        "board": make("CB-001", "Cutting Board", price_minor=2500, categories=["kitchen"]),
        "knife": make("KN-001", "Chef Knife", price_minor=4900, categories=["kitchen", "knives"]),
        "paring": make(
            "KN-002",
            "Paring Knife",
            price_currency="EUR",
            price_minor=1900,
            categories=["kitchen", "knives"],
        ),
        "stone": make("ST-001", "Sharpening Stone", price_minor=900, categories=["knife-care"]),
        "old": make("OLD-1", "Old Knife", price_minor=100, categories=["knives", "retired"]),
    }
    products.archive(product_id=made["old"].id, expected_etag="", actor=ACTOR)
    return made


def names(items: list[Product]) -> list[str]:
    return [p.name for p in items]


@pytest.mark.parametrize(
    ("filter_text", "order_by", "show_archived", "expected"),
    [
        (
            "",
            "",
            False,
            ["Apron", "Chef Knife", "Cutting Board", "Paring Knife", "Sharpening Stone"],
        ),
        ("", "name desc", False, ["Sharpening Stone", "Paring Knife", "Cutting Board"]),
        ('category = "kitchen"', "", False, ["Chef Knife", "Cutting Board", "Paring Knife"]),
        ('category = "Knives"', "", True, ["Chef Knife", "Old Knife", "Paring Knife"]),
        ('category != "kitchen"', "", False, ["Apron", "Sharpening Stone"]),
        ('price_currency = "EUR"', "", False, ["Paring Knife"]),
        (
            'price_currency != "EUR"',
            "price_minor",
            False,
            ["Sharpening Stone", "Apron", "Cutting Board", "Chef Knife"],
        ),
        (
            "price_minor >= 1900 AND price_minor < 4900",
            "price_minor desc",
            False,
            ["Cutting Board", "Paring Knife"],
        ),
        ("state = PRODUCT_STATE_ARCHIVED", "", True, ["Old Knife"]),
        ("state = PRODUCT_STATE_ARCHIVED", "", False, []),
        ("", "price_minor", True, ["Old Knife", "Sharpening Stone", "Apron"]),
        ('update_time > "2000-01-01T00:00:00Z" AND category = "textiles"', "", False, ["Apron"]),
        ('update_time < "2000-01-01T00:00:00Z"', "", False, []),
        ("", "create_time desc", False, ["Sharpening Stone", "Paring Knife", "Chef Knife"]),
    ],
)
def test_list_filters_and_orders(
    catalog: dict[str, Product],
    filter_text: str,
    order_by: str,
    show_archived: bool,
    expected: list[str],
) -> None:
    items = walk_list(
        page_size=3, filter_text=filter_text, order_by=order_by, show_archived=show_archived
    )
    assert names(items)[: len(expected)] == expected
    if filter_text:
        assert len(items) == len(expected)


@pytest.mark.parametrize(
    ("filter_text", "order_by", "show_archived"),
    [
        ("", "", False),
        ("", "price_minor desc", True),
        ('category = "knives"', "name", True),
        ("", "create_time desc", False),
    ],
)
def test_a_list_through_the_cache_is_the_list_from_the_database(
    catalog: dict[str, Product], filter_text: str, order_by: str, show_archived: bool
) -> None:
    cache = ProductCache(CollectorRegistry())
    plain = walk_list(
        page_size=2, filter_text=filter_text, order_by=order_by, show_archived=show_archived
    )
    for _ in range(2):  # cold, then warm
        cached = walk_list(
            page_size=2,
            filter_text=filter_text,
            order_by=order_by,
            show_archived=show_archived,
            cache=cache,
        )
        assert [p.__data__ for p in cached] == [p.__data__ for p in plain]
    assert plain and all(cache.get(p.id) is p for p in cached)  # the warm walk used the cache


def test_a_list_through_the_cache_sees_a_change_made_elsewhere_at_once(
    catalog: dict[str, Product],
) -> None:
    cache = ProductCache(CollectorRegistry(), ttl_seconds=3600)
    walk_list(page_size=10, cache=cache)
    knife = catalog["knife"]
    # Another process's write: this process's cache is not told.
    Product.update(name="Chef's Knife", version=Product.version + 1).where(
        Product.id == knife.id
    ).execute()
    listed = {p.id: p for p in walk_list(page_size=10, cache=cache)}
    assert listed[knife.id].name == "Chef's Knife"
    assert listed[knife.id].version == knife.version + 1
    assert cache.get(knife.id) is listed[knife.id]


@pytest.mark.parametrize("show_archived", [False, True])
def test_a_search_through_the_cache_is_the_search_from_the_database(
    catalog: dict[str, Product], show_archived: bool
) -> None:
    cache = ProductCache(CollectorRegistry())
    for query in ("knife", "k", "kitchen knife"):
        plain = search_pages(query, page_size=1, show_archived=show_archived)
        for _ in range(2):  # cold, then warm
            cached = search_pages(query, page_size=1, show_archived=show_archived, cache=cache)
            assert [p.__data__ for p in cached] == [p.__data__ for p in plain]
        assert plain and all(cache.get(p.id) is p for p in cached)


def test_a_search_through_the_cache_sees_a_change_made_elsewhere_at_once(
    catalog: dict[str, Product],
) -> None:
    cache = ProductCache(CollectorRegistry(), ttl_seconds=3600)
    knife = catalog["knife"]
    assert knife.id in {p.id for p in search_pages("knife", page_size=10, cache=cache)}
    # Another process's write: this process's cache is not told.
    Product.update(description="Now forged", version=Product.version + 1).where(
        Product.id == knife.id
    ).execute()
    found = {p.id: p for p in search_pages("knife", page_size=10, cache=cache)}
    assert found[knife.id].description == "Now forged"
    assert found[knife.id].version == knife.version + 1


@pytest.mark.parametrize(
    "filter_text",
    [
        'category = "no-such-category"',
        'category = "kitchen; DROP TABLE products"',
        'price_currency = "XYZ"',
        'price_currency = "usd\' OR 1=1 --"',
        "price_currency = USD",
        'name = "Apron"',
        "price_minor > 1 OR 1 = 1",
        "price_minor > '1'",
        'category : "kitchen"',
        "state = ACTIVE",
    ],
)
def test_bad_filters_are_invalid_argument(catalog: dict[str, Product], filter_text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        products.list_(PageRequest(PAGES, page_size=10, filter=filter_text), show_archived=False)
    assert [v.field for v in caught.value.violations] == ["filter"]


def test_page_token_is_bound_to_show_archived(catalog: dict[str, Product]) -> None:
    page = products.list_(PageRequest(PAGES, page_size=1), show_archived=False)
    with pytest.raises(InvalidArgument):
        products.list_(
            PageRequest(PAGES, page_size=1, page_token=page.next_page_token), show_archived=True
        )


FILTERS: dict[str, Callable[[Product], bool]] = {
    "": lambda p: True,
    "price_minor >= 500": lambda p: p.price_minor >= 500,
    'category = "even"': lambda p: "even" in product_fields.categories_of(p),
    'price_currency = "EUR"': lambda p: p.price_currency == "EUR",
}
ORDERS: dict[str, Callable[[Product], Any]] = {
    "": lambda p: (p.name, p.id),
    "name desc": lambda p: (p.name, p.id),
    "price_minor": lambda p: (p.price_minor, p.id),
    "price_minor desc": lambda p: (p.price_minor, p.id),
    "create_time": lambda p: (p.create_time, p.id),
    "create_time desc": lambda p: (p.create_time, p.id),
}


def _product_rows(rng: random.Random, prefix: str, count: int) -> Iterator[ProductFields]:
    for n in range(count):
        yield fields(
            f"{prefix}-{n:04d}",
            "".join(rng.choice("abc") for _ in range(rng.randint(1, 3))),
            price_minor=rng.choice([0, 100, 500, 999, 5000]),
            price_currency=rng.choice(["USD", "EUR"]),
            categories=["even" if n % 2 == 0 else "odd"],
        )


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**16),
    page_size=st.sampled_from([1, 2, 5, 13]),
    filter_text=st.sampled_from(list(FILTERS)),
    order_by=st.sampled_from(list(ORDERS)),
)
def test_pages_list_every_product_once_in_order_during_concurrent_inserts(
    db: peewee.Database, seed: int, page_size: int, filter_text: str, order_by: str
) -> None:
    Product.delete().execute()
    rng = random.Random(seed)
    initial = [products.create(f, actor=ACTOR) for f in _product_rows(rng, "INIT", 30)]
    keep, key = FILTERS[filter_text], ORDERS[order_by]
    stop = threading.Event()
    inserted: list[int] = []

    def insert(prefix: str) -> None:
        writer_rng = random.Random(prefix)
        try:
            for row in _product_rows(writer_rng, prefix, 10_000):
                if stop.is_set():
                    break
                products.create(row, actor=ACTOR)
                inserted.append(1)
        finally:
            database.close()

    writers = [
        threading.Thread(target=insert, args=(f"W{seed}-{n}",), daemon=True) for n in range(2)
    ]
    for writer in writers:
        writer.start()
    try:
        walked = walk_list(page_size=page_size, order_by=order_by, filter_text=filter_text)
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    ids = [p.id for p in walked]
    assert len(ids) == len(set(ids)), "a product was listed twice"
    assert {p.id for p in initial if keep(p)} <= set(ids), "a product was skipped"
    assert all(keep(p) for p in walked)
    keys = [key(p) for p in walked]
    descending = order_by.endswith("desc")
    assert keys == sorted(keys, reverse=descending)


# --- SearchProducts ---------------------------------------------------------------------------


@pytest.fixture
def searchable(db: peewee.Database) -> None:
    """A fixed set of products whose ranking both engines must agree on."""
    rows = [
        ("KN-001", "Chef Knife", ["kitchen"], "Forged steel blade."),
        ("KN-002", "Paring Knife", ["kitchen"], "Small blade for fruit."),
        ("BL-100", "Knife Block", ["kitchen", "storage"], "Holds six knives."),
        ("CB-001", "Cutting Board", ["kitchen"], "Use it with any knife."),
        ("ST-001", "Sharpening Stone", ["knife-care"], "Keeps edges keen."),
        ("AP-001", "Apron", ["textiles"], "A pocket for a small knife, and a towel loop."),
        ("PZ-001", "Knife-Edge Pizza Cutter", ["kitchen"], "Rolls through crust."),
        ("KR-001", "knife Roll", ["storage"], "Canvas roll for eight blades."),
        ("EC-001", "Éclair Mold", ["baking"], "Makes twelve ÉCLAIRS."),
        ("SP-1.5", "Spatula 1.5", ["kitchen"], "Silicone, 1.5 mm edge; mail help@cook.example."),
        ("OLD-1", "Old Knife", ["kitchen"], "Retired."),
    ]
    for sku, name, categories, description in rows:
        make(sku, name, categories=categories, description=description)
    old = Product.get(Product.sku == "OLD-1")
    products.archive(product_id=old.id, expected_etag="", actor=ACTOR)


KNIFE_RANKING = [
    # Tier 0: a word of the name starts with the query word.
    "Chef Knife",
    "Knife Block",
    "Knife-Edge Pizza Cutter",
    "Paring Knife",
    "knife Roll",
    # Tier 1: a category does.
    "Sharpening Stone",
    # Tier 2: only the description does.
    "Apron",
    "Cutting Board",
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("knife", KNIFE_RANKING),
        ("KNI", KNIFE_RANKING),  # case does not matter; words match as prefixes
        # The Chef Knife's own sku first; then "kn" and "001" found in other fields.
        (
            "KN-001",
            [
                "Chef Knife",
                "Knife-Edge Pizza Cutter",
                "Sharpening Stone",
                "knife Roll",
                "Apron",
                "Cutting Board",
            ],
        ),
        ("small knife", ["Apron", "Paring Knife"]),
        ("blade", ["Chef Knife", "Paring Knife", "knife Roll"]),
        ("blades knife", ["knife Roll"]),
        (
            "kitchen",
            [
                "Chef Knife",
                "Cutting Board",
                "Knife Block",
                "Knife-Edge Pizza Cutter",
                "Paring Knife",
                "Spatula 1.5",
            ],
        ),
        ("éclair", ["Éclair Mold"]),
        ("ÉCLAIRS", ["Éclair Mold"]),
        ("eclair", []),  # accents matter on both engines (SQLite's index alone would match)
        ("sp-1.5", ["Spatula 1.5"]),  # an exact sku always matches
        ("1", ["Spatula 1.5", "Knife Block"]),  # "BL-100": PostgreSQL reads "-100"
        ("5", []),  # "1.5" is one word to PostgreSQL, so to both
        ("help", ["Spatula 1.5"]),
        ("cook", []),  # inside an email address
        ("towel, loop!", ["Apron"]),
        ("retired", []),  # archived
        ("nothing-like-this", []),
    ],
)
def test_search_ranks_the_same_on_both_engines(
    searchable: None, query: str, expected: list[str]
) -> None:
    for page_size in (1, 3, 100):
        assert walk_search(query, page_size=page_size) == expected


def test_search_includes_archived_products_when_asked(searchable: None) -> None:
    assert "Old Knife" in walk_search("knife", page_size=4, show_archived=True)


def test_search_page_tokens_belong_to_their_query(searchable: None) -> None:
    page = product_search.search(
        PageRequest(PAGES, page_size=2), query="knife", show_archived=False
    )
    assert page.next_page_token
    for query, show_archived in [("knif", False), ("knife", True), ("chef", False)]:
        with pytest.raises(InvalidArgument):
            product_search.search(
                PageRequest(PAGES, page_size=2, page_token=page.next_page_token),
                query=query,
                show_archived=show_archived,
            )


@pytest.mark.parametrize(
    "query", ["", "   ", "!!! ---", "x" * 201, " ".join(f"w{n}" for n in range(11))]
)
def test_bad_search_queries_are_invalid_argument(db: peewee.Database, query: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        product_search.search(PageRequest(PAGES), query=query, show_archived=False)
    assert [v.field for v in caught.value.violations] == ["query"]


def test_search_sees_updates_at_once(searchable: None) -> None:
    apron = Product.get(Product.sku == "AP-001")
    products.update(
        product_id=apron.id,
        fields=fields("", "Knife Apron"),
        paths=["name"],
        expected_etag="",
        actor=ACTOR,
    )
    assert walk_search("knife", page_size=3)[:2] == ["Chef Knife", "Knife Apron"]


# --- ListCategories ---------------------------------------------------------------------------


def test_categories_count_active_products_and_list_every_slug(
    catalog: dict[str, Product],
) -> None:
    counts = [(c.slug, c.product_count) for c in products.list_categories()]
    assert counts == [
        ("kitchen", 3),
        ("knife-care", 1),
        ("knives", 2),
        ("retired", 0),
        ("textiles", 1),
    ]


def test_listing_sizes_follow_the_shared_conventions(catalog: dict[str, Product]) -> None:
    page = products.list_(PageRequest(PAGES, page_size=1000), show_archived=True)
    assert len(page.items) == 6 and page.next_page_token == ""
    with pytest.raises(InvalidArgument):
        products.list_(PageRequest(PAGES, page_size=-1), show_archived=False)
    assert listing.page_size_or_default(0) == 50


def test_times_are_stored_as_naive_utc(db: peewee.Database) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    product = make("KN-001", "Chef Knife")
    stored = Product.get_by_id(product.id)
    assert stored.create_time >= before - dt.timedelta(seconds=1)
    assert stored.create_time.tzinfo is None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(query=st.text(min_size=1, max_size=40))
def test_any_search_text_gives_a_page_or_invalid_argument(searchable: None, query: str) -> None:
    try:
        page = product_search.search(
            PageRequest(PAGES, page_size=5), query=query, show_archived=True
        )
    except InvalidArgument:
        return
    assert len(page.items) <= 5
