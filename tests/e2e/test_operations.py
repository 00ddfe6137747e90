"""Operating the server: health, reflection, metrics, access log, errors, limits, shutdown."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import peewee
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families
from storefront.v1 import identity_service_pb2 as pb
from storefront.v1 import identity_service_pb2_grpc
from storefront_client import RetryPolicy, StorefrontClient, error_info, request_id, status_of

from server import db as dbmod
from server import migrations
from server.app import create_app
from server.domain import users
from server.domain.principal import Role
from server.logs import JsonFormatter
from tests.e2e.conftest import PASSWORD, Running, make_settings, rpc_error

StatusCode = grpc.StatusCode
ServingStatus = health_pb2.HealthCheckResponse
IDENTITY = "storefront.v1.IdentityService"
WAIT_SECONDS = 10.0  # upper bound for any wait; tests normally finish far sooner


def identity_stub(channel: grpc.Channel) -> identity_service_pb2_grpc.IdentityServiceStub:
    return identity_service_pb2_grpc.IdentityServiceStub(channel)


def health_status(channel: grpc.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def poll(
    condition: Callable[[], bool], *, timeout: float = WAIT_SECONDS, interval: float = 0.02
) -> bool:
    """Returns True as soon as `condition()` holds, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "storefront.access"]


def as_json(record: logging.LogRecord) -> dict[str, Any]:
    """The record as the production formatter writes it, parsed back."""
    parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return parsed


# --- health -----------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", IDENTITY])
def test_health_reports_serving(running: Running, service: str) -> None:
    assert health_status(running.channel(), service) == ServingStatus.SERVING


def test_health_list_names_every_service_and_the_server(running: Running) -> None:
    listed = health_pb2_grpc.HealthStub(running.channel()).List(health_pb2.HealthListRequest())
    assert set(listed.statuses) == {
        "",
        "storefront.v1.IdentityService",
        "storefront.v1.CatalogService",
        "storefront.v1.InventoryService",
        "storefront.v1.CurrencyService",
        "storefront.v1.ShippingService",
        "storefront.v1.CartService",
        "storefront.v1.CheckoutService",
        "storefront.v1.OrderService",
        "storefront.v1.WebhookService",
        "storefront.v1.PromotionService",
        "storefront.v1.ReportService",
    }
    assert {s.status for s in listed.statuses.values()} == {ServingStatus.SERVING}


def test_health_of_an_unknown_service_is_not_found(running: Running) -> None:
    err = rpc_error(lambda: health_status(running.channel(), "storefront.v1.NoSuchService"))
    assert err.code() == StatusCode.NOT_FOUND


# --- reflection -------------------------------------------------------------------------------


def test_reflection_lists_services_and_describes_methods(running: Running) -> None:
    database = ProtoReflectionDescriptorDatabase(running.channel())
    services = set(database.get_services())
    assert {IDENTITY, "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    # grpcio's reflection server resolves services, not method names, as symbols.
    login = pool.FindServiceByName(IDENTITY).methods_by_name["Login"]
    assert login.full_name == f"{IDENTITY}.Login"
    assert login.input_type.full_name == "storefront.v1.LoginRequest"
    assert login.output_type.full_name == "storefront.v1.LoginResponse"


def test_reflection_can_be_turned_off(server_factory: Callable[..., Running]) -> None:
    running = server_factory(reflection=False)
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel())
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    err = rpc_error(lambda: next(responses))
    assert err.code() == StatusCode.UNIMPLEMENTED
    # The rest of the server is unaffected.
    assert health_status(running.channel()) == ServingStatus.SERVING


# --- metrics ----------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Returns every sample on /metrics by sample name: [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value_of(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float | None:
    matches = [value for found, value in samples.get(name, []) if found == labels]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else None


