"""Many processes on one database: the work of a killed process is taken over in seconds, and
background passes lease each unit of work to one process.

Real `storefront` processes on one SQLite file, and the fake payment provider over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront.v1 import checkout_service_pb2 as checkout_pb
from storefront.v1 import order_pb2, product_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront_client import StorefrontClient, error_info

from server import db as dbmod
from server.domain import idempotency, orders, product_cache, users
from server.domain.passwords import PasswordHasher
from server.models.stock import StockLevel
from server.payments import HttpPaymentGateway
from server.payments.http_gateway import charge_idempotency_header
from tests.conftest import insert_product
from tests.e2e.test_cli import (
    STOREFRONT,
    Serving,
    cli_env,
    pending_order,
    read_credentials,
    storefront,
)
from tests.fakes.payment_provider import SECRET_KEY, FakePaymentProvider

SERVING = "storefront is serving gRPC on "
WAIT_SECONDS = 30.0
PASSWORD = "correct horse battery staple"
BERLIN = order_pb2.Address(
    recipient_name="Erika Mustermann", line1="Hauptstrasse 1", city="Berlin", country_code="DE"
)


def provider_env(tmp_path: Path, provider: FakePaymentProvider, **variables: str) -> dict[str, str]:
    secret = tmp_path / "payment.key"
    secret.write_text(SECRET_KEY + "\n")
    return cli_env(
        tmp_path,
        STOREFRONT_PAYMENT_GATEWAY="http",
        STOREFRONT_PAYMENT_BASE_URL=provider.base_url,
        STOREFRONT_PAYMENT_SECRET_KEY_FILE=str(secret),
        **variables,
    )


def customer_and_product(db_path: Path, *, on_hand: int) -> tuple[str, str]:
    """Creates a customer (password PASSWORD) and a product in stock; returns (email, id)."""
    db = dbmod.init_database(f"sqlite:///{db_path}", pool_size=1)
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    with db.connection_context():
        users.register(
            email=email,
            password=PASSWORD,
            display_name="Buyer",
            passwords=PasswordHasher(concurrency=1),
        )
        product_id = insert_product(on_hand=on_hand)
    db.close_all()  # type: ignore[attr-defined]
    return email, product_id


def stock_of(db_path: Path, product_id: str) -> tuple[int, int]:
    db = dbmod.init_database(f"sqlite:///{db_path}", pool_size=1)
    with db.connection_context():
        level = StockLevel.get(StockLevel.product == product_id)
        result = (int(level.on_hand), int(level.reserved))
    db.close_all()  # type: ignore[attr-defined]
    return result


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_checkout_killed_mid_charge_is_finished_by_a_retry_within_seconds(
    tmp_path: Path,
) -> None:
    """kill -9 while the provider holds the charge's answer, restart, retry the same
    request_id: the dead process's claim is taken over once its heartbeat stops (seconds, not
    the stale-claim timeout), and the retry ends in one order, one charge, stock sold once."""
    db_path = tmp_path / "storefront.db"
    with FakePaymentProvider() as provider:
        provider.hang_seconds = 60.0
        env = provider_env(tmp_path, provider, STOREFRONT_RECONCILE_INTERVAL_SECONDS="0")
        assert storefront("migrate", env=env).returncode == 0
        email, product_id = customer_and_product(db_path, on_hand=5)

        first = Serving(env)
        try:
            first.wait_for(SERVING, WAIT_SECONDS)
            request = checkout_pb.PlaceOrderRequest(
                request_id=str(uuid.uuid4()),
                shipping_address=BERLIN,
                currency_code="EUR",
                payment_method_token="tok_visa",
            )
            provider.hang_next(1, processed=True)  # the charge is made, its answer never comes
            lost: list[grpc.RpcError] = []
            with StorefrontClient(env["STOREFRONT_GRPC_ADDRESS"]) as client:
                client.login(email, PASSWORD)
                client.cart.AddCartItem(
                    cart_pb.AddCartItemRequest(product_id=product_id, quantity=2)
                )

                def place() -> None:
                    try:
                        client.checkout.PlaceOrder(request, timeout=WAIT_SECONDS)
                    except grpc.RpcError as err:
                        lost.append(err)

                call = threading.Thread(target=place)
                call.start()
                assert wait_until(lambda: provider.total_charges_created() == 1)
                os.kill(first.process.pid, signal.SIGKILL)
                first.process.wait(timeout=WAIT_SECONDS)
                call.join(timeout=WAIT_SECONDS)
            assert [err.code() for err in lost] == [grpc.StatusCode.UNAVAILABLE]
        finally:
            first.stop()

        second_env = {
            **env,
            "STOREFRONT_GRPC_ADDRESS": cli_env(tmp_path)["STOREFRONT_GRPC_ADDRESS"],
        }
        second = Serving(second_env)
        try:
            second.wait_for(SERVING, WAIT_SECONDS)
            in_flight_answers = 0
            started = time.monotonic()
            with StorefrontClient(second_env["STOREFRONT_GRPC_ADDRESS"]) as client:
                client.login(email, PASSWORD)
                while True:
                    try:
                        order = client.checkout.PlaceOrder(request, timeout=WAIT_SECONDS).order
                        break
                    except grpc.RpcError as err:
                        reason, _ = error_info(err)
                        assert (err.code(), reason) == (
                            grpc.StatusCode.ABORTED,
                            "REQUEST_IN_FLIGHT",
                        )
                        in_flight_answers += 1
                        assert time.monotonic() - started < WAIT_SECONDS, "claim never taken over"
                        time.sleep(0.25)
                waited = time.monotonic() - started
                listed = client.orders.ListOrders(order_pb.ListOrdersRequest()).orders
        finally:
            second.stop()

        # The dead call's claim held the retry off only until its owner was seen dead
        # (instances.DEAD_AFTER), not for the stale-claim timeout that applied before.
        assert in_flight_answers >= 1
        assert waited < idempotency.STALE_CLAIM_AFTER.total_seconds() / 4
        assert order.state == order_pb2.ORDER_STATE_PAID
        assert [o.id for o in listed] == [order.id]
        assert provider.total_charges_created() == 1
        charge_key = charge_idempotency_header(orders.payment_key(order.id))
        assert provider.charges_created(charge_key) == 1
    assert stock_of(db_path, product_id) == (3, 0)


def test_three_reconcilers_at_once_settle_each_order_once_with_one_lookup_each(
    tmp_path: Path,
) -> None:
    """Three `storefront reconcile` processes started together over the same pending orders:
    each order is leased to one of them, asked about once and settled once."""
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    pending = [pending_order(tmp_path / "storefront.db", quantity=1)[0] for _ in range(12)]
    with FakePaymentProvider() as provider:
        gateway = HttpPaymentGateway(base_url=provider.base_url, secret_key=SECRET_KEY)
        charged = set(pending[::2])  # these charges reached the provider; the others never did
        for order_id in charged:
            gateway.charge(
                idempotency_key=orders.payment_key(order_id),
                amount_minor=500,
                currency="USD",
                payment_method_token="tok_visa",
                description=f"storefront order {order_id}",
            )
        provider.delay(0.05)  # each lookup takes a while, so the three passes overlap
        env = provider_env(tmp_path, provider)
        passes = [
            subprocess.Popen(
                [str(STOREFRONT), "reconcile"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        reports = []
        for process in passes:
            out, err = process.communicate(timeout=WAIT_SECONDS * 2)
            assert process.returncode == 0, err
            reports.append(json.loads(out))
        lookups = provider.lookups()

    paid = [order_id for report in reports for order_id in report["paid"]]
    failed = [order_id for report in reports for order_id in report["failed"]]
    assert sorted(paid) == sorted(charged)
    assert sorted(failed) == sorted(set(pending) - charged)
    assert {charge_idempotency_header(orders.payment_key(o)): 1 for o in pending} == lookups


def test_a_product_changed_through_one_process_is_read_fresh_from_another_within_the_ttl(
    tmp_path: Path,
) -> None:
    """The product cache is per process: another process serves its cached copy for at most
    product_cache.DEFAULT_TTL_SECONDS after a change, then the new one (the documented bound)."""
    env = cli_env(tmp_path)
    assert storefront("migrate", env=env).returncode == 0
    assert storefront("seed", env=env).returncode == 0
    admin = read_credentials(tmp_path / "demo-admin-credentials.txt")
    reader_env = {**env, **cli_env(tmp_path)}  # the same data, other ports
    writer, reader = Serving(env), Serving(reader_env)
    try:
        writer.wait_for(SERVING, WAIT_SECONDS)
        reader.wait_for(SERVING, WAIT_SECONDS)
        with (
            StorefrontClient(env["STOREFRONT_GRPC_ADDRESS"]) as staff,
            StorefrontClient(reader_env["STOREFRONT_GRPC_ADDRESS"]) as shopper,
        ):
            staff.login(admin["email"], admin["password"])
            first = staff.catalog.ListProducts(catalog_pb.ListProductsRequest(page_size=1))
            product = first.products[0]
            get = catalog_pb.GetProductRequest(product_id=product.id)
            assert (
                shopper.catalog.GetProduct(get).product.price == product.price
            )  # cached there now
            changed = product_pb2.Product(id=product.id, price=product.price)
            changed.price.amount_minor += 100
            staff.catalog.UpdateProduct(
                catalog_pb.UpdateProductRequest(
                    product=changed, update_mask=field_mask_pb2.FieldMask(paths=["price"])
                )
            )
            changed_at = time.monotonic()
            fresh = wait_until(
                lambda: shopper.catalog.GetProduct(get).product.price == changed.price
            )
            seen_after = time.monotonic() - changed_at
    finally:
        writer.stop()
        reader.stop()
    assert fresh
    assert seen_after <= product_cache.DEFAULT_TTL_SECONDS + 1.0
