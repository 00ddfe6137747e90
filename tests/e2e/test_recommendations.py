"""ListRelatedProducts and ListRecommendedProducts on a crafted order history, both engines.

Orders go through the real checkout; the counts move as the dispatcher hands the orders' events
on, so each read waits until the history is counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from storefront.v1 import catalog_service_pb2 as pb
from storefront.v1 import order_service_pb2 as order_pb

from server.domain import dispatch
from server.domain.principal import Role
from server.models.product import Product, ProductCategory
from server.models.recommendation import ProductSales
from tests.e2e.conftest import Running, rpc_error, wait_for
from tests.e2e.test_checkout_service import Customer, add, order_request, place, product, sign_in

StatusCode = grpc.StatusCode


def buy(running: Running, basket: dict[str, int]) -> tuple[Customer, str]:
    customer = sign_in(running)
    for product_id, quantity in basket.items():
        add(customer, product_id, quantity)
    return customer, place(customer, order_request()).id


def related(running: Running, product_id: str, page_size: int = 0) -> list[str]:
    found = running.client().catalog.ListRelatedProducts(
        pb.ListRelatedProductsRequest(product_id=product_id, page_size=page_size)
    )
    return [p.id for p in found.products]


@pytest.fixture
def shop(running: Running) -> dict[str, str]:
    """Products a..f; a, d, e and f are in the "kitchen" category."""
    names = {name: product(running, on_hand=100) for name in "abcdef"}
    with running.db.connection_context():
        for name in "adef":
            ProductCategory.create(product=names[name], slug="kitchen")
    return names


def test_products_bought_together_come_first_then_the_categorys_best_sellers(
    running: Running, shop: dict[str, str]
) -> None:
    a, b, c, d, e, f = (shop[name] for name in "abcdef")
    buy(running, {a: 1, b: 1})
    buy(running, {a: 1, b: 2})
    buy(running, {a: 1, c: 1})
    buy(running, {b: 1, c: 1})
    buy(running, {e: 3})  # in the kitchen e outsells d, which outsells f
    buy(running, {d: 1})
    cancelled_by, cancelled = buy(running, {a: 1, c: 1, d: 1})
    cancelled_by.client.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=cancelled, request_id=str(uuid.uuid4()))
    )
    # b twice, c once (the cancelled order taken back out); then the kitchen: e (3 units), d
    # (1: its cancelled sale taken back out), f (none).
    expected = [b, c, e, d, f]
    names = {v: k for k, v in shop.items()}
    assert wait_for(lambda: related(running, a) == expected, 20), [
        names[p] for p in related(running, a)
    ]
    assert related(running, a, page_size=1) == [b]
    assert related(running, b) == [a, c]  # b has no category: nothing to fill with

    with running.db.connection_context():
        Product.update(state="ARCHIVED").where(Product.id == c).execute()
    now = [names[p] for p in related(running, a)]
    assert now == ["b", "e", "d", "f"]  # only ACTIVE products


def test_a_customers_picks_come_from_their_history_then_the_best_sellers(
    running: Running, shop: dict[str, str]
) -> None:
    a, b, c, d, e, f = (shop[name] for name in "abcdef")
    buy(running, {a: 1, b: 1})
    buy(running, {a: 1, b: 1, d: 1})
    buy(running, {c: 1, d: 1})
    buy(running, {f: 5})
    me, _ = buy(running, {a: 1})

    def picks() -> list[str]:
        found = me.client.catalog.ListRecommendedProducts(pb.ListRecommendedProductsRequest())
        return [p.id for p in found.products]

    # With a: b twice, d once; then best sellers not bought: f (5 units), c (1), e (0).
    assert wait_for(lambda: picks() == [b, d, f, c, e], 20), picks()
    newcomer = running.login(Role.CUSTOMER)
    best = newcomer.catalog.ListRecommendedProducts(pb.ListRecommendedProductsRequest(page_size=2))
    assert [p.id for p in best.products] == [f, a]  # f 5 units, a 3


def test_unknown_products_and_bad_page_sizes_are_refused(running: Running) -> None:
    client = running.client()
    missing = rpc_error(
        lambda: client.catalog.ListRelatedProducts(
            pb.ListRelatedProductsRequest(product_id=str(uuid.uuid4()))
        )
    )
    assert missing.code() == StatusCode.NOT_FOUND
    negative = rpc_error(
        lambda: client.catalog.ListRelatedProducts(
            pb.ListRelatedProductsRequest(product_id=str(uuid.uuid4()), page_size=-1)
        )
    )
    assert negative.code() == StatusCode.INVALID_ARGUMENT
    anonymous = rpc_error(
        lambda: client.catalog.ListRecommendedProducts(pb.ListRecommendedProductsRequest())
    )
    assert anonymous.code() == StatusCode.UNAUTHENTICATED


def test_a_payment_and_its_cancellation_handed_on_together_cancel_out(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(dispatch_interval_seconds=0)  # only the fan-out below counts
    a, b = product(running, on_hand=10), product(running, on_hand=10)
    customer, order_id = buy(running, {a: 1, b: 1})
    customer.client.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=order_id, request_id=str(uuid.uuid4()))
    )
    buy(running, {a: 1, b: 1})
    with running.db.connection_context():
        assert dispatch.fan_out() > 0  # the orders' events, both orders', in one batch
        assert dispatch.fan_out() == 0
    assert related(running, a) == [b]  # counted once: the cancelled order's purchase is not
    with running.db.connection_context():
        sales = ProductSales.get(ProductSales.product_id == a)
    assert (sales.units, sales.order_count) == (1, 1)