def test_metrics_use_go_grpc_middleware_names_and_labels(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(metrics_address="127.0.0.1:0")
    port = running.app.metrics_port
    assert port
    stub = identity_stub(running.channel())
    stub.ListSigningKeys(pb.ListSigningKeysRequest(), timeout=5)
    err = rpc_error(lambda: stub.RegisterUser(pb.RegisterUserRequest(), timeout=5))
    assert err.code() == StatusCode.INVALID_ARGUMENT

    samples = scrape(port)
    unary = {"grpc_type": "unary", "grpc_service": IDENTITY}
    keys = {**unary, "grpc_method": "ListSigningKeys"}
    register = {**unary, "grpc_method": "RegisterUser"}
    handled = "grpc_server_handled_total"
    assert value_of(samples, handled, **keys, grpc_code="OK") == 1.0
    assert value_of(samples, handled, **register, grpc_code="InvalidArgument") == 1.0
    assert value_of(samples, handled, **register, grpc_code="OK") is None
    assert value_of(samples, handled, **keys, grpc_code="InvalidArgument") is None
    assert value_of(samples, "grpc_server_started_total", **keys) == 1.0
    assert value_of(samples, "grpc_server_started_total", **register) == 1.0
    for labels in (keys, register):
        assert value_of(samples, "grpc_server_handling_seconds_count", **labels) == 1.0
        assert value_of(samples, "grpc_server_handling_seconds_bucket", **labels, le="+Inf") == 1.0
        buckets = [
            found["le"]
            for found, _ in samples["grpc_server_handling_seconds_bucket"]
            if {k: v for k, v in found.items() if k != "le"} == labels
        ]
        assert "0.005" in buckets and "10.0" in buckets


# --- access log and request id ----------------------------------------------------------------


def test_access_log_has_one_json_record_per_rpc_without_secrets(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    email = running.create_user(Role.CUSTOMER)
    stub = identity_stub(running.channel())
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        login = stub.Login(pb.LoginRequest(email=email, password=PASSWORD), timeout=5)
        token = login.session.access_token
        refresh = login.session.refresh_token
        assert token and refresh
        _, call = stub.GetCurrentUser.with_call(
            pb.GetCurrentUserRequest(),
            timeout=5,
            metadata=(("authorization", f"Bearer {token}"), ("x-request-id", "req-12345678")),
        )
        err = rpc_error(
            lambda: stub.RegisterUser(
                pb.RegisterUserRequest(email="nobody", password=PASSWORD), timeout=5
            )
        )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert ("x-request-id", "req-12345678") in tuple(call.trailing_metadata() or ())
    generated_id = request_id(err)
    assert generated_id and generated_id != "req-12345678"

    records = access_records(caplog)
    entries = [as_json(r) for r in records]
    assert [e["grpc.method"] for e in entries] == ["Login", "GetCurrentUser", "RegisterUser"]
    assert [e["grpc.code"] for e in entries] == ["OK", "OK", "InvalidArgument"]
    for entry in entries:
        assert entry["grpc.service"] == IDENTITY
        assert isinstance(entry["grpc.time_ms"], int | float) and entry["grpc.time_ms"] >= 0
        assert "127.0.0.1" in entry["peer.address"]
        assert entry["request_id"]
    assert entries[1]["request_id"] == "req-12345678"
    assert entries[2]["request_id"] == generated_id
    assert entries[1]["principal"] == login.user.id
    assert len({e["request_id"] for e in entries}) == 3
    # A failed call is a WARNING naming its ErrorInfo reason; successful calls are INFO.
    assert [r.levelname for r in records] == ["INFO", "INFO", "WARNING"]
    assert entries[2]["error.reason"] == "FIELD_INVALID"
    assert "error.reason" not in entries[0]

    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (PASSWORD, token, refresh):
        assert secret not in everything


@pytest.mark.parametrize("unacceptable", ["short", "x" * 65, "has space in it", "semi;colon-1234"])
def test_unacceptable_caller_request_ids_are_replaced(running: Running, unacceptable: str) -> None:
    stub = identity_stub(running.channel())
    _, call = stub.ListSigningKeys.with_call(
        pb.ListSigningKeysRequest(), timeout=5, metadata=(("x-request-id", unacceptable),)
    )
    echoed = dict(call.trailing_metadata() or ())["x-request-id"]
    assert len(echoed) == 36 and echoed != unacceptable  # a generated UUID


# --- error hygiene ----------------------------------------------------------------------------

LEAKY = "SELECT * FROM users WHERE password='x' /etc/secret.py Traceback"


def test_unexpected_exceptions_are_internal_with_a_request_id_and_nothing_leaked(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client = running.login(Role.CUSTOMER)

    def boom(user_id: str) -> Any:
        raise RuntimeError(LEAKY)

    monkeypatch.setattr(users, "get_or_raise", boom)
    with caplog.at_level(logging.INFO):
        err = rpc_error(lambda: client.identity.GetCurrentUser(pb.GetCurrentUserRequest()))
    assert err.code() == StatusCode.INTERNAL
    details = err.details() or ""
    status = status_of(err)
    assert status is not None and status.message == details
    for leak in ("SELECT", "/etc", ".py", "Traceback", "RuntimeError", "password"):
        assert leak not in details
        assert leak not in str(status)
    assert error_info(err)[0] == "INTERNAL"
    rid = request_id(err)
    assert rid and rid in details

    errors_logged = [r for r in caplog.records if r.name == "storefront.errors"]
    assert len(errors_logged) == 1
    logged = errors_logged[0]
    assert logged.levelno == logging.ERROR
    assert logged.exc_info is not None and logged.exc_info[0] is RuntimeError
    assert logged.__dict__["request_id"] == rid
    assert LEAKY in as_json(logged)["error.stack"]
    (access,) = [as_json(r) for r in access_records(caplog)]
    assert access["grpc.code"] == "Internal" and access["request_id"] == rid
    # The server keeps working.
    monkeypatch.undo()
    assert client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.id


def test_database_failures_are_unavailable_without_internals(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = StorefrontClient(running.target, retry=RetryPolicy(max_attempts=1))
    client.login(running.create_user(), PASSWORD)

    def down(user_id: str) -> Any:
        raise peewee.OperationalError("could not connect to server at 10.1.2.3:5432 password=x")

    monkeypatch.setattr(users, "get_or_raise", down)
    err = rpc_error(lambda: client.identity.GetCurrentUser(pb.GetCurrentUserRequest()))
    assert err.code() == StatusCode.UNAVAILABLE
    assert error_info(err)[0] == "DATABASE_UNAVAILABLE"
    assert "10.1.2.3" not in (err.details() or "") and "password" not in (err.details() or "")
    assert request_id(err)


@pytest.fixture
def sqlite_outside_data_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A migrated SQLite database in its own directory: (that directory, URL)."""
    directory = tmp_path / "db"
    url = f"sqlite:///{directory / 'storefront.db'}"
    db = dbmod.connect_url(url)
    migrations.migrate(db)
    db.close()
    yield directory, url


def test_sqlite_database_gone_is_unavailable_and_not_serving_until_it_returns(
    tmp_path: Path, sqlite_outside_data_dir: tuple[Path, str]
) -> None:
    """Moving the database's directory away makes every new connection fail.

    SQLite only; tests/e2e/test_database_outage.py covers PostgreSQL going away.
    """
    directory, url = sqlite_outside_data_dir
    app = create_app(make_settings(tmp_path / "data", url, health_check_seconds=0.05))
    app.start()
    try:
        target = f"127.0.0.1:{app.port}"
        client = StorefrontClient(target, retry=RetryPolicy(max_attempts=1))
        client.register("gone@example.com", PASSWORD)
        client.login("gone@example.com", PASSWORD)
        channel = grpc.insecure_channel(target)

        moved = directory.rename(directory.with_name("moved-away"))
        # The health watch notices first and drops the pooled connections, which would otherwise
        # keep answering from the moved file.
        assert poll(lambda: health_status(channel) == ServingStatus.NOT_SERVING)
        assert health_status(channel, IDENTITY) == ServingStatus.NOT_SERVING
        err = rpc_error(lambda: client.identity.GetCurrentUser(pb.GetCurrentUserRequest()))
        assert err.code() == StatusCode.UNAVAILABLE
        assert error_info(err)[0] == "DATABASE_UNAVAILABLE"
        assert "storefront.db" not in (err.details() or "")
        # Anonymous calls that need no database still work.
        assert identity_stub(channel).ListSigningKeys(pb.ListSigningKeysRequest(), timeout=5).keys

        moved.rename(directory)
        assert poll(lambda: health_status(channel) == ServingStatus.SERVING)
        assert (
            client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.email
            == "gone@example.com"
        )
    finally:
        app.stop(grace=0)


# --- limits -----------------------------------------------------------------------------------


def test_a_request_larger_than_the_limit_is_resource_exhausted(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(max_message_bytes=4096)
    stub = identity_stub(running.channel())
    err = rpc_error(
        lambda: stub.RegisterUser(
            pb.RegisterUserRequest(
                email="big@example.com", password=PASSWORD, display_name="x" * 10_240
            ),
            timeout=5,
        )
    )
    assert err.code() == StatusCode.RESOURCE_EXHAUSTED
    # A request under the limit still reaches the handler.
    small = stub.RegisterUser(
        pb.RegisterUserRequest(email="small@example.com", password=PASSWORD), timeout=5
    )
    assert small.user.email == "small@example.com"


class BlockingRegister:
    """Replaces users.register: signals `entered`, waits for `release`, then registers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.original = users.register
        monkeypatch.setattr(users, "register", self)

    def __call__(self, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(WAIT_SECONDS), "the test never released the handler"
        return self.original(**kwargs)


def test_calls_beyond_the_concurrency_cap_are_resource_exhausted(
    server_factory: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = server_factory(max_concurrent_rpcs=1)
    blocker = BlockingRegister(monkeypatch)
    stub = identity_stub(running.channel())
    in_flight = stub.RegisterUser.future(
        pb.RegisterUserRequest(email="first@example.com", password=PASSWORD), timeout=WAIT_SECONDS
    )
    try:
        assert blocker.entered.wait(WAIT_SECONDS)
        err = rpc_error(lambda: stub.ListSigningKeys(pb.ListSigningKeysRequest(), timeout=5))
        assert err.code() == StatusCode.RESOURCE_EXHAUSTED
    finally:
        blocker.release.set()
    assert in_flight.result().user.email == "first@example.com"

    # The slot frees once the server has finished the first call (no event marks that moment).
    def accepted() -> bool:
        try:
            stub.ListSigningKeys(pb.ListSigningKeysRequest(), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == StatusCode.RESOURCE_EXHAUSTED
            return False
        return True

    assert poll(accepted)


# --- graceful shutdown ------------------------------------------------------------------------


def test_shutdown_drains_then_finishes_in_flight_calls_then_refuses(
    server_factory: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = server_factory(drain_seconds=1.0)
    blocker = BlockingRegister(monkeypatch)
    stub = identity_stub(running.channel())
    in_flight = stub.RegisterUser.future(
        pb.RegisterUserRequest(email="inflight@example.com", password=PASSWORD),
        timeout=WAIT_SECONDS,
    )
    stopper = threading.Thread(target=running.app.stop, kwargs={"grace": 5})
    try:
        assert blocker.entered.wait(WAIT_SECONDS)
        watcher = running.channel()
        assert health_status(watcher) == ServingStatus.SERVING
        stopper.start()
        # During the drain the server still answers, reporting NOT_SERVING for every service.
        assert poll(lambda: health_status(watcher) == ServingStatus.NOT_SERVING)
        assert health_status(watcher, IDENTITY) == ServingStatus.NOT_SERVING
        assert not in_flight.done()
    finally:
        blocker.release.set()
    assert in_flight.result().user.email == "inflight@example.com"
    stopper.join(WAIT_SECONDS)
    assert not stopper.is_alive()

    err = rpc_error(
        lambda: identity_stub(running.channel()).ListSigningKeys(
            pb.ListSigningKeysRequest(), timeout=5
        )
    )
    assert err.code() == StatusCode.UNAVAILABLE


# --- cancelled and long-lived streams --------------------------------------------------------


def cancel_aware_reflection(
    finish: str, cancelled: threading.Event
) -> Callable[..., Iterator[reflection_pb2.ServerReflectionResponse]]:
    """A ServerReflectionInfo that answers once, then acts only after the client has cancelled.

    Like any streaming handler, it then either reads the request stream ("reads") or ends
    ("returns"); waiting for grpc's termination callback makes the order deterministic.
    """

    def info(
        servicer: object, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[reflection_pb2.ServerReflectionResponse]:
        context.add_callback(cancelled.set)
        next(requests)
        yield reflection_pb2.ServerReflectionResponse(
            list_services_response=reflection_pb2.ListServiceResponse(
                service=[reflection_pb2.ServiceResponse(name=IDENTITY)]
            )
        )
        if cancelled.wait(WAIT_SECONDS) and finish == "reads":
            next(requests)  # raises grpc.RpcError: the call was cancelled

    return info


@pytest.mark.parametrize("finish", ["reads", "returns"])
def test_a_stream_the_client_cancels_is_logged_and_counted_as_canceled(
    server_factory: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    finish: str,
) -> None:
    cancelled = threading.Event()
    monkeypatch.setattr(
        reflection.ReflectionServicer,
        "ServerReflectionInfo",
        cancel_aware_reflection(finish, cancelled),
    )
    running = server_factory(metrics_address="127.0.0.1:0")
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel())
    request_stream_open = threading.Event()

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        request_stream_open.wait(WAIT_SECONDS)  # only the cancel can end the call

    try:
        with caplog.at_level(logging.INFO):
            call = stub.ServerReflectionInfo(requests(), timeout=WAIT_SECONDS)
            assert next(call).list_services_response.service
            call.cancel()
            assert cancelled.wait(WAIT_SECONDS)
            # The handler finishes right after; no event marks its log line.
            assert poll(lambda: bool(access_records(caplog)))
    finally:
        request_stream_open.set()
    (record,) = access_records(caplog)
    entry = as_json(record)
    assert entry["grpc.method"] == "ServerReflectionInfo"
    assert not [r for r in caplog.records if r.name == "storefront.errors"]
    assert (entry["grpc.code"], record.levelname) == ("Canceled", "INFO")
    assert running.app.metrics_port
    samples = scrape(running.app.metrics_port)
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_method": "ServerReflectionInfo",
        "grpc_service": "grpc.reflection.v1alpha.ServerReflection",
    }
    assert value_of(samples, "grpc_server_handled_total", **labels, grpc_code="Canceled") == 1.0


def test_health_watchers_hold_no_worker_thread_and_hear_of_shutdown(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(worker_threads=2)
    channel = running.channel()
    health = health_pb2_grpc.HealthStub(channel)
    watches = [
        health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=WAIT_SECONDS)
        for service in ("", IDENTITY)
    ]
    try:
        assert [next(watch).status for watch in watches] == [ServingStatus.SERVING] * 2
        # Were both worker threads parked in Watch, this call would never be picked up.
        assert identity_stub(channel).ListSigningKeys(pb.ListSigningKeysRequest(), timeout=1).keys
        stopper = threading.Thread(target=running.app.stop, kwargs={"grace": 0}, daemon=True)
        stopper.start()
        assert [next(watch).status for watch in watches] == [ServingStatus.NOT_SERVING] * 2
        stopper.join(WAIT_SECONDS)
        assert not stopper.is_alive()
    finally:
        for watch in watches:
            watch.cancel()


def test_stop_completes_while_health_watchers_disconnect(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory()
    health = health_pb2_grpc.HealthStub(running.channel())
    watches = [
        health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_SECONDS)
        for _ in range(16)
    ]
    assert {next(watch).status for watch in watches} == {ServingStatus.SERVING}
    # A daemon thread: if stop() deadlocks, the test fails instead of hanging.
    stopper = threading.Thread(target=running.app.stop, kwargs={"grace": 0}, daemon=True)
    for watch in watches[:8]:
        watch.cancel()
    stopper.start()
    for watch in watches[8:]:
        watch.cancel()
    stopper.join(3)  # stop() takes milliseconds here: no drain, no grace, no calls in flight
    assert not stopper.is_alive(), "App.stop() deadlocked with disconnecting health watchers"
