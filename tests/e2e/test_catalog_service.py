"""CatalogService through the client SDK: every RPC and every status code its comments promise."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from storefront.v1 import catalog_service_pb2 as pb
from storefront.v1 import common_pb2, product_pb2
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from server.services.catalog_service import struct_to_dict
from tests.e2e.conftest import Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode


def product(sku: str, name: str, **overrides: Any) -> product_pb2.Product:
    """Returns a valid product message; `price` may be given as (currency, amount)."""
    currency, amount = overrides.pop("price", ("USD", 1000))
    attributes = overrides.pop("attributes", None)
    message = product_pb2.Product(
        sku=sku,
        name=name,
        price=common_pb2.Money(currency_code=currency, amount_minor=amount),
        **overrides,
    )
    if attributes is not None:
        message.attributes.update(attributes)
    return message


def create(client: StorefrontClient, sku: str, name: str, **overrides: Any) -> product_pb2.Product:
    response = client.catalog.CreateProduct(
        pb.CreateProductRequest(product=product(sku, name, **overrides))
    )
    return response.product


def list_all(client: StorefrontClient, **request: Any) -> list[product_pb2.Product]:
    """Walks every page of ListProducts; returns the products in order."""
    items: list[product_pb2.Product] = []
    token = ""
    for _ in range(1000):
        page = client.catalog.ListProducts(pb.ListProductsRequest(page_token=token, **request))
        items.extend(page.products)
        token = page.next_page_token
        if not token:
            return items
    raise AssertionError("pagination does not terminate")


def cache_requests(running: Running, result: str) -> float:
    value = running.app.metrics.registry.get_sample_value(
        "storefront_product_cache_requests_total", {"result": result}
    )
    return value or 0.0


@pytest.fixture
def staff(running: Running) -> StorefrontClient:
    return running.login(Role.STAFF)


# --- CreateProduct, GetProduct ----------------------------------------------------------------


def test_create_returns_the_stored_product_and_get_returns_it_to_anyone(
    running: Running, staff: StorefrontClient
) -> None:
    created = create(
        staff,
        "kn-001",
        " Chef Knife ",
        description="Forged.",
        description_html='<p onclick="steal()">Sharp <a href="javascript:alert(1)">x</a></p>',
        price=("EUR", 4900),
        categories=["Kitchen", "knives", "kitchen"],
        attributes={"colour": "black", "blade": {"cm": 20, "steel": "VG-10"}, "tags": [1, "a"]},
        image_urls=["https://img.example/kn-001.jpg"],
        weight_grams=180,
        id="ignored",
        state=product_pb2.PRODUCT_STATE_ARCHIVED,
    )
    assert uuid.UUID(created.id).version == 4
    assert (created.sku, created.name, created.description) == ("KN-001", "Chef Knife", "Forged.")
    assert created.description_html == ('<p>Sharp <a rel="noopener noreferrer nofollow">x</a></p>')
    assert (created.price.currency_code, created.price.amount_minor) == ("EUR", 4900)
    assert list(created.categories) == ["kitchen", "knives"]
    assert struct_to_dict(created.attributes) == {
        "colour": "black",
        "blade": {"cm": 20, "steel": "VG-10"},
        "tags": [1, "a"],
    }
    assert list(created.image_urls) == ["https://img.example/kn-001.jpg"]
    assert created.weight_grams == 180
    assert created.state == product_pb2.PRODUCT_STATE_ACTIVE
    assert created.etag and created.create_time.seconds > 0
    assert created.create_time == created.update_time

    fetched = running.client().catalog.GetProduct(pb.GetProductRequest(product_id=created.id))
    assert fetched.product == created


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"sku": "x"}, {"product.sku"}),
        ({"sku": "bad sku"}, {"product.sku"}),
        ({"name": ""}, {"product.name"}),
        ({"name": "n" * 201}, {"product.name"}),
        ({"description": "d" * 5001}, {"product.description"}),
        ({"description_html": "<p>" * 6667}, {"product.description_html"}),
        ({"price": ("XYZ", 1)}, {"product.price.currency_code"}),
        ({"price": ("", 1)}, {"product.price.currency_code"}),
        ({"price": ("USD", -1)}, {"product.price.amount_minor"}),
        ({"price": ("USD", 100_000_001)}, {"product.price.amount_minor"}),
        ({"categories": ["Not A Slug"]}, {"product.categories[0]"}),
        ({"categories": [f"c{n}" for n in range(11)]}, {"product.categories"}),
        ({"attributes": {f"k{n}": n for n in range(51)}}, {"product.attributes"}),
        ({"attributes": {"big": "x" * 17_000}}, {"product.attributes"}),
        ({"image_urls": ["javascript:alert(1)"]}, {"product.image_urls[0]"}),
        ({"image_urls": ["https://x.example/"] * 11}, {"product.image_urls"}),
        ({"weight_grams": 1_000_001}, {"product.weight_grams"}),
        (
            {"sku": "", "name": "", "price": ("usd?", -5)},
            {
                "product.sku",
                "product.name",
                "product.price.currency_code",
                "product.price.amount_minor",
            },
        ),
    ],
)
def test_create_rejects_fields_outside_their_limits_and_writes_nothing(
    running: Running, staff: StorefrontClient, overrides: dict[str, Any], fields: set[str]
) -> None:
    values = {"sku": "KN-001", "name": "Chef Knife", **overrides}
    err = rpc_error(lambda: create(staff, values.pop("sku"), values.pop("name"), **values))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields
    assert list_all(running.client(), show_archived=True) == []


def test_create_with_a_taken_sku_is_already_exists(
    running: Running, staff: StorefrontClient
) -> None:
    create(staff, "KN-001", "Chef Knife")
    err = rpc_error(lambda: create(staff, "kn-001", "Another", categories=["fresh"]))
    assert err.code() == StatusCode.ALREADY_EXISTS
    assert error_info(err)[0] == "SKU_TAKEN"
    assert len(list_all(running.client())) == 1
    categories = running.client().catalog.ListCategories(pb.ListCategoriesRequest()).categories
    assert [c.slug for c in categories] == []


def test_writes_need_a_staff_token(running: Running) -> None:
    request = pb.CreateProductRequest(product=product("KN-001", "Chef Knife"))
    anonymous = rpc_error(lambda: running.client().catalog.CreateProduct(request))
    assert anonymous.code() == StatusCode.UNAUTHENTICATED
    customer = running.login(Role.CUSTOMER)
    denied = rpc_error(lambda: customer.catalog.CreateProduct(request))
    assert denied.code() == StatusCode.PERMISSION_DENIED
    rows = iter([pb.ImportProductsRequest(product=product("KN-001", "Chef Knife"))])
    assert rpc_error(lambda: customer.catalog.ImportProducts(rows)).code() == (
        StatusCode.PERMISSION_DENIED
    )
    assert list_all(running.client()) == []


def test_get_unknown_product_is_not_found(running: Running) -> None:
    client = running.client()
    err = rpc_error(
        lambda: client.catalog.GetProduct(pb.GetProductRequest(product_id=str(uuid.uuid4())))
    )
    assert err.code() == StatusCode.NOT_FOUND
    assert error_info(err)[0] == "PRODUCT_NOT_FOUND"
    for bad in ["", "not-a-uuid", "' OR 1=1 --"]:
        err = rpc_error(lambda b=bad: client.catalog.GetProduct(pb.GetProductRequest(product_id=b)))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"product_id"}


# --- BatchGetProducts -------------------------------------------------------------------------


def test_batch_get_answers_in_the_order_asked_and_lists_missing_ids(
    running: Running, staff: StorefrontClient
) -> None:
    a = create(staff, "A-001", "Alpha")
    b = create(staff, "B-001", "Beta")
    ghost = str(uuid.uuid4())
    response = running.client().catalog.BatchGetProducts(
        pb.BatchGetProductsRequest(product_ids=[b.id, ghost, a.id, b.id])
    )
    assert [p.name for p in response.products] == ["Beta", "Alpha", "Beta"]
    assert list(response.missing_ids) == [ghost]


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        ([], "product_ids"),
        ([str(uuid.uuid4()) for _ in range(101)], "product_ids"),
        ([str(uuid.uuid4()), "nope"], "product_ids[1]"),
    ],
)
def test_batch_get_rejects_bad_id_lists(running: Running, ids: list[str], field: str) -> None:
    err = rpc_error(
        lambda: running.client().catalog.BatchGetProducts(
            pb.BatchGetProductsRequest(product_ids=ids)
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {field}


def test_batch_get_accepts_exactly_100_ids(running: Running) -> None:
    ids = [str(uuid.uuid4()) for _ in range(100)]
    response = running.client().catalog.BatchGetProducts(
        pb.BatchGetProductsRequest(product_ids=ids)
    )
    assert list(response.missing_ids) == ids


# --- ListProducts -----------------------------------------------------------------------------


@pytest.fixture
def catalog(staff: StorefrontClient) -> dict[str, product_pb2.Product]:
    """Five active products over two currencies and three categories, and one archived."""
    made = {
        "apron": create(staff, "AP-001", "Apron", price=("USD", 1500), categories=["textiles"]),
        "board": create(
            staff, "CB-001", "Cutting Board", price=("USD", 2500), categories=["kitchen"]
        ),
        "knife": create(
            staff,
            "KN-001",
            "Chef Knife",
            price=("USD", 4900),
            categories=["kitchen", "knives"],
            description="Forged steel.",
        ),
        "paring": create(
            staff, "KN-002", "Paring Knife", price=("EUR", 1900), categories=["kitchen"]
        ),
        "stone": create(
            staff, "ST-001", "Sharpening Stone", price=("USD", 900), categories=["knife-care"]
        ),
        "old": create(staff, "OLD-1", "Old Knife", price=("USD", 100), categories=["retired"]),
    }
    staff.catalog.ArchiveProduct(pb.ArchiveProductRequest(product_id=made["old"].id))
    return made


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({}, ["Apron", "Chef Knife", "Cutting Board", "Paring Knife", "Sharpening Stone"]),
        (
            {"show_archived": True, "order_by": "price_minor"},
            [
                "Old Knife",
                "Sharpening Stone",
                "Apron",
                "Paring Knife",
                "Cutting Board",
                "Chef Knife",
            ],
        ),
        ({"filter": 'category = "kitchen"'}, ["Chef Knife", "Cutting Board", "Paring Knife"]),
        ({"filter": 'price_currency = "EUR"'}, ["Paring Knife"]),
        (
            {"filter": "price_minor >= 1500 AND price_minor <= 2500", "order_by": "name desc"},
            ["Paring Knife", "Cutting Board", "Apron"],
        ),
        ({"filter": "state = PRODUCT_STATE_ARCHIVED", "show_archived": True}, ["Old Knife"]),
        (
            {"filter": 'update_time > "2000-01-01T00:00:00Z"', "order_by": "create_time desc"},
            ["Sharpening Stone", "Paring Knife", "Chef Knife", "Cutting Board", "Apron"],
        ),
    ],
)
def test_list_filters_and_orders(
    running: Running,
    catalog: dict[str, product_pb2.Product],
    request_fields: dict[str, Any],
    expected: list[str],
) -> None:
    for page_size in (0, 1, 2, 100):
        items = list_all(running.client(), page_size=page_size, **request_fields)
        assert [p.name for p in items] == expected


@pytest.mark.parametrize(
    "filter_text",
    [
        "1=1; DROP TABLE products",
        "price_minor > 0 OR 1 = 1",
        "price_minor > 0 AND (1 = 1)",
        "name = 'Apron'",
        'name = "Apron"',
        "category = \"kitchen' OR '1'='1\"",
        'category = "no-such-category"',
        'price_currency = "XYZ"',
        "price_currency = USD",
        "price_minor = 1.5",
        'price_minor = "1"',
        "state = ARCHIVED",
        "update_time > yesterday",
        'description : "steel"',
        "x" * 1001,
    ],
)
def test_list_rejects_bad_filters(
    running: Running, catalog: dict[str, product_pb2.Product], filter_text: str
) -> None:
    err = rpc_error(
        lambda: running.client().catalog.ListProducts(pb.ListProductsRequest(filter=filter_text))
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"filter"}


@pytest.mark.parametrize("order_by", ["price", "name asc desc", "name; DROP TABLE products"])
def test_list_rejects_bad_order_by(running: Running, order_by: str) -> None:
    err = rpc_error(
        lambda: running.client().catalog.ListProducts(pb.ListProductsRequest(order_by=order_by))
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"order_by"}


def _tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[3] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_page_tokens_from_another_query_or_tampered_are_invalid(
    running: Running, catalog: dict[str, product_pb2.Product]
) -> None:
    client = running.client()
    token = client.catalog.ListProducts(pb.ListProductsRequest(page_size=1)).next_page_token
    assert token
    bad_requests = [
        pb.ListProductsRequest(page_size=1, page_token=_tampered(token)),
        pb.ListProductsRequest(page_size=1, page_token="not a token"),
        pb.ListProductsRequest(page_size=1, page_token=token, order_by="price_minor"),
        pb.ListProductsRequest(page_size=1, page_token=token, filter='category = "kitchen"'),
        pb.ListProductsRequest(page_size=1, page_token=token, show_archived=True),
    ]
    for request in bad_requests:
        err = rpc_error(lambda r=request: client.catalog.ListProducts(r))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"page_token"}
    search_token = client.catalog.SearchProducts(
        pb.SearchProductsRequest(query="knife", page_size=1)
    ).next_page_token
    assert search_token
    err = rpc_error(
        lambda: client.catalog.ListProducts(pb.ListProductsRequest(page_token=search_token))
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT


def test_page_size_negative_is_invalid_and_huge_is_capped_at_100(
    running: Running, staff: StorefrontClient
) -> None:
    rows = [
        pb.ImportProductsRequest(product=product(f"P-{n:03d}", f"P {n:03d}")) for n in range(105)
    ]
    assert staff.catalog.ImportProducts(iter(rows)).created_count == 105
    client = running.client()
    err = rpc_error(lambda: client.catalog.ListProducts(pb.ListProductsRequest(page_size=-1)))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"page_size"}
    page = client.catalog.ListProducts(pb.ListProductsRequest(page_size=2_000_000_000))
    assert len(page.products) == 100 and page.next_page_token
    rest = client.catalog.ListProducts(
        pb.ListProductsRequest(page_size=2_000_000_000, page_token=page.next_page_token)
    )
    assert len(rest.products) == 5 and rest.next_page_token == ""
    default = client.catalog.ListProducts(pb.ListProductsRequest())
    assert len(default.products) == 50


# --- SearchProducts ---------------------------------------------------------------------------


def test_search_ranks_name_matches_above_description_matches(
    running: Running, catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    create(staff, "TW-001", "Tea Towel", description="Dries a knife or two.")
    client = running.client()
    names = [
        p.name
        for p in client.catalog.SearchProducts(pb.SearchProductsRequest(query="Knife")).products
    ]
    assert names == ["Chef Knife", "Paring Knife", "Sharpening Stone", "Tea Towel"]
    archived = client.catalog.SearchProducts(
        pb.SearchProductsRequest(query="knife", show_archived=True)
    ).products
    assert "Old Knife" in [p.name for p in archived]
    first = client.catalog.SearchProducts(pb.SearchProductsRequest(query="knife", page_size=3))
    second = client.catalog.SearchProducts(
        pb.SearchProductsRequest(query="knife", page_size=3, page_token=first.next_page_token)
    )
    assert [p.name for p in [*first.products, *second.products]] == names
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "  ,;- "}, "query"),
        ({"query": "k" * 201}, "query"),
        ({"query": "knife", "page_size": -5}, "page_size"),
        ({"query": "knife", "page_token": "forged"}, "page_token"),
    ],
)
def test_search_rejects_bad_requests(
    running: Running, request_fields: dict[str, Any], field: str
) -> None:
    err = rpc_error(
        lambda: running.client().catalog.SearchProducts(pb.SearchProductsRequest(**request_fields))
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {field}


# --- UpdateProduct ----------------------------------------------------------------------------


def update_request(
    current: product_pb2.Product, paths: list[str], etag: str | None = None, **changes: Any
) -> pb.UpdateProductRequest:
    message = product_pb2.Product()
    message.CopyFrom(current)
    for name, value in changes.items():
        if name == "price":
            message.price.CopyFrom(common_pb2.Money(currency_code=value[0], amount_minor=value[1]))
        elif isinstance(getattr(message, name), (str, int)):
            setattr(message, name, value)
        else:
            field = getattr(message, name)
            del field[:]
            field.extend(value)
    return pb.UpdateProductRequest(
        product=message,
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        etag=current.etag if etag is None else etag,
    )


def test_update_changes_only_the_masked_fields(
    running: Running, catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    knife = catalog["knife"]
    request = update_request(
        knife,
        ["name", "price", "categories", "state", "create_time"],
        name="Chef's Knife",
        price=("USD", 5900),
        categories=["sale"],
        description="ignored: not in the mask",
    )
    request.product.state = product_pb2.PRODUCT_STATE_ARCHIVED  # output only: ignored
    updated = staff.catalog.UpdateProduct(request).product
    assert (updated.name, updated.price.amount_minor) == ("Chef's Knife", 5900)
    assert list(updated.categories) == ["sale"]
    assert updated.description == "Forged steel."
    assert updated.state == product_pb2.PRODUCT_STATE_ACTIVE
    assert updated.etag != knife.etag and updated.create_time == knife.create_time
    counts = {
        c.slug: c.product_count
        for c in running.client().catalog.ListCategories(pb.ListCategoriesRequest()).categories
    }
    assert counts["sale"] == 1 and "knives" not in counts  # no product names it any more

    attributes = struct_pb2.Struct()
    attributes.update({"finish": "matte"})
    request = update_request(updated, ["attributes", "price.amount_minor"], etag="")
    request.product.attributes.CopyFrom(attributes)
    request.product.price.amount_minor = 6100
    again = staff.catalog.UpdateProduct(request).product
    assert dict(again.attributes) == {"finish": "matte"} and again.price.amount_minor == 6100


def test_update_error_codes_and_nothing_written(
    running: Running, catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    knife = catalog["knife"]
    ghost = product_pb2.Product()
    ghost.CopyFrom(knife)
    ghost.id = str(uuid.uuid4())
    cases: list[tuple[pb.UpdateProductRequest, grpc.StatusCode, str]] = [
        (update_request(ghost, ["name"], name="X"), StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND"),
        (update_request(knife, [], name="X"), StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"),
        (
            update_request(knife, ["name", "stock"], name="X"),
            StatusCode.INVALID_ARGUMENT,
            "FIELD_INVALID",
        ),
        (update_request(knife, ["name"], name=""), StatusCode.INVALID_ARGUMENT, "FIELD_INVALID"),
        (
            update_request(knife, ["name"], etag='W/"999"', name="X"),
            StatusCode.ABORTED,
            "ETAG_MISMATCH",
        ),
        (
            update_request(knife, ["sku"], sku="kn-002"),
            StatusCode.ALREADY_EXISTS,
            "SKU_TAKEN",
        ),
        (
            update_request(catalog["old"], ["name"], etag="", name="X"),
            StatusCode.FAILED_PRECONDITION,
            "PRODUCT_ARCHIVED",
        ),
    ]
    for request, code, reason in cases:
        err = rpc_error(lambda r=request: staff.catalog.UpdateProduct(r))
        assert (err.code(), error_info(err)[0]) == (code, reason), request
    after = running.client().catalog.GetProduct(pb.GetProductRequest(product_id=knife.id))
    assert after.product == knife


def test_update_with_a_stale_etag_after_another_update_is_aborted(
    catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    knife = catalog["knife"]
    staff.catalog.UpdateProduct(update_request(knife, ["name"], name="First"))
    err = rpc_error(
        lambda: staff.catalog.UpdateProduct(update_request(knife, ["name"], name="Second"))
    )
    assert err.code() == StatusCode.ABORTED
    assert error_info(err)[0] == "ETAG_MISMATCH"


# --- ArchiveProduct, RestoreProduct -----------------------------------------------------------


def test_archive_hides_a_product_and_restore_brings_it_back(
    running: Running, catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    client = running.client()
    knife = catalog["knife"]
    archived = staff.catalog.ArchiveProduct(
        pb.ArchiveProductRequest(product_id=knife.id, etag=knife.etag)
    ).product
    assert archived.state == product_pb2.PRODUCT_STATE_ARCHIVED
    again = staff.catalog.ArchiveProduct(pb.ArchiveProductRequest(product_id=knife.id)).product
    assert again == archived  # idempotent: no new version
    assert "Chef Knife" not in [p.name for p in list_all(client)]
    search = client.catalog.SearchProducts(pb.SearchProductsRequest(query="chef")).products
    assert list(search) == []
    got = client.catalog.GetProduct(pb.GetProductRequest(product_id=knife.id)).product
    assert got.state == product_pb2.PRODUCT_STATE_ARCHIVED

    stale = rpc_error(
        lambda: staff.catalog.RestoreProduct(
            pb.RestoreProductRequest(product_id=knife.id, etag=knife.etag)
        )
    )
    assert stale.code() == StatusCode.ABORTED
    restored = staff.catalog.RestoreProduct(
        pb.RestoreProductRequest(product_id=knife.id, etag=archived.etag)
    ).product
    assert restored.state == product_pb2.PRODUCT_STATE_ACTIVE
    assert staff.catalog.RestoreProduct(pb.RestoreProductRequest(product_id=knife.id)).product == (
        restored
    )
    assert "Chef Knife" in [p.name for p in list_all(client)]


def test_archive_and_restore_error_codes(
    catalog: dict[str, product_pb2.Product], staff: StorefrontClient
) -> None:
    ghost = str(uuid.uuid4())
    for call in (
        lambda: staff.catalog.ArchiveProduct(pb.ArchiveProductRequest(product_id=ghost)),
        lambda: staff.catalog.RestoreProduct(pb.RestoreProductRequest(product_id=ghost)),
    ):
        assert rpc_error(call).code() == StatusCode.NOT_FOUND
    knife = catalog["knife"]
    err = rpc_error(
        lambda: staff.catalog.ArchiveProduct(
            pb.ArchiveProductRequest(product_id=knife.id, etag='W/"41"')
        )
    )
    assert (err.code(), error_info(err)[0]) == (StatusCode.ABORTED, "ETAG_MISMATCH")
    assert (
        rpc_error(
            lambda: staff.catalog.ArchiveProduct(pb.ArchiveProductRequest(product_id="x"))
        ).code()
        == StatusCode.INVALID_ARGUMENT
    )


# --- ListCategories ---------------------------------------------------------------------------


def test_categories_count_active_products_by_slug(
    running: Running, catalog: dict[str, product_pb2.Product]
) -> None:
    response = running.client().catalog.ListCategories(pb.ListCategoriesRequest())
    assert [(c.slug, c.product_count) for c in response.categories] == [
        ("kitchen", 3),
        ("knife-care", 1),
        ("knives", 1),
        ("retired", 0),
        ("textiles", 1),
    ]


# --- ImportProducts ---------------------------------------------------------------------------


def test_import_creates_and_updates_by_sku_and_reports_bad_rows(
    running: Running, staff: StorefrontClient
) -> None:
    existing = create(staff, "KN-001", "Chef Knife", categories=["kitchen"])
    rows = [
        product("KN-001", "Chef Knife v2", price=("USD", 5100)),
        product("KN-002", "Paring Knife", categories=["kitchen"]),
        product("bad sku!", "Broken"),
        product("KN-003", "Cheap", price=("XYZ", 1)),
        product("KN-004", "Bread Knife"),
    ]
    response = staff.catalog.ImportProducts(
        iter([pb.ImportProductsRequest(product=row) for row in rows])
    )
    assert (response.created_count, response.updated_count, response.failed_count) == (2, 1, 2)
    assert [(e.row, e.sku) for e in response.errors] == [(3, "bad sku!"), (4, "KN-003")]
    assert response.errors[0].message.startswith("sku: ")
    assert response.errors[1].message.startswith("price.currency_code: unknown currency")
    client = running.client()
    updated = client.catalog.GetProduct(pb.GetProductRequest(product_id=existing.id)).product
    assert (updated.name, updated.price.amount_minor) == ("Chef Knife v2", 5100)
    assert list(updated.categories) == []  # every field is replaced
    assert [p.name for p in list_all(client)] == ["Bread Knife", "Chef Knife v2", "Paring Knife"]


def test_an_empty_import_changes_nothing(staff: StorefrontClient) -> None:
    response = staff.catalog.ImportProducts(iter([]))
    assert (response.created_count, response.updated_count, response.failed_count) == (0, 0, 0)


def test_an_import_over_10000_rows_is_invalid_and_writes_nothing(
    running: Running, staff: StorefrontClient
) -> None:
    def rows() -> Iterator[pb.ImportProductsRequest]:
        for n in range(10_001):
            yield pb.ImportProductsRequest(product=product(f"BULK-{n:05d}", f"Bulk {n}"))

    err = rpc_error(lambda: staff.catalog.ImportProducts(rows(), timeout=60))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert list_all(running.client()) == []


# --- the product cache ------------------------------------------------------------------------


def test_get_after_update_on_the_same_server_returns_the_new_value(
    running: Running, staff: StorefrontClient
) -> None:
    knife = create(staff, "KN-001", "Chef Knife")
    reader = running.client()
    get = pb.GetProductRequest(product_id=knife.id)
    misses, hits = cache_requests(running, "miss"), cache_requests(running, "hit")
    assert reader.catalog.GetProduct(get).product.name == "Chef Knife"
    assert reader.catalog.GetProduct(get).product.name == "Chef Knife"
    assert cache_requests(running, "miss") == misses + 1
    assert cache_requests(running, "hit") == hits + 1

    staff.catalog.UpdateProduct(update_request(knife, ["name"], name="Chef's Knife"))
    assert reader.catalog.GetProduct(get).product.name == "Chef's Knife"
    staff.catalog.ArchiveProduct(pb.ArchiveProductRequest(product_id=knife.id))
    assert reader.catalog.GetProduct(get).product.state == product_pb2.PRODUCT_STATE_ARCHIVED
    row = pb.ImportProductsRequest(product=product("KN-001", "Imported Knife"))
    staff.catalog.ImportProducts(iter([row]))
    assert reader.catalog.GetProduct(get).product.name == "Imported Knife"
    batch = reader.catalog.BatchGetProducts(pb.BatchGetProductsRequest(product_ids=[knife.id]))
    assert batch.products[0].name == "Imported Knife"
