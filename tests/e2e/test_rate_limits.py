"""Rate limits through real servers: per caller and class, shared through Redis, failing open."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront.v1 import identity_service_pb2 as identity_pb
from storefront.v1 import identity_service_pb2_grpc as identity_grpc
from storefront_client import StorefrontClient, error_info

from tests.e2e.conftest import Running, rpc_error

REDIS_URL = os.environ.get("STOREFRONT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMIT = 20


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis; CI must have one (.ci/run starts it), elsewhere its tests are skipped."""
    parts = urlsplit(REDIS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not answering at {REDIS_URL}")
        pytest.skip(f"Redis is not answering at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test's own, so parallel runs on one Redis never share counters."""
    return f"storefront-test-{uuid.uuid4().hex}"


def closed_port() -> int:
    """Returns a local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def retry_delay_seconds(err: grpc.RpcError) -> float:
    """Returns the RetryInfo delay of an error (fails the test if it has none)."""
    [raw] = [v for k, v in err.trailing_metadata() or () if k == "grpc-status-details-bin"]
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo detail")


def get_current_user(client: StorefrontClient) -> grpc.StatusCode:
    """Calls a read RPC; returns its status code."""
    try:
        client.identity.GetCurrentUser(identity_pb.GetCurrentUserRequest())
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_one_caller_at_ten_times_its_limit_across_three_servers_sharing_redis(
    server_factory: Callable[..., Running], redis_url: str, key_prefix: str
) -> None:
    servers = [
        server_factory(
            rate_limit_storage_url=redis_url,
            rate_limit_key_prefix=key_prefix,
            rate_limit_read=f"{LIMIT}/hour",
        )
        for _ in range(3)
    ]
    signed_in = servers[0].login()
    assert signed_in.session is not None
    # The same principal on every server: one token, three connections.
    token = (("authorization", f"Bearer {signed_in.session.access_token}"),)
    channels = [running.channel() for running in servers]
    stubs = [identity_grpc.IdentityServiceStub(channel) for channel in channels]
    others = [running.login() for running in servers]

    def greedy_call(stub: identity_grpc.IdentityServiceStub) -> grpc.StatusCode:
        try:
            stub.GetCurrentUser(identity_pb.GetCurrentUserRequest(), metadata=token)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    try:
        codes = [greedy_call(s) for s in itertools.islice(itertools.cycle(stubs), 10 * LIMIT)]
    finally:
        for channel in channels:
            channel.close()
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert LIMIT <= codes.count(grpc.StatusCode.OK) <= LIMIT * 1.1
    # Every server refused some: the budget was shared, not counted per process.
    for index in range(3):
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[index::3]
    # Another caller's budget is its own.
    calls = others * (LIMIT // 3)
    assert [get_current_user(c) for c in calls] == [grpc.StatusCode.OK] * len(calls)


def test_memory_storage_limits_within_one_server_with_retry_info(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(rate_limit_read="5/hour")
    client = running.login()
    codes = [get_current_user(client) for _ in range(5)]
    assert codes == [grpc.StatusCode.OK] * 5
    err = rpc_error(lambda: client.identity.GetCurrentUser(identity_pb.GetCurrentUserRequest()))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    reason, metadata = error_info(err)
    assert (reason, metadata["limit_class"]) == ("RATE_LIMITED", "read")
    assert 0 < retry_delay_seconds(err) <= 3600
    # Writes have their own budget.
    client.identity.UpdateCurrentUser(
        identity_pb.UpdateCurrentUserRequest(
            user=identity_pb.User(display_name="Still writing"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )


def test_anonymous_callers_are_limited_by_address(server_factory: Callable[..., Running]) -> None:
    running = server_factory(rate_limit_read="3/hour")
    first, second = running.client(), running.client()
    request = catalog_pb.ListCategoriesRequest()
    for client in (first, second, first):
        client.catalog.ListCategories(request)
    # Same address, new connection: the budget is the address's.
    err = rpc_error(lambda: running.client().catalog.ListCategories(request))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err)[0] == "RATE_LIMITED"


def test_health_is_exempt(server_factory: Callable[..., Running]) -> None:
    running = server_factory(rate_limit_read="1/hour", rate_limit_write="1/hour")
    with running.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(10):
            answer = health.Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def captured_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="storefront.rate_limit"):
        yield caplog


def test_unreachable_redis_lets_calls_through_with_a_warning_and_a_metric(
    server_factory: Callable[..., Running], captured_warnings: pytest.LogCaptureFixture
) -> None:
    running = server_factory(
        rate_limit_storage_url=f"redis://127.0.0.1:{closed_port()}/0", rate_limit_read="2/hour"
    )
    client = running.login()
    assert [get_current_user(client) for _ in range(6)] == [grpc.StatusCode.OK] * 6
    errors = running.app.metrics.registry.get_sample_value(
        "storefront_rate_limit_storage_errors_total"
    )
    assert errors is not None and errors >= 6
    warnings = [r for r in captured_warnings.records if r.name == "storefront.rate_limit"]
    assert len(warnings) == 1  # at most one per interval, not one per call
    assert "letting calls through" in warnings[0].getMessage()
