"""Replicas on PostgreSQL behind nginx (deploy/cluster.py), and the tools to load and inspect them.

The replicas are real `storefront serve` processes and every call goes through a real nginx, as
in production; the test process reads and seeds the database directly (users with a precomputed
password hash, products) only to keep set-up fast.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from storefront.v1 import cart_service_pb2 as cart_pb
from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront.v1 import checkout_service_pb2 as checkout_pb
from storefront_client import StorefrontClient, error_info

from deploy import cluster
from server import db as dbmod
from server.domain.passwords import PasswordHasher
from server.models.product import Product
from server.models.stock import StockLevel
from server.models.user import User
from tests.conftest import POSTGRES_URL
from tests.e2e.test_checkout_concurrency import order_request
from tests.fakes.payment_provider import SECRET_KEY, FakePaymentProvider

IN_CI = bool(os.environ.get("CI"))
PASSWORD = "correct horse battery staple"
UNLIMITED = "1000000/second"
CALL_TIMEOUT = 30.0  # far above what a call takes; only a hang reaches it
WAIT_SECONDS = 20.0  # upper bound for any wait; the tests normally finish far sooner
T = TypeVar("T")


def missing(what: str) -> NoReturn:
    """Skips where `what` is missing on a developer's machine; fails in CI, which installs it."""
    if IN_CI:
        pytest.fail(f"{what}: CI must provide it (.ci/install-system-packages, .ci/run)")
    pytest.skip(what)


def replica_variables(**overrides: str) -> dict[str, str]:
    """STOREFRONT_* settings of the test replicas: limits far above what any test sends, a small
    pool (three replicas share one PostgreSQL), a quick database health watch."""
    variables = {
        "STOREFRONT_RATE_LIMIT_SIGN_IN": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_READ": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_WRITE": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_CHECKOUT": UNLIMITED,
        "STOREFRONT_MAX_CONCURRENT_RPCS": "512",
        "STOREFRONT_WORKER_THREADS": "8",
        "STOREFRONT_DB_POOL_SIZE": "12",
        "STOREFRONT_HEALTH_CHECK_SECONDS": "0.2",
        "STOREFRONT_SHUTDOWN_GRACE_SECONDS": "10",
    }
    variables.update(overrides)
    return variables


def in_parallel(calls: Sequence[Callable[[], T]], *, threads: int = 16) -> list[T]:
    """Runs the calls on a pool and returns their results in order."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda call: call(), calls))


def all_at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Runs every call on its own thread, released together from a barrier."""
    barrier = threading.Barrier(len(calls))

    def start(call: Callable[[], T]) -> T:
        barrier.wait(timeout=CALL_TIMEOUT)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(start, calls))


# --- outcomes -------------------------------------------------------------------------------------

Outcome = tuple[str, str]  # ("OK", order id) or (code name, ErrorInfo reason)


def outcome_of(call: Callable[[], str]) -> Outcome:
    """Runs `call` (which returns an id) and returns its outcome instead of raising."""
    try:
        return "OK", call()
    except grpc.RpcError as err:
        return err.code().name, error_info(err)[0]


def settled(call: Callable[[], str], seconds: float) -> tuple[Outcome, list[Outcome]]:
    """Repeats `call` (the same request, so the same request_id) while it fails with
    UNAVAILABLE or ABORTED REQUEST_IN_FLIGHT, for up to `seconds`; returns the last outcome and
    the failures that were repeated."""
    deadline = time.monotonic() + seconds
    repeated: list[Outcome] = []
    result = outcome_of(call)
    while result[0] != "OK" and time.monotonic() < deadline:
        if result[0] != "UNAVAILABLE" and result != ("ABORTED", "REQUEST_IN_FLIGHT"):
            break
        repeated.append(result)
        time.sleep(random.uniform(0.05, 0.2))
        result = outcome_of(call)
    return result, repeated


# --- the database, seen from the test -------------------------------------------------------------


