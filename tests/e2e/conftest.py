"""A real storefront server on 127.0.0.1:0, with the production interceptor chain, per engine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import grpc
import peewee
import pytest
from google.rpc import error_details_pb2, status_pb2
from storefront.v1 import cart_service_pb2, checkout_service_pb2, order_pb2
from storefront_client import StorefrontClient, field_violations
from storefront_client.channel import channel_options

from server import db as dbmod
from server import migrations
from server.app import App, create_app
from server.config import Settings
from server.domain import users
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.models.product import Product
from tests.conftest import POSTGRES_URL, empty_tables, insert_product

PASSWORD = "correct horse battery staple"
UNLIMITED = "1000000/second"


def rpc_error(call: Callable[..., object]) -> grpc.RpcError:
    """Runs `call` and returns the RpcError it raises (fails the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def visible_failure(call: Callable[[], object]) -> tuple[object, ...]:
    """Everything a caller can see of a failure, byte for byte, but the per-call request id:
    (code, message, the serialised google.rpc.Status without its RequestInfo)."""
    err = rpc_error(call)
    [raw] = [
        value for key, value in err.trailing_metadata() or () if key == "grpc-status-details-bin"
    ]
    status = status_pb2.Status.FromString(raw)
    kept = [d for d in status.details if not d.Is(error_details_pb2.RequestInfo.DESCRIPTOR)]
    assert len(kept) == len(status.details) - 1
    del status.details[:]
    status.details.extend(kept)
    return err.code(), err.details(), status.SerializeToString(deterministic=True)


def violated_fields(err: grpc.RpcError) -> set[str]:
    """Returns the fields the error's BadRequest detail names."""
    return {field for field, _ in field_violations(err)}


def engine_url(engine: str, tmp: Path, schema: str | None) -> str:
    """Returns a database URL for `engine`; PostgreSQL URLs select the test's private schema."""
    if engine == "sqlite":
        return f"sqlite:///{tmp / 'storefront.db'}"
    assert schema is not None
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options={quote(f'-c search_path={schema}')}"


def make_settings(tmp: Path, database_url: str, **overrides: object) -> Settings:
    """Returns development settings on free ports, without a metrics endpoint unless asked."""
    base = Settings(
        data_dir=tmp,
        database_url=database_url,
        grpc_address="127.0.0.1:0",
        metrics_address="",
        worker_threads=8,
        db_pool_size=12,
        jwt_signing_key_file=tmp / "jwt-signing-key.pem",
        page_token_secret_file=tmp / "page-token.key",
        shutdown_grace_seconds=2.0,
        password_hash_concurrency=4,
        # Far above what any test sends: only tests of rate limiting lower them.
        rate_limit_sign_in=UNLIMITED,
        rate_limit_read=UNLIMITED,
        rate_limit_write=UNLIMITED,
        rate_limit_checkout=UNLIMITED,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class Running:
    """A started server and helpers to reach it."""

    app: App
    db: peewee.Database
    target: str
    passwords: PasswordHasher

    def channel(self) -> grpc.Channel:
        """Returns a new plaintext channel to the server, with connections of its own (as the
        SDK's: see storefront_client.channel)."""
        return grpc.insecure_channel(self.target, options=channel_options())

    def client(self) -> StorefrontClient:
        """Returns a new SDK client for the server."""
        return StorefrontClient(self.target)

    def create_user(self, role: Role = Role.CUSTOMER, email: str | None = None) -> str:
        """Creates a user directly in the database; returns the email (password: PASSWORD)."""
        email = email or f"{role.value.lower()}-{uuid.uuid4().hex[:8]}@example.com"
        with self.db.connection_context():
            users.register(
                email=email,
                password=PASSWORD,
                display_name=role.value.title(),
                passwords=self.passwords,
                role=role,
            )
        return email

    def login(self, role: Role = Role.CUSTOMER) -> StorefrontClient:
        """Returns a client signed in as a new user with `role`."""
        client = self.client()
        client.login(self.create_user(role), PASSWORD)
        return client


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def e2e_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A migrated database of one engine for the module: (data dir, URL)."""
    engine: str = request.param
    schema = request.getfixturevalue("postgres_schema") if engine == "postgres" else None
    tmp = tmp_path_factory.mktemp(f"e2e-{engine}")
    url = engine_url(engine, tmp, schema)
    db = dbmod.connect_url(url, pool_size=1)
    migrations.migrate(db)
    close_all = getattr(db, "close_all", None)
    if close_all:
        close_all()
    return tmp, url


@pytest.fixture
def server_factory(e2e_database_url: tuple[Path, str]) -> Iterator[Callable[..., Running]]:
    """Starts servers on the module's database, emptied first; stops them after the test."""
    tmp, url = e2e_database_url
    started: list[App] = []

    def start(**overrides: object) -> Running:
        settings = make_settings(tmp, str(overrides.pop("database_url", url)), **overrides)
        app = create_app(settings)
        if not started:
            # Before it starts: its background work (the dispatcher, woken as it starts
            # listening) must not race the emptying.
            empty_tables(app.db)
        started.append(app)
        app.start()
        return Running(app, app.db, f"127.0.0.1:{app.port}", PasswordHasher(concurrency=4))

    yield start
    for app in reversed(started):
        app.stop(grace=0)


@pytest.fixture
def running(server_factory: Callable[..., Running]) -> Running:
    """A started server with default settings on an empty database."""
    return server_factory()


BERLIN = order_pb2.Address(
    recipient_name="Ada Lovelace", line1="Torstr. 1", city="Berlin", country_code="DE"
)


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    """Polls `condition` until it holds or `seconds` pass; returns whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@dataclass(frozen=True)
class Purchase:
    """A paid order, its customer (signed in) and the customer's email."""

    customer: StorefrontClient
    email: str
    order: order_pb2.Order


def place_paid_order(
    running: Running, *, quantity: int = 1, product_name: str | None = None
) -> Purchase:
    """A new customer buys `quantity` units of a new product (EUR, to Berlin) through cart and
    checkout: the order is PLACED, then PAID (outbox sequences 1 and 2)."""
    with running.db.connection_context():
        product_id = insert_product(on_hand=10 + quantity)
        if product_name is not None:
            Product.update(name=product_name).where(Product.id == product_id).execute()
    email = running.create_user(Role.CUSTOMER)
    customer = running.client()
    customer.login(email, PASSWORD)
    customer.cart.AddCartItem(
        cart_service_pb2.AddCartItemRequest(product_id=product_id, quantity=quantity)
    )
    order = customer.checkout.PlaceOrder(
        checkout_service_pb2.PlaceOrderRequest(
            request_id=str(uuid.uuid4()),
            shipping_address=BERLIN,
            currency_code="EUR",
            payment_method_token="tok_visa",
        )
    ).order
    return Purchase(customer, email, order)
