"""At-least-once webhook delivery through crashes: 1,000 order events, a receiver that fails 30%
of requests, and the serving process killed with kill -9 twice while it delivers.

Real `storefront serve` processes on one database (SQLite file or a PostgreSQL schema of their
own), a real HTTP receiver on loopback.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peewee
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from standardwebhooks.webhooks import Webhook
from storefront.v1 import cart_service_pb2, checkout_service_pb2, order_pb2, order_service_pb2
from storefront.v1 import webhook_service_pb2 as pb
from storefront_client import StorefrontClient

from server import db as dbmod
from server import migrations
from server.domain import users
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.models.order import Order
from server.models.outbox_event import OutboxEvent
from tests.conftest import POSTGRES_URL, insert_product
from tests.e2e.conftest import wait_for
from tests.e2e.test_cli import SERVING, START_SECONDS, Serving, cli_env
from tests.fakes.webhook_receiver import WebhookReceiver

ORDERS = 250  # placed, paid, shipped, delivered: 4 events each
EVENTS = 4 * ORDERS
BUYERS = 5
PASSWORD = "correct horse battery staple"
DELIVERY_SECONDS = 180.0
ADDRESS = order_pb2.Address(
    recipient_name="Grace Hopper", line1="Torstr. 1", city="Berlin", country_code="DE"
)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of one engine that only this test uses."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'storefront.db'}"
        schema = None
    else:
        if not POSTGRES_URL:
            pytest.skip("STOREFRONT_TEST_POSTGRES_URL not set")
        schema = f"test_{uuid.uuid4().hex[:12]}"
        separator = "&" if "?" in POSTGRES_URL else "?"
        url = f"{POSTGRES_URL}{separator}options=-c%20search_path%3D{schema}"
        admin = dbmod.connect_url(POSTGRES_URL, pool_size=1)
        with admin.connection_context():
            admin.execute_sql(f'CREATE SCHEMA "{schema}"')
    db = dbmod.init_database(url, pool_size=2)
    migrations.migrate(db)
    yield url
    db.close_all()  # type: ignore[attr-defined]
    if schema is not None:
        with admin.connection_context():
            admin.execute_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close_all()  # type: ignore[attr-defined]


def people_and_product(db: peewee.Database) -> tuple[str, str, list[str], str]:
    """Creates an admin, a staff member, the buyers and a product; returns their emails and id."""
    hasher = PasswordHasher(concurrency=2)
    emails = {
        role: [f"{role.value.lower()}-{n}-{uuid.uuid4().hex[:6]}@example.com" for n in range(count)]
        for role, count in ((Role.ADMIN, 1), (Role.STAFF, 1), (Role.CUSTOMER, BUYERS))
    }
    with db.connection_context():
        for role, addresses in emails.items():
            for email in addresses:
                users.register(
                    email=email, password=PASSWORD, display_name="x", passwords=hasher, role=role
                )
        product_id = insert_product(on_hand=10 * ORDERS)
    return emails[Role.ADMIN][0], emails[Role.STAFF][0], emails[Role.CUSTOMER], product_id


def buy_ship_deliver(target: str, buyer: str, staff: str, product_id: str, count: int) -> None:
    """One buyer's orders, each taken through PLACED, PAID, SHIPPED and DELIVERED."""
    with StorefrontClient(target) as customer, StorefrontClient(target) as clerk:
        customer.login(buyer, PASSWORD)
        clerk.login(staff, PASSWORD)
        for _ in range(count):
            customer.cart.AddCartItem(
                cart_service_pb2.AddCartItemRequest(product_id=product_id, quantity=1)
            )
            order = customer.checkout.PlaceOrder(
                checkout_service_pb2.PlaceOrderRequest(
                    request_id=str(uuid.uuid4()),
                    shipping_address=ADDRESS,
                    currency_code="EUR",
                    payment_method_token="tok_visa",
                )
            ).order
            clerk.orders.ShipOrder(
                order_service_pb2.ShipOrderRequest(
                    order_id=order.id,
                    request_id=str(uuid.uuid4()),
                    carrier="DHL",
                    tracking_number="1",
                )
            )
            clerk.orders.MarkOrderDelivered(
                order_service_pb2.MarkOrderDeliveredRequest(
                    order_id=order.id, request_id=str(uuid.uuid4())
                )
            )