class Store:
    """The cluster's database, read and seeded by the test process directly (no RPC)."""

    def __init__(self, url: str) -> None:
        self.db = dbmod.connect_url(url, pool_size=4)
        self._password_hash: str | None = None

    def close(self) -> None:
        self.db.close_all()  # type: ignore[attr-defined]

    def create_users(self, count: int, *, role: str = "CUSTOMER") -> list[tuple[str, str]]:
        """Creates users with PASSWORD; returns their (id, email).

        One hash serves them all: made with the server's parameters, so sign-in verifies it as
        usual and does not rehash.
        """
        if self._password_hash is None:
            self._password_hash = PasswordHasher().hash(PASSWORD)
        users = [
            (str(uuid.uuid4()), f"{role.lower()}-{uuid.uuid4().hex[:12]}@example.com")
            for _ in range(count)
        ]
        rows = [
            {
                "id": user_id,
                "email": email,
                "display_name": role.title(),
                "role": role,
                "password_hash": self._password_hash,
            }
            for user_id, email in users
        ]
        with self.db.connection_context(), self.db.atomic():
            User.insert_many(rows).execute(self.db)
        return users

    def create_products(self, count: int, *, on_hand: int) -> list[str]:
        """Creates active products (EUR 10.00) with `on_hand` units each; returns their ids."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        with self.db.connection_context(), self.db.atomic():
            Product.insert_many(
                [
                    {
                        "id": product_id,
                        "sku": f"SKU-{product_id[:13]}",
                        "name": "Widget",
                        "price_currency": "EUR",
                        "price_minor": 1000,
                        "state": "ACTIVE",
                    }
                    for product_id in ids
                ]
            ).execute(self.db)
            StockLevel.insert_many(
                [{"product": product_id, "on_hand": on_hand, "reserved": 0} for product_id in ids]
            ).execute(self.db)
        return ids

    def stock(self, product_id: str) -> tuple[int, int]:
        """(on_hand, reserved) of the product."""
        with self.db.connection_context():
            row = self.db.execute_sql(
                "SELECT on_hand, reserved FROM stock_levels WHERE product_id = %s", (product_id,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def orders(self) -> dict[str, tuple[str, str, str]]:
        """Every order: id -> (customer id, request_id, state)."""
        with self.db.connection_context():
            rows = self.db.execute_sql(
                "SELECT id, customer_id, request_id, state FROM orders"
            ).fetchall()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


@dataclass
class Customer:
    """A customer signed in through nginx."""

    client: StorefrontClient
    id: str


# --- a cluster for the module ---------------------------------------------------------------------


@dataclass
class Shop:
    """Replicas on one database behind nginx, the database seen directly, the card provider
    they pay through (None: the sandbox), and the clients opened through nginx."""

    cluster: cluster.Cluster
    store: Store
    provider: FakePaymentProvider | None
    clients: list[StorefrontClient] = field(default_factory=list)

    def client(self) -> StorefrontClient:
        """A new anonymous SDK client calling through nginx (default retry policy)."""
        client = StorefrontClient(self.cluster.address)
        self.clients.append(client)
        return client

    def customers(self, count: int) -> list[Customer]:
        """Creates `count` customers and signs each in through nginx."""
        users = self.store.create_users(count)

        def sign_in(user: tuple[str, str]) -> Customer:
            client = self.client()
            client.login(user[1], PASSWORD)
            return Customer(client, user[0])

        return in_parallel([partial(sign_in, user) for user in users])

    def close(self) -> None:
        for client in self.clients:
            client.close()


def require_nginx() -> None:
    if cluster.nginx_executable() is None:
        missing("nginx is not installed (Debian: nginx-light)")


def require_postgres_url() -> str:
    if not POSTGRES_URL:
        if IN_CI:
            pytest.fail("STOREFRONT_TEST_POSTGRES_URL must be set in CI")
        pytest.skip("STOREFRONT_TEST_POSTGRES_URL not set")
    return POSTGRES_URL


@pytest.fixture(scope="module")
def cluster_database_url() -> Iterator[str]:
    """A database of the module's own on the shared test PostgreSQL, dropped at the end (other
    tests' schemas are never touched)."""
    url = cluster.with_database(
        require_postgres_url(), f"storefront_cluster_{uuid.uuid4().hex[:12]}"
    )
    cluster.create_database(url)
    try:
        yield url
    finally:
        cluster.drop_database(url)


