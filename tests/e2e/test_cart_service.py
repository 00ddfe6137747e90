"""CartService through the client SDK: every RPC, every status code, ownership, live prices."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from storefront.v1 import cart_service_pb2 as pb
from storefront.v1 import catalog_service_pb2, common_pb2, inventory_service_pb2, product_pb2
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from tests.conftest import insert_product
from tests.e2e.conftest import Running, rpc_error, violated_fields, visible_failure

StatusCode = grpc.StatusCode


def add(client: StorefrontClient, product_id: str, quantity: int) -> pb.AddCartItemResponse:
    return client.cart.AddCartItem(pb.AddCartItemRequest(product_id=product_id, quantity=quantity))


def products(running: Running, count: int, **fields: object) -> list[str]:
    with running.db.connection_context():
        return [insert_product(**fields) for _ in range(count)]  # type: ignore[arg-type]


@pytest.fixture
def customer(running: Running) -> StorefrontClient:
    return running.login(Role.CUSTOMER)


def test_the_whole_cart_flow(running: Running, customer: StorefrontClient) -> None:
    knife, pan = products(running, 2, on_hand=4)
    empty = customer.cart.GetCart(pb.GetCartRequest()).cart
    assert (list(empty.lines), list(empty.subtotals), empty.total_quantity) == ([], [], 0)
    assert not empty.HasField("update_time")

    added = add(customer, knife, 3)
    add(customer, pan, 1)
    more = add(customer, knife, 2)
    assert more.line_id == added.line_id
    cart = more.cart
    assert [(line.product_id, line.quantity) for line in cart.lines] == [(knife, 5), (pan, 1)]
    line = cart.lines[0]
    assert (line.id, line.sku, line.name) == (added.line_id, f"SKU-{knife[:8]}", "Widget")
    assert (line.unit_price.currency_code, line.unit_price.amount_minor) == ("EUR", 1000)
    assert line.line_total.amount_minor == 5000
    assert (line.available, line.in_stock) == (4, False)  # 5 wanted, 4 available
    assert cart.lines[1].in_stock is True
    assert line.product_state == product_pb2.PRODUCT_STATE_ACTIVE
    assert line.create_time.seconds > 0 and line.update_time.seconds > 0
    assert [(m.currency_code, m.amount_minor) for m in cart.subtotals] == [("EUR", 6000)]
    assert cart.total_quantity == 6 and cart.update_time.seconds > 0
    assert customer.cart.GetCart(pb.GetCartRequest()).cart == cart

    updated = customer.cart.UpdateCartItem(
        pb.UpdateCartItemRequest(line_id=added.line_id, quantity=4)
    ).cart
    assert (updated.lines[0].quantity, updated.lines[0].in_stock) == (4, True)
    removed = customer.cart.RemoveCartItem(pb.RemoveCartItemRequest(line_id=added.line_id)).cart
    assert [line.product_id for line in removed.lines] == [pan]
    pan_line = removed.lines[0].id
    gone = customer.cart.UpdateCartItem(pb.UpdateCartItemRequest(line_id=pan_line, quantity=0))
    assert list(gone.cart.lines) == []
    add(customer, pan, 1)
    assert list(customer.cart.EmptyCart(pb.EmptyCartRequest()).cart.lines) == []
    assert list(customer.cart.GetCart(pb.GetCartRequest()).cart.lines) == []


def test_the_cart_persists_across_sessions(running: Running) -> None:
    email = running.create_user(Role.CUSTOMER)
    [product_id] = products(running, 1)
    first = running.client()
    first.login(email, "correct horse battery staple")
    add(first, product_id, 2)
    second = running.client()
    second.login(email, "correct horse battery staple")
    assert [line.quantity for line in second.cart.GetCart(pb.GetCartRequest()).cart.lines] == [2]


def test_prices_and_names_shown_are_current(running: Running, customer: StorefrontClient) -> None:
    staff = running.login(Role.STAFF)
    created = staff.catalog.CreateProduct(
        catalog_service_pb2.CreateProductRequest(
            product=product_pb2.Product(
                sku="CART-1",
                name="Kettle",
                price=common_pb2.Money(currency_code="USD", amount_minor=2500),
            )
        )
    ).product
    staff.inventory.AdjustStock(
        inventory_service_pb2.AdjustStockRequest(
            product_id=created.id, delta=3, reason="delivery", request_id=str(uuid.uuid4())
        )
    )
    add(customer, created.id, 2)
    changed = product_pb2.Product()
    changed.CopyFrom(created)
    changed.name = "Kettle XL"
    changed.price.amount_minor = 3100
    staff.catalog.UpdateProduct(
        catalog_service_pb2.UpdateProductRequest(
            product=changed,
            update_mask=field_mask_pb2.FieldMask(paths=["name", "price"]),
            etag=created.etag,
        )
    )
    [line] = customer.cart.GetCart(pb.GetCartRequest()).cart.lines
    assert (line.name, line.unit_price.amount_minor, line.line_total.amount_minor) == (
        "Kettle XL",
        3100,
        6200,
    )
    assert (line.available, line.in_stock) == (3, True)


# --- status codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("product_id", "quantity", "fields"),
    [
        ("", 1, {"product_id"}),
        ("not-a-uuid", 1, {"product_id"}),
        (None, 0, {"quantity"}),
        (None, 100, {"quantity"}),
        (None, -5, {"quantity"}),
    ],
)
def test_add_invalid_argument(
    running: Running,
    customer: StorefrontClient,
    product_id: str | None,
    quantity: int,
    fields: set[str],
) -> None:
    if product_id is None:
        [product_id] = products(running, 1)
    err = rpc_error(lambda: add(customer, product_id, quantity))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


def test_add_unknown_product_is_not_found(customer: StorefrontClient) -> None:
    err = rpc_error(lambda: add(customer, str(uuid.uuid4()), 1))
    assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")


def test_add_archived_product_is_failed_precondition(
    running: Running, customer: StorefrontClient
) -> None:
    [product_id] = products(running, 1, state="ARCHIVED")
    err = rpc_error(lambda: add(customer, product_id, 1))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == ("PRODUCT_ARCHIVED", {"product_id": product_id})


def test_add_beyond_99_on_a_line_is_failed_precondition(
    running: Running, customer: StorefrontClient
) -> None:
    [product_id] = products(running, 1)
    line_id = add(customer, product_id, 60).line_id
    err = rpc_error(lambda: add(customer, product_id, 40))
    assert err.code() == StatusCode.FAILED_PRECONDITION
    assert error_info(err) == ("LINE_QUANTITY_EXCEEDED", {"line_id": line_id, "quantity": "60"})
    assert add(customer, product_id, 39).cart.lines[0].quantity == 99


def test_a_101st_line_is_failed_precondition(running: Running, customer: StorefrontClient) -> None:
    ids = products(running, 101)
    for product_id in ids[:100]:
        add(customer, product_id, 1)
    err = rpc_error(lambda: add(customer, ids[100], 1))
    assert (err.code(), error_info(err)[0]) == (StatusCode.FAILED_PRECONDITION, "CART_FULL")
    assert len(customer.cart.GetCart(pb.GetCartRequest()).cart.lines) == 100


@pytest.mark.parametrize(
    ("line_id", "quantity", "fields"),
    [
        ("", 1, {"line_id"}),
        ("x", 1, {"line_id"}),
        (None, -1, {"quantity"}),
        (None, 100, {"quantity"}),
    ],
)
def test_update_invalid_argument(
    running: Running,
    customer: StorefrontClient,
    line_id: str | None,
    quantity: int,
    fields: set[str],
) -> None:
    if line_id is None:
        [product_id] = products(running, 1)
        line_id = add(customer, product_id, 1).line_id
    err = rpc_error(
        lambda: customer.cart.UpdateCartItem(
            pb.UpdateCartItemRequest(line_id=line_id, quantity=quantity)
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


def test_remove_invalid_argument(customer: StorefrontClient) -> None:
    err = rpc_error(lambda: customer.cart.RemoveCartItem(pb.RemoveCartItemRequest(line_id="x")))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"line_id"}


def test_missing_lines_are_not_found(customer: StorefrontClient) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: customer.cart.UpdateCartItem(pb.UpdateCartItemRequest(line_id=missing, quantity=2)),
        lambda: customer.cart.RemoveCartItem(pb.RemoveCartItemRequest(line_id=missing)),
    ):
        err = rpc_error(call)
        assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "CART_LINE_NOT_FOUND")


def test_raising_an_archived_products_line_is_failed_precondition(
    running: Running, customer: StorefrontClient
) -> None:
    staff = running.login(Role.STAFF)
    [product_id] = products(running, 1)
    line_id = add(customer, product_id, 3).line_id
    current = staff.catalog.GetProduct(catalog_service_pb2.GetProductRequest(product_id=product_id))
    staff.catalog.ArchiveProduct(
        catalog_service_pb2.ArchiveProductRequest(product_id=product_id, etag=current.product.etag)
    )
    [line] = customer.cart.GetCart(pb.GetCartRequest()).cart.lines
    assert (line.product_state, line.in_stock) == (
        product_pb2.PRODUCT_STATE_ARCHIVED,
        False,
    )
    err = rpc_error(
        lambda: customer.cart.UpdateCartItem(pb.UpdateCartItemRequest(line_id=line_id, quantity=4))
    )
    assert (err.code(), error_info(err)[0]) == (StatusCode.FAILED_PRECONDITION, "PRODUCT_ARCHIVED")
    lowered = customer.cart.UpdateCartItem(pb.UpdateCartItemRequest(line_id=line_id, quantity=1))
    assert lowered.cart.lines[0].quantity == 1


# --- ownership ------------------------------------------------------------------------------------


def test_another_customers_lines_are_not_found_byte_identically(running: Running) -> None:
    alice, bob = running.login(Role.CUSTOMER), running.login(Role.CUSTOMER)
    [product_id] = products(running, 1)
    alices_line = add(alice, product_id, 2).line_id
    missing = str(uuid.uuid4())

    def bobs_answers(line_id: str) -> list[tuple[object, ...]]:
        return [
            visible_failure(
                lambda: bob.cart.UpdateCartItem(
                    pb.UpdateCartItemRequest(line_id=line_id, quantity=5)
                )
            ),
            visible_failure(
                lambda: bob.cart.UpdateCartItem(
                    pb.UpdateCartItemRequest(line_id=line_id, quantity=0)
                )
            ),
            visible_failure(
                lambda: bob.cart.RemoveCartItem(pb.RemoveCartItemRequest(line_id=line_id))
            ),
        ]

    foreign = bobs_answers(alices_line)
    assert foreign == bobs_answers(missing)
    assert all(code == StatusCode.NOT_FOUND for code, _, _ in foreign)

    # Bob's own cart stays his: empty, and emptying it leaves Alice's alone.
    assert list(bob.cart.GetCart(pb.GetCartRequest()).cart.lines) == []
    bob.cart.EmptyCart(pb.EmptyCartRequest())
    [line] = alice.cart.GetCart(pb.GetCartRequest()).cart.lines
    assert (line.id, line.quantity) == (alices_line, 2)


@pytest.mark.parametrize("role", [Role.STAFF, Role.ADMIN])
def test_only_customers_have_carts(running: Running, role: Role) -> None:
    client = running.login(role)
    err = rpc_error(lambda: client.cart.GetCart(pb.GetCartRequest()))
    assert err.code() == StatusCode.PERMISSION_DENIED


def test_anonymous_callers_are_unauthenticated(running: Running) -> None:
    err = rpc_error(lambda: running.client().cart.GetCart(pb.GetCartRequest()))
    assert err.code() == StatusCode.UNAUTHENTICATED


# --- AddCartItem with a request_id ---------------------------------------------------------------


def test_a_retried_add_with_its_request_id_adds_once(
    running: Running, customer: StorefrontClient
) -> None:
    knife, pan = products(running, 2, on_hand=10)
    request_id = str(uuid.uuid4())

    def add_knife(quantity: int = 2) -> pb.AddCartItemResponse:
        return customer.cart.AddCartItem(
            pb.AddCartItemRequest(product_id=knife, quantity=quantity, request_id=request_id)
        )

    first = add_knife()
    add(customer, pan, 1)  # the cart changes between the first call and its retry
    retried = add_knife()
    assert retried.line_id == first.line_id
    # The retry added nothing, and shows the cart as it is now.
    assert [(line.product_id, line.quantity) for line in retried.cart.lines] == [
        (knife, 2),
        (pan, 1),
    ]

    # The same request_id for another request is refused and changes nothing.
    for other in (
        lambda: add_knife(quantity=3),
        lambda: customer.cart.AddCartItem(
            pb.AddCartItemRequest(product_id=pan, quantity=2, request_id=request_id)
        ),
    ):
        err = rpc_error(other)
        assert err.code() == StatusCode.FAILED_PRECONDITION
        assert error_info(err)[0] == "IDEMPOTENCY_KEY_REUSED"
    lines = customer.cart.GetCart(pb.GetCartRequest()).cart.lines
    assert [(line.product_id, line.quantity) for line in lines] == [(knife, 2), (pan, 1)]

    # Without a request_id, every call adds.
    add(customer, knife, 2)
    add(customer, knife, 2)
    [knife_line, _] = customer.cart.GetCart(pb.GetCartRequest()).cart.lines
    assert knife_line.quantity == 6


def test_a_failed_add_is_not_remembered_under_its_request_id(
    running: Running, customer: StorefrontClient
) -> None:
    [scarce] = products(running, 1, on_hand=1)
    request_id = str(uuid.uuid4())
    request = pb.AddCartItemRequest(product_id=scarce, quantity=99, request_id=request_id)
    add(customer, scarce, 1)
    err = rpc_error(lambda: customer.cart.AddCartItem(request))  # 1 + 99 > 99
    assert error_info(err)[0] == "LINE_QUANTITY_EXCEEDED"
    customer.cart.EmptyCart(pb.EmptyCartRequest())
    # The refusal was not stored: the retry runs again and now succeeds.
    assert customer.cart.AddCartItem(request).cart.lines[0].quantity == 99


@pytest.mark.parametrize("request_id", ["not-a-uuid", "123", "x" * 36])
def test_a_malformed_request_id_is_invalid(
    running: Running, customer: StorefrontClient, request_id: str
) -> None:
    [product_id] = products(running, 1)
    err = rpc_error(
        lambda: customer.cart.AddCartItem(
            pb.AddCartItemRequest(product_id=product_id, quantity=1, request_id=request_id)
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"request_id"}
    assert list(customer.cart.GetCart(pb.GetCartRequest()).cart.lines) == []