@pytest.mark.timeout(600)
def test_every_event_arrives_signed_through_failures_and_two_kills(
    tmp_path: Path, database_url: str
) -> None:
    db = dbmod.init_database(database_url, pool_size=2)
    admin_email, staff_email, buyers, product_id = people_and_product(db)
    env = cli_env(
        tmp_path,
        STOREFRONT_DATABASE_URL=database_url,
        STOREFRONT_WEBHOOK_ALLOW_HTTP="true",
        STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
        STOREFRONT_DISPATCH_INTERVAL_SECONDS="0.05",
        # 21 attempts: at a 30% failure rate an event parks with a chance of 0.3**21 (1e-11).
        STOREFRONT_DELIVERY_RETRY_SCHEDULE=",".join(["0.05"] * 20),
        STOREFRONT_WEBHOOK_TIMEOUT_SECONDS="1",
        STOREFRONT_RATE_LIMIT_WRITE="100000/second",
        STOREFRONT_RATE_LIMIT_READ="100000/second",
        STOREFRONT_RATE_LIMIT_CHECKOUT="100000/second",
        STOREFRONT_RATE_LIMIT_SIGN_IN="100000/second",
    )
    target = env["STOREFRONT_GRPC_ADDRESS"]
    servers: list[Serving] = []

    def serve() -> Serving:
        server = Serving(env)
        servers.append(server)
        server.wait_for(SERVING, START_SECONDS)
        return server

    with WebhookReceiver(failure_rate=0.3) as receiver:
        try:
            first = serve()
            with StorefrontClient(target) as admin:
                admin.login(admin_email, PASSWORD)
                created = admin.webhooks.CreateWebhookEndpoint(
                    pb.CreateWebhookEndpointRequest(endpoint=pb.WebhookEndpoint(url=receiver.url))
                )
                endpoint = created.endpoint
                # Held while the orders are made, so that the kills fall in the delivery.
                endpoint.disabled = True
                mask = FieldMask(paths=["disabled"])
                admin.webhooks.UpdateWebhookEndpoint(
                    pb.UpdateWebhookEndpointRequest(endpoint=endpoint, update_mask=mask)
                )
                with ThreadPoolExecutor(BUYERS) as pool:
                    for done in [
                        pool.submit(
                            buy_ship_deliver,
                            target,
                            buyer,
                            staff_email,
                            product_id,
                            ORDERS // BUYERS,
                        )
                        for buyer in buyers
                    ]:
                        done.result()
                assert receiver.received() == []
                endpoint.disabled = False
                admin.webhooks.UpdateWebhookEndpoint(
                    pb.UpdateWebhookEndpointRequest(endpoint=endpoint, update_mask=mask)
                )

            def distinct() -> int:
                return len({r.headers["webhook-id"] for r in receiver.received()})

            assert wait_for(lambda: distinct() >= EVENTS // 4, DELIVERY_SECONDS)
            first.process.kill()  # kill -9, deliveries leased and in flight
            first.process.wait()
            second = serve()
            assert wait_for(lambda: distinct() >= EVENTS * 3 // 5, DELIVERY_SECONDS)
            second.process.kill()
            second.process.wait()
            serve()
            assert wait_for(lambda: distinct() >= EVENTS, DELIVERY_SECONDS), distinct()
        finally:
            for server in servers:
                server.stop()

        requests = receiver.received()
        failures = receiver.failures

    with db.connection_context():
        events = {
            e.id: e for e in OutboxEvent.select().where(OutboxEvent.aggregate_type == "order")
        }
        states = {o.id: o.state for o in Order.select(Order.id, Order.state)}
    db.close_all()  # type: ignore[attr-defined]
    assert len(events) == EVENTS and len(states) == ORDERS

    # Every event arrived, each signature verifies under the endpoint's secret.
    signer = Webhook(created.secret)
    bodies = [signer.verify(r.body, r.headers) for r in requests]
    ids = [r.headers["webhook-id"] for r in requests]
    assert set(ids) == set(events)
    duplicates = len(ids) - len(set(ids))
    print(
        f"\n{EVENTS} events: {len(ids)} requests accepted, {duplicates} duplicates, "
        f"{failures} answered 500"
    )

    # Per order, the first arrivals come in sequence order, and the last to_state is the
    # order's final state.
    seen: set[str] = set()
    arrived: dict[str, list[int]] = defaultdict(list)
    final: dict[str, str] = {}
    for event_id, body in zip(ids, bodies, strict=True):
        if event_id in seen:
            continue
        seen.add(event_id)
        data = body["data"]
        arrived[data["order_id"]].append(data["sequence"])
        final[data["order_id"]] = data["to_state"]
    assert all(sequence == [1, 2, 3, 4] for sequence in arrived.values())
    assert final == states
    assert set(final.values()) == {"DELIVERED"}
    assert json.loads(requests[0].body)["type"].startswith("order.")