@pytest.fixture(scope="module")
def shop(cluster_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """The module's cluster: 3 replicas paying through the fake provider, behind nginx."""
    require_nginx()
    directory = tmp_path_factory.mktemp("cluster")
    secret = directory / "payment.key"
    secret.write_text(SECRET_KEY + "\n")
    with FakePaymentProvider() as provider:
        variables = replica_variables(
            STOREFRONT_PAYMENT_GATEWAY="http",
            STOREFRONT_PAYMENT_BASE_URL=provider.base_url,
            STOREFRONT_PAYMENT_SECRET_KEY_FILE=str(secret),
        )
        with cluster.running_cluster(
            cluster_database_url, directory, variables=variables
        ) as running:
            shop = Shop(running, Store(cluster_database_url), provider)
            try:
                yield shop
            finally:
                shop.close()
                shop.store.close()


@pytest.fixture
def serving_shop(shop: Shop) -> Iterator[Shop]:
    """The module's cluster with every replica serving (a test before may have stopped one) and
    a provider that answers at once."""
    assert shop.provider is not None
    shop.cluster.restart_stopped()
    shop.provider.delay(0)
    yield shop
    shop.provider.delay(0)


# --- metrics --------------------------------------------------------------------------------------


def metric_samples(
    replica: cluster.Replica, *names: str
) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the metrics `names` on the replica's /metrics, from one scrape:
    (name, labels, value)."""
    with urllib.request.urlopen(f"http://{replica.metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    ]


def handled(replica: cluster.Replica, method: str) -> float:
    """Calls of `method` the replica has finished, whatever their code."""
    return sum(
        value
        for _, labels, value in metric_samples(replica, "grpc_server_handled_total")
        if labels["grpc_method"] == method
    )


def in_flight(replica: cluster.Replica, method: str) -> float:
    """Calls of `method` the replica has started and not finished."""
    counts = {"grpc_server_started_total": 0.0, "grpc_server_handled_total": 0.0}
    for name, labels, value in metric_samples(replica, *counts):
        if labels["grpc_method"] == method:
            counts[name] += value
    return counts["grpc_server_started_total"] - counts["grpc_server_handled_total"]


# --- load -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the load saw."""

    reads: int = 0
    read_failures: list[str] = field(default_factory=list)
    orders: dict[str, str] = field(default_factory=dict)  # request_id -> order id
    buyers: dict[str, str] = field(default_factory=dict)  # request_id -> customer id
    failures: list[tuple[str, str, Outcome]] = field(default_factory=list)  # method, id, outcome
    # Failures the test repeated (beyond the SDK's own retries), by outcome.
    repeated: Counter[Outcome] = field(default_factory=Counter)


class Load:
    """Readers (GetProduct) and buyers (AddCartItem + PlaceOrder, each buyer on a product of
    their own) calling through nginx on threads, until stopped.

    Readers rely on the SDK's retries alone. A buyer's failed call is repeated with the same
    request_id for up to `settle_seconds` (0: never), as a client that must know the outcome of
    a checkout would do.
    """

    def __init__(
        self,
        shop: Shop,
        *,
        readers: int,
        buyers: Sequence[tuple[Customer, str]],
        settle_seconds: float,
    ) -> None:
        self.tally = Tally()
        self._settle_seconds = settle_seconds
        self._products = [product_id for _, product_id in buyers]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, args=(shop.client(),), daemon=True)
            for _ in range(readers)
        ] + [
            threading.Thread(target=self._buy, args=(customer, product_id), daemon=True)
            for customer, product_id in buyers
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Lets every caller finish (and settle) its current call, then returns."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._settle_seconds + 2 * CALL_TIMEOUT)
        assert not any(thread.is_alive() for thread in self._threads), "a caller hangs"

    def orders_placed(self) -> int:
        """How many checkouts were acknowledged so far."""
        with self._lock:
            return len(self.tally.orders)

    def acknowledged(self) -> set[str]:
        """The ids of the orders acknowledged so far."""
        with self._lock:
            return set(self.tally.orders.values())

    def _read(self, client: StorefrontClient) -> None:
        while not self._stop.is_set():
            request = catalog_pb.GetProductRequest(product_id=random.choice(self._products))
            try:
                client.catalog.GetProduct(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                with self._lock:
                    self.tally.read_failures.append(err.code().name)
            else:
                with self._lock:
                    self.tally.reads += 1

    def _call(self, method: str, request_id: str, call: Callable[[], str]) -> str | None:
        result, repeated = settled(call, self._settle_seconds)
        with self._lock:
            self.tally.repeated.update(repeated)
            if result[0] != "OK":
                self.tally.failures.append((method, request_id, result))
                return None
        return result[1]

    def _buy(self, customer: Customer, product_id: str) -> None:
        while not self._stop.is_set():
            add = cart_pb.AddCartItemRequest(
                product_id=product_id, quantity=1, request_id=str(uuid.uuid4())
            )
            added = self._call("AddCartItem", add.request_id, partial(_add, customer, add))
            if added is None:
                continue
            request = order_request()
            order_id = self._call(
                "PlaceOrder", request.request_id, partial(_place, customer, request)
            )
            if order_id is not None:
                with self._lock:
                    self.tally.orders[request.request_id] = order_id
                    self.tally.buyers[request.request_id] = customer.id


def _add(customer: Customer, request: cart_pb.AddCartItemRequest) -> str:
    return customer.client.cart.AddCartItem(request, timeout=CALL_TIMEOUT).line_id


def _place(customer: Customer, request: checkout_pb.PlaceOrderRequest) -> str:
    return customer.client.checkout.PlaceOrder(request, timeout=CALL_TIMEOUT).order.id


# --- a PostgreSQL server of the test's own --------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


class PrivatePostgres:
    """A PostgreSQL server in a scratch directory on a free port, which a test may stop and
    start at will (the shared one serves other tests).

    PostgreSQL refuses to run as root: when the tests run as root, its commands run as the
    `postgres` OS user, which owns the directory.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = cluster.free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="storefront-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, check=False, timeout=60
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr}\n{log}")

    def init(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Starts the server and returns once it accepts connections."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            # Durability across an OS crash is not what the tests are about.
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stops the server; "immediate" ends it as a crash would (recovery at the next start)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stops the server if it runs and deletes its directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running PostgreSQL server of the test's own, removed at the end."""
    require_postgres_url()  # the PostgreSQL half of the suite runs only where it is configured
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and not _has_user("postgres"):
        missing("running as root, PostgreSQL needs the `postgres` OS user to run as")
    server = PrivatePostgres(bin_dir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
