"""The `storefront` command as operators run it: real subprocesses on SQLite."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from storefront.v1 import access_pb2
from storefront.v1 import identity_service_pb2 as pb
from storefront_client import StorefrontClient

from server import db as dbmod
from server.cli.admin import DATABASE_VARIABLES, RECONCILE_VARIABLES
from server.config import VARIABLES
from server.domain.passwords import PasswordHasher
from server.models.user import User

STOREFRONT = Path(sys.executable).with_name("storefront")
SERVING = "storefront is serving gRPC on "
START_SECONDS = 20.0
COMMAND_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_env(data_dir: Path, **variables: str) -> dict[str, str]:
    """The parent's environment without any STOREFRONT_* variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    env.update(
        STOREFRONT_DATA_DIR=str(data_dir),
        STOREFRONT_GRPC_ADDRESS=f"127.0.0.1:{free_port()}",
        STOREFRONT_METRICS_ADDRESS=f"127.0.0.1:{free_port()}",
        STOREFRONT_SHUTDOWN_GRACE_SECONDS="2",
    )
    env.update(variables)
    return env


def log_records(stderr: str) -> list[dict[str, object]]:
    """Parses a command's stderr, which must be JSON log lines and nothing else."""
    records = []
    for line in stderr.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a plain-text line on the JSON log stream: {line!r}\n{stderr}")
    return records


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """Returns the message of the one JSON line a command that could not run wrote."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (record,) = log_records(result.stderr)
    assert record["level"] == "error" and record["exit_status"] == 2
    return str(record["msg"])


def storefront(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STOREFRONT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )


class Serving:
    """`storefront serve` in the background, its stderr collected line by line."""

    def __init__(self, env: dict[str, str], *serve_args: str, own_session: bool = False) -> None:
        self.process = subprocess.Popen(
            [str(STOREFRONT), "serve", *serve_args],
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=own_session,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """Returns the first stderr line containing `text`; fails after `timeout` seconds."""
        try:
            while (line := self.lines.get(timeout=timeout)) is not None:
                if text in line:
                    return line
        except queue.Empty:
            pass
        pytest.fail(f"no {text!r} on stderr within {timeout}s:\n{''.join(self.stderr)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=COMMAND_SECONDS)
        self._reader.join(timeout=COMMAND_SECONDS)


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    """Servers the test started; killed at the end if still running."""
    started: list[Serving] = []
    yield started
    for server in started:
        server.stop()


def read_credentials(path: Path) -> dict[str, str]:
    fields = dict(line.split(": ", 1) for line in path.read_text().splitlines() if line)
    return fields


def test_migrate_seed_serve_call_scrape_and_sigterm(tmp_path: Path, serving: list[Serving]) -> None:
    env = cli_env(tmp_path)
    migrated = storefront("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied" in migrated.stderr
    again = storefront("migrate", env=env)
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stderr

    seeded = storefront("seed", env=env)
    assert seeded.returncode == 0, seeded.stderr
    credentials_file = tmp_path / "demo-admin-credentials.txt"
    assert credentials_file.stat().st_mode & 0o077 == 0  # readable by the owner only
    credentials = read_credentials(credentials_file)
    assert credentials["password"] not in seeded.stderr + seeded.stdout
    reseeded = storefront("seed", env=env)
    assert reseeded.returncode == 0
    assert read_credentials(credentials_file) == credentials

    server = Serving(env)
    serving.append(server)
    (serving_record,) = log_records(server.wait_for(SERVING, START_SECONDS))
    target, metrics_url = serving_record["grpc.address"], serving_record["metrics.url"]
    assert isinstance(target, str)
    assert target == env["STOREFRONT_GRPC_ADDRESS"]
    assert metrics_url == f"http://{env['STOREFRONT_METRICS_ADDRESS']}/metrics"

    with StorefrontClient(target) as client:
        user = client.login(credentials["email"], credentials["password"])
        assert user.role == access_pb2.ROLE_ADMIN
        current = client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
        assert current.email == credentials["email"] and current.role == access_pb2.ROLE_ADMIN

    metrics_address = env["STOREFRONT_METRICS_ADDRESS"]
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    handled = {
        (s.labels["grpc_method"], s.labels["grpc_code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "grpc_server_handled_total"
    }
    assert handled[("Login", "OK")] == 1.0
    assert handled[("GetCurrentUser", "OK")] == 1.0

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=COMMAND_SECONDS) == 0
    server.stop()  # joins the stderr reader
    log = "".join(server.stderr)
    assert "SIGTERM: draining" in log
    assert credentials["password"] not in log
    records = log_records(log)  # JSON only, from the first line to the last
    assert any(r.get("grpc.method") == "Login" for r in records)
    for result in (migrated, again, seeded, reseeded):
        log_records(result.stderr)


def test_serve_on_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    result = storefront("serve", env=cli_env(tmp_path))
    assert "storefront migrate" in failure(result)


@pytest.mark.parametrize("command", ["serve", "migrate", "seed"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "postgresql://postgres:secret@127.0.0.1:1/storefront",
            'database unreachable: connection failed: connection to server at "127.0.0.1", port 1',
        ),
        # The database file's directory cannot be created: a file is in the way.
        (
            "sqlite:///{tmp}/not-a-directory/db/storefront.db",
            "database unreachable: cannot create the directory",
        ),
    ],
    ids=["postgresql-refused", "sqlite-blocked"],
)
def test_an_unreachable_database_stops_a_command_with_one_line(
    tmp_path: Path, command: str, url: str, problem: str
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    url = url.format(tmp=tmp_path)
    message = failure(storefront(command, env=cli_env(tmp_path, STOREFRONT_DATABASE_URL=url)))
    assert problem in message
    assert "secret" not in message


def test_version_names_the_package_and_its_schema(tmp_path: Path) -> None:
    result = storefront("--version", env=cli_env(tmp_path))
    assert result.returncode == 0
    assert re.fullmatch(
        r"storefront \d+\.\d+\.\d+ \(schema m\d{4}_\w+, grpcio \S+, Python \S+\)\n", result.stdout
    ), result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOREFRONT_ACCESS_TOKEN_TTL_SECONDS", "5000"),
        ("STOREFRONT_GRPC_ADDRESS", "nonsense"),
        ("STOREFRONT_REFLECTION", "maybe"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = storefront("serve", env=cli_env(tmp_path, **{variable: value}))
    message = failure(result)
    assert message.startswith(f"configuration error: {variable}: ") and value in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "file not found"), ('{"currency": "USD"}', "zones: is required")],
    ids=["missing", "invalid"],
)
def test_bad_shipping_rules_stop_serve_with_one_line_naming_the_variable(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    rules = tmp_path / "rules.json"
    if content is not None:
        rules.write_text(content)
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    result = storefront("serve", env=cli_env(tmp_path, STOREFRONT_SHIPPING_RULES_FILE=str(rules)))
    message = failure(result)
    assert message.startswith("configuration error: STOREFRONT_SHIPPING_RULES_FILE: ")
    assert problem in message


@pytest.mark.parametrize("variable", ["STOREFRONT_GRPC_ADDRESS", "STOREFRONT_METRICS_ADDRESS"])
def test_a_port_in_use_stops_serve_with_a_line_naming_the_variable(
    tmp_path: Path, variable: str
) -> None:
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = storefront("serve", env=cli_env(tmp_path, **{variable: address}))
    message = failure(result)
    assert message.startswith(f"configuration error: {variable}: cannot listen on")
    assert address in message


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    result = storefront("serve", env=cli_env(tmp_path, STOREFRONT_GRPC_ADRESS="127.0.0.1:1"))
    assert "STOREFRONT_GRPC_ADRESS" in failure(result)


@pytest.mark.parametrize(
    ("command", "listed"),
    [
        ("serve", tuple(v.name for v in VARIABLES)),
        ("migrate", DATABASE_VARIABLES),
        ("seed", DATABASE_VARIABLES),
        ("create-admin", DATABASE_VARIABLES),
        ("reconcile", RECONCILE_VARIABLES),
        ("report", DATABASE_VARIABLES),
    ],
)
def test_each_command_help_lists_the_variables_it_reads(
    tmp_path: Path, command: str, listed: tuple[str, ...]
) -> None:
    result = storefront(command, "--help", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"^  (STOREFRONT_[A-Z0-9_]+)  ", result.stdout, re.MULTILINE))
    assert shown == set(listed)


def test_create_admin_prints_the_password_once_and_refuses_a_duplicate(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert storefront("migrate", env=env).returncode == 0
    created = storefront("create-admin", "--email", "x@example.com", env=env)
    assert created.returncode == 0, created.stderr
    match = re.search(r"password \(shown once\): (\S+)", created.stdout)
    assert match, created.stdout
    password = match.group(1)
    assert created.stdout.count(password) == 1
    assert password not in created.stderr

    db = dbmod.connect_url(f"sqlite:///{tmp_path / 'storefront.db'}")
    with db.bind_ctx([User]), db.connection_context():
        admin = User.get(User.email == "x@example.com")
    assert admin.role == "ADMIN"
    assert PasswordHasher().verify(admin.password_hash, password)

    duplicate = storefront("create-admin", "--email", "X@example.com", env=env)
    assert duplicate.returncode == 1
    (record,) = log_records(duplicate.stderr)
    assert "already exists" in str(record["msg"])


def test_create_admin_names_the_invalid_field(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert storefront("migrate", env=env).returncode == 0
    refused = storefront("create-admin", "--email", "notanemail", env=env)
    assert refused.returncode == 1
    # The field and what is wrong with it, not a generic "invalid fields".
    (record,) = log_records(refused.stderr)
    assert re.fullmatch(r"email: \S.*", str(record["msg"])), refused.stderr


# --- reconcile ------------------------------------------------------------------------------------


def test_reconcile_refuses_the_sandbox_whose_charges_live_in_the_server(tmp_path: Path) -> None:
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    result = storefront("reconcile", env=cli_env(tmp_path))
    assert "sandbox" in failure(result)


def test_reconcile_without_a_provider_url_names_the_variable(tmp_path: Path) -> None:
    result = storefront("reconcile", env=cli_env(tmp_path, STOREFRONT_PAYMENT_GATEWAY="http"))
    assert failure(result) == (
        "configuration error: STOREFRONT_PAYMENT_BASE_URL: required when the gateway is http"
    )


def pending_order(db_path: Path, *, quantity: int) -> tuple[str, str]:
    """Puts a PENDING_PAYMENT order for `quantity` reserved units straight into the database, as
    a checkout whose charge answer was lost leaves it; returns (order id, product id)."""
    import datetime as dt
    import uuid

    from server.domain import orders
    from server.models.order import Order, OrderLine
    from server.models.product import Product
    from server.models.stock import StockLevel

    db = dbmod.init_database(f"sqlite:///{db_path}", pool_size=1)
    order_id, product_id = str(uuid.uuid4()), str(uuid.uuid4())
    long_ago = dbmod.utcnow() - dt.timedelta(hours=1)
    with db.connection_context(), db.atomic():
        sku = f"CLI-{product_id[:8]}"
        Product.create(id=product_id, sku=sku, name="Mug", price_currency="USD", price_minor=500)
        StockLevel.create(product=product_id, on_hand=5, reserved=quantity)
        Order.create(
            id=order_id,
            customer_id=str(uuid.uuid4()),
            request_id=str(uuid.uuid4()),
            request_hash="0" * 64,
            state=orders.State.PENDING_PAYMENT.value,
            currency="USD",
            subtotal_minor=500 * quantity,
            shipping_minor=0,
            tax_minor=0,
            total_minor=500 * quantity,
            tax_rate="0",
            shipping_quote_id="sq_cli",
            shipping_service_level="Standard",
            ship_name="A",
            ship_line1="1 Main St",
            ship_city="Springfield",
            ship_country="US",
            charge_attempt_time=long_ago,
            create_time=long_ago,
            update_time=long_ago,
        )
        OrderLine.create(
            id=str(uuid.uuid4()),
            order=order_id,
            position=0,
            product=product_id,
            sku=sku,
            name="Mug",
            quantity=quantity,
            unit_price_minor=500,
            line_total_minor=500 * quantity,
            catalog_currency="USD",
            catalog_unit_price_minor=500,
        )
    db.close_all()  # type: ignore[attr-defined]
    return order_id, product_id


def test_reconcile_settles_a_lost_charge_answer_with_the_provider(tmp_path: Path) -> None:
    import json

    from server.models.order import Order
    from server.models.stock import StockLevel
    from server.payments import HttpPaymentGateway
    from tests.fakes.payment_provider import SECRET_KEY, FakePaymentProvider

    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    paid_id, paid_product = pending_order(tmp_path / "storefront.db", quantity=2)
    lost_id, lost_product = pending_order(tmp_path / "storefront.db", quantity=1)
    secret = tmp_path / "payment.key"
    secret.write_text(SECRET_KEY + "\n")
    with FakePaymentProvider() as provider:
        # The charge of the first order reached the provider; the second's never did.
        HttpPaymentGateway(base_url=provider.base_url, secret_key=SECRET_KEY).charge(
            idempotency_key=f"order:{paid_id}",
            amount_minor=1000,
            currency="USD",
            payment_method_token="tok_visa",
            description=f"storefront order {paid_id}",
        )
        env = cli_env(
            tmp_path,
            STOREFRONT_PAYMENT_GATEWAY="http",
            STOREFRONT_PAYMENT_BASE_URL=provider.base_url,
            STOREFRONT_PAYMENT_SECRET_KEY_FILE=str(secret),
        )
        result = storefront("reconcile", env=env)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["paid"], report["failed"]) == ([paid_id], [lost_id])
        assert provider.total_charges_created() == 1
        # A second pass finds nothing left to do.
        again = json.loads(storefront("reconcile", env=env).stdout)
        assert (again["paid"], again["failed"]) == ([], [])

    db = dbmod.init_database(f"sqlite:///{tmp_path / 'storefront.db'}", pool_size=1)
    with db.connection_context():
        assert Order.get_by_id(paid_id).state == "PAID"
        assert Order.get_by_id(lost_id).state == "PAYMENT_FAILED"
        assert Order.get_by_id(lost_id).payment_failure_code == "payment_not_completed"
        sold = StockLevel.get(StockLevel.product == paid_product)
        released = StockLevel.get(StockLevel.product == lost_product)
        assert (sold.on_hand, sold.reserved) == (3, 0)
        assert (released.on_hand, released.reserved) == (5, 0)
    db.close_all()  # type: ignore[attr-defined]
