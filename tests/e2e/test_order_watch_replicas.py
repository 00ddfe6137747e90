"""An order placed through one replica and shipped through another, watched through a third.

Three real `storefront serve` processes on one database (a SQLite file or a PostgreSQL schema of
its own), the fake payment provider over HTTP holding the charge's answer for a moment so the
watcher connects while the order is still being paid.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path

from storefront.v1 import cart_service_pb2, checkout_service_pb2, order_pb2
from storefront.v1 import order_service_pb2 as pb
from storefront_client import StorefrontClient

from server import db as dbmod
from server.domain import users
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.models.order import Order
from tests.conftest import insert_product
from tests.e2e.test_cli import SERVING, START_SECONDS, Serving
from tests.e2e.test_shared_work import provider_env
from tests.e2e.test_webhook_delivery import database_url
from tests.fakes.payment_provider import FakePaymentProvider

__all__ = ["database_url"]  # the fixture

PASSWORD = "correct horse battery staple"
WAIT_SECONDS = 20.0
ADDRESS = order_pb2.Address(
    recipient_name="Grace Hopper", line1="Torstr. 1", city="Berlin", country_code="DE"
)


def test_a_watcher_on_a_third_replica_sees_placed_paid_shipped_in_order(
    tmp_path: Path, database_url: str
) -> None:
    db = dbmod.init_database(database_url, pool_size=2)
    hasher = PasswordHasher(concurrency=2)
    customer_email = f"buyer-{uuid.uuid4().hex[:6]}@example.com"
    staff_email = f"staff-{uuid.uuid4().hex[:6]}@example.com"
    with db.connection_context():
        customer_id = users.register(
            email=customer_email, password=PASSWORD, display_name="B", passwords=hasher
        ).id
        users.register(
            email=staff_email,
            password=PASSWORD,
            display_name="S",
            passwords=hasher,
            role=Role.STAFF,
        )
        product_id = insert_product(on_hand=5)

    with FakePaymentProvider() as provider:
        replicas: list[Serving] = []
        targets: list[str] = []
        try:
            for n in range(3):
                (tmp_path / f"replica-{n}").mkdir()
                env = provider_env(
                    tmp_path / f"replica-{n}",
                    provider,
                    STOREFRONT_DATABASE_URL=database_url,
                    STOREFRONT_RECONCILE_INTERVAL_SECONDS="0",
                )
                server = Serving(env)
                replicas.append(server)
                server.wait_for(SERVING, START_SECONDS)
                targets.append(env["STOREFRONT_GRPC_ADDRESS"])
            placer, shipper, watcher = targets

            provider.delay(2.0)  # the charge's answer takes a while: the order waits, PLACED
            placed: queue.Queue[order_pb2.Order | BaseException] = queue.Queue()

            def place() -> None:
                try:
                    with StorefrontClient(placer) as client:
                        client.login(customer_email, PASSWORD)
                        client.cart.AddCartItem(
                            cart_service_pb2.AddCartItemRequest(product_id=product_id, quantity=1)
                        )
                        placed.put(
                            client.checkout.PlaceOrder(
                                checkout_service_pb2.PlaceOrderRequest(
                                    request_id=str(uuid.uuid4()),
                                    shipping_address=ADDRESS,
                                    currency_code="EUR",
                                    payment_method_token="tok_visa",
                                ),
                                timeout=30,
                            ).order
                        )
                except BaseException as exc:
                    placed.put(exc)

            threading.Thread(target=place, daemon=True).start()
            order_id = ""
            deadline = time.monotonic() + WAIT_SECONDS
            while not order_id and time.monotonic() < deadline:
                with db.connection_context():
                    found = Order.get_or_none(Order.customer_id == customer_id)
                order_id = found.id if found else ""
                time.sleep(0.02)
            assert order_id, "the order was never created"

            with StorefrontClient(watcher) as customer:
                customer.login(customer_email, PASSWORD)
                updates = customer.watch_order(order_id)
                first = next(updates)
                assert (first.sequence, first.state) == (1, order_pb2.ORDER_STATE_PENDING_PAYMENT)

                order = placed.get(timeout=WAIT_SECONDS)
                assert isinstance(order, order_pb2.Order), order
                provider.delay(0)
                paid = next(updates)
                assert (paid.sequence, paid.event_type, paid.state) == (
                    2,
                    "order.payment_captured",
                    order_pb2.ORDER_STATE_PAID,
                )

                with StorefrontClient(shipper) as staff:
                    staff.login(staff_email, PASSWORD)
                    staff.orders.ShipOrder(
                        pb.ShipOrderRequest(
                            order_id=order_id,
                            request_id=str(uuid.uuid4()),
                            carrier="DHL",
                            tracking_number="T1",
                        )
                    )
                shipped = next(updates)
                assert (shipped.sequence, shipped.event_type, shipped.state) == (
                    3,
                    "order.shipped",
                    order_pb2.ORDER_STATE_SHIPPED,
                )
                updates.close()
        finally:
            for server in replicas:
                server.stop()
    db.close_all()  # type: ignore[attr-defined]
