"""The client SDK's sessions, deadlines, retries and error helpers against an in-process server."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import any_pb2
from google.rpc import (  # type: ignore[import-untyped, unused-ignore]
    code_pb2,
    error_details_pb2,
    status_pb2,
)
from grpc_status import rpc_status
from storefront.v1 import identity_service_pb2 as pb
from storefront.v1 import identity_service_pb2_grpc
from storefront_client import (
    RetryInterceptor,
    RetryPolicy,
    StorefrontClient,
    create_channel,
    error_info,
    field_violations,
    request_id,
)
from storefront_client._call_details import CallDetails

DEFAULT_TIMEOUT = 5.0
TIMEOUT_ROUNDING = 1.01  # grpc-timeout travels with three significant digits, rounded up
TOKEN_TTL = 300.0
START = 1_800_000_000.0


class FakeClock:
    """A wall clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass(frozen=True)
class SeenCall:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None


@dataclasses.dataclass(frozen=True)
class AbortStatus(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


@dataclasses.dataclass(frozen=True)
class FailedOutcome:
    status: grpc.StatusCode

    def code(self) -> grpc.StatusCode:
        return self.status


class FakeIdentity(identity_service_pb2_grpc.IdentityServiceServicer):
    """Issues numbered tokens, records what it sees and fails when told to."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.ttl = TOKEN_TTL
        self.lock = threading.Lock()
        self.seen: list[SeenCall] = []
        self.failures: dict[str, list[grpc.StatusCode]] = {}
        self.abort_status: grpc.Status | None = None
        self.issued = 0

    def fail(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        self.failures[method] = [code] * times

    def calls(self, method: str) -> list[SeenCall]:
        with self.lock:
            return [c for c in self.seen if c.method == method]

    def enter(self, method: str, context: Any) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.seen.append(SeenCall(method, metadata, context.time_remaining()))
            pending = self.failures.get(method)
            code = pending.pop(0) if pending else None
        if code is not None:
            context.abort(code, f"{method} told to fail")

    def session(self, *, refresh: bool = True) -> pb.Session:
        with self.lock:
            self.issued += 1
            number = self.issued
        session = pb.Session(
            access_token=f"access-{number}", refresh_token=f"refresh-{number}" if refresh else ""
        )
        session.access_token_expire_time.FromNanoseconds(int((self.clock.now + self.ttl) * 1e9))
        return session

    def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        self.enter("Login", context)
        return pb.LoginResponse(session=self.session(), user=pb.User(id="u1", email=request.email))

    def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Any
    ) -> pb.RefreshSessionResponse:
        self.enter("RefreshSession", context)
        return pb.RefreshSessionResponse(session=self.session())

    def IssueServiceToken(
        self, request: pb.IssueServiceTokenRequest, context: Any
    ) -> pb.IssueServiceTokenResponse:
        self.enter("IssueServiceToken", context)
        return pb.IssueServiceTokenResponse(session=self.session(refresh=False))

    def GetCurrentUser(
        self, request: pb.GetCurrentUserRequest, context: Any
    ) -> pb.GetCurrentUserResponse:
        self.enter("GetCurrentUser", context)
        return pb.GetCurrentUserResponse(user=pb.User(id="u1", email="ada@example.com"))

    def Logout(self, request: pb.LogoutRequest, context: Any) -> pb.LogoutResponse:
        self.enter("Logout", context)
        return pb.LogoutResponse(ended_session_count=1)

    # Not exercised here: answer UNIMPLEMENTED, as the generated base class does.
    UpdateCurrentUser = identity_service_pb2_grpc.IdentityServiceServicer.UpdateCurrentUser
    ChangePassword = identity_service_pb2_grpc.IdentityServiceServicer.ChangePassword
    ListUsers = identity_service_pb2_grpc.IdentityServiceServicer.ListUsers
    UpdateUserRole = identity_service_pb2_grpc.IdentityServiceServicer.UpdateUserRole
    DisableUser = identity_service_pb2_grpc.IdentityServiceServicer.DisableUser
    ClearSignInThrottle = identity_service_pb2_grpc.IdentityServiceServicer.ClearSignInThrottle
    EnableUser = identity_service_pb2_grpc.IdentityServiceServicer.EnableUser
    RequestPasswordReset = identity_service_pb2_grpc.IdentityServiceServicer.RequestPasswordReset
    ResetPassword = identity_service_pb2_grpc.IdentityServiceServicer.ResetPassword
    SendVerificationEmail = identity_service_pb2_grpc.IdentityServiceServicer.SendVerificationEmail
    VerifyEmail = identity_service_pb2_grpc.IdentityServiceServicer.VerifyEmail
    CreateServiceAccount = identity_service_pb2_grpc.IdentityServiceServicer.CreateServiceAccount
    ListSigningKeys = identity_service_pb2_grpc.IdentityServiceServicer.ListSigningKeys

    def RegisterUser(
        self, request: pb.RegisterUserRequest, context: Any
    ) -> pb.RegisterUserResponse:
        self.enter("RegisterUser", context)
        if self.abort_status is not None:
            context.abort_with_status(self.abort_status)
        return pb.RegisterUserResponse(user=pb.User(id="u2", email=request.email))


def echo_handler(fake: FakeIdentity) -> Any:
    """Raw-bytes streaming methods, to exercise the interceptors on every call kind."""

    def unary_stream(request: bytes, context: Any) -> Iterator[bytes]:
        fake.enter("UnaryStream", context)
        yield request

    def stream_unary(requests: Iterator[bytes], context: Any) -> bytes:
        fake.enter("StreamUnary", context)
        return b"".join(requests)

    def stream_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        fake.enter("StreamStream", context)
        yield from requests

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def start_server(fake: FakeIdentity, bind: Callable[[Any], int]) -> Any:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)]
    )
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(fake, server)
    server.add_generic_rpc_handlers([echo_handler(fake)])
    server.storefront_port = bind(server)
    server.start()
    return server


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeIdentity]:
    identity = FakeIdentity(clock)
    server = start_server(identity, lambda s: s.add_insecure_port("127.0.0.1:0"))
    identity.port = server.storefront_port  # type: ignore[attr-defined]
    yield identity
    server.stop(None)


@pytest.fixture
def client(fake: FakeIdentity, clock: FakeClock) -> Iterator[StorefrontClient]:
    with StorefrontClient(
        f"127.0.0.1:{fake.port}",  # type: ignore[attr-defined]
        default_timeout=DEFAULT_TIMEOUT,
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.004),
        refresh_before=60.0,
        clock=clock,
    ) as sdk:
        yield sdk


def whoami(client: StorefrontClient, **kwargs: Any) -> pb.User:
    response: pb.GetCurrentUserResponse = client.identity.GetCurrentUser(
        pb.GetCurrentUserRequest(), **kwargs
    )
    return response.user


def bearer(call: SeenCall) -> str | None:
    return call.metadata.get("authorization")


def test_login_attaches_bearer_token_to_every_later_call(client, fake):
    user = client.login("ada@example.com", "correct horse battery")
    whoami(client)
    whoami(client)

    assert user.email == "ada@example.com"
    assert bearer(fake.calls("Login")[0]) is None
    assert [bearer(c) for c in fake.calls("GetCurrentUser")] == ["Bearer access-1"] * 2


def test_calls_without_a_session_carry_no_token(client, fake):
    whoami(client)

    assert bearer(fake.calls("GetCurrentUser")[0]) is None


def test_callers_own_authorization_header_is_kept(client, fake):
    client.login("ada@example.com", "correct horse battery")
    whoami(client, metadata=[("authorization", "Bearer mine")])

    assert bearer(fake.calls("GetCurrentUser")[0]) == "Bearer mine"


@pytest.mark.parametrize(
    ("ttl", "elapsed", "refreshed"),
    [
        (300.0, 239.0, False),  # more than refresh_before (60 s) left
        (300.0, 240.0, True),  # 60 s before expiry
        (300.0, 400.0, True),  # already expired
        (30.0, 14.0, False),  # short token: renewed at half its life, not on every call
        (30.0, 15.0, True),
    ],
)
def test_access_token_is_refreshed_shortly_before_expiry(
    client, fake, clock, ttl, elapsed, refreshed
):
    fake.ttl = ttl
    client.login("ada@example.com", "correct horse battery")
    clock.advance(elapsed)
    whoami(client)

    refreshes = fake.calls("RefreshSession")
    assert len(refreshes) == (1 if refreshed else 0)
    if refreshed:
        assert bearer(refreshes[0]) is None
        assert client.session is not None and client.session.refresh_token == "refresh-2"
    expected = "Bearer access-2" if refreshed else "Bearer access-1"
    assert bearer(fake.calls("GetCurrentUser")[0]) == expected


def test_concurrent_calls_share_one_refresh(client, fake, clock):
    client.login("ada@example.com", "correct horse battery")
    clock.advance(TOKEN_TTL)
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        whoami(client)

    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(call) for _ in range(8)]:
            done.result()

    assert len(fake.calls("RefreshSession")) == 1
    assert [bearer(c) for c in fake.calls("GetCurrentUser")] == ["Bearer access-2"] * 8


def test_rejected_refresh_signs_out(client, fake, clock):
    client.login("ada@example.com", "correct horse battery")
    fake.fail("RefreshSession", grpc.StatusCode.UNAUTHENTICATED)
    clock.advance(TOKEN_TTL)

    with pytest.raises(grpc.RpcError) as raised:
        whoami(client)

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert client.session is None
    assert fake.calls("GetCurrentUser") == []


def test_failed_refresh_keeps_a_still_valid_token(client, fake, clock):
    client.login("ada@example.com", "correct horse battery")
    fake.fail("RefreshSession", grpc.StatusCode.INTERNAL)
    clock.advance(TOKEN_TTL - 10)
    whoami(client)
    whoami(client)

    assert [bearer(c) for c in fake.calls("GetCurrentUser")] == [
        "Bearer access-1",
        "Bearer access-2",
    ]


def test_service_token_is_reissued_before_expiry(client, fake, clock):
    client.use_service_credentials("exporter", "s3cret")
    whoami(client)
    clock.advance(TOKEN_TTL - 30)
    whoami(client)

    assert len(fake.calls("IssueServiceToken")) == 2
    assert len(fake.calls("RefreshSession")) == 0
    assert [bearer(c) for c in fake.calls("GetCurrentUser")] == [
        "Bearer access-1",
        "Bearer access-2",
    ]


def test_logout_ends_the_session_and_forgets_it(client, fake):
    client.login("ada@example.com", "correct horse battery")

    assert client.logout() == 1
    whoami(client)

    assert bearer(fake.calls("Logout")[0]) == "Bearer access-1"
    assert client.session is None
    assert bearer(fake.calls("GetCurrentUser")[0]) is None


@pytest.mark.parametrize(("failures", "succeeds"), [(1, True), (2, True), (3, False)])
def test_unavailable_is_retried_up_to_the_attempt_limit(client, fake, failures, succeeds):
    fake.fail("GetCurrentUser", grpc.StatusCode.UNAVAILABLE, times=failures)

    if succeeds:
        assert whoami(client).id == "u1"
    else:
        with pytest.raises(grpc.RpcError) as raised:
            whoami(client)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE

    assert len(fake.calls("GetCurrentUser")) == min(failures + 1, 3)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_other_codes_are_not_retried(client, fake, code):
    fake.fail("GetCurrentUser", code, times=3)

    with pytest.raises(grpc.RpcError) as raised:
        whoami(client)

    assert raised.value.code() is code
    assert len(fake.calls("GetCurrentUser")) == 1


STREAMING_CALLS: dict[str, Callable[[Any], object]] = {
    "UnaryStream": lambda ch: list(ch.unary_stream("/test.Echo/UnaryStream")(b"x")),
    "StreamUnary": lambda ch: ch.stream_unary("/test.Echo/StreamUnary")(iter([b"x"])),
    "StreamStream": lambda ch: list(ch.stream_stream("/test.Echo/StreamStream")(iter([b"x"]))),
}


@pytest.mark.parametrize("method", list(STREAMING_CALLS))
def test_streaming_calls_get_token_and_deadline_but_no_retry(client, fake, method):
    client.login("ada@example.com", "correct horse battery")
    STREAMING_CALLS[method](client.channel)
    fake.fail(method, grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError) as raised:
        STREAMING_CALLS[method](client.channel)

    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    first, failed = fake.calls(method)
    assert bearer(first) == bearer(failed) == "Bearer access-1"
    assert first.time_remaining is not None
    assert first.time_remaining <= DEFAULT_TIMEOUT * TIMEOUT_ROUNDING


@pytest.mark.parametrize(("timeout", "limit"), [(None, DEFAULT_TIMEOUT), (0.5, 0.5), (30.0, 30.0)])
def test_calls_get_the_default_deadline_unless_given_one(client, fake, timeout, limit):
    whoami(client, timeout=timeout)

    remaining = fake.calls("GetCurrentUser")[0].time_remaining
    assert remaining is not None
    assert limit - 1.0 < remaining <= limit * TIMEOUT_ROUNDING


def test_retries_share_the_calls_deadline():
    now = [0.0]
    timeouts: list[float] = []
    pauses: list[float] = []

    def attempt(details: Any, request: object) -> Any:
        timeouts.append(details.timeout)
        now[0] += 0.5  # each attempt takes half a second to fail
        return FailedOutcome(grpc.StatusCode.UNAVAILABLE)

    def sleep(pause: float) -> None:
        pauses.append(pause)
        now[0] += pause

    retrier = RetryInterceptor(
        RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=2.0),
        sleep=sleep,
        rand=lambda: 1.0,
        monotonic=lambda: now[0],
    )
    details = CallDetails(
        "/storefront.v1.IdentityService/GetCurrentUser", 2.0, None, None, None, None
    )
    outcome = retrier.intercept_unary_unary(attempt, details, object())

    assert outcome.code() is grpc.StatusCode.UNAVAILABLE
    assert timeouts == pytest.approx([2.0, 1.4, 0.7])  # no time for a 4th try after a 0.4 s pause
    assert pauses == pytest.approx([0.1, 0.2])


def test_error_helpers_decode_status_details(client, fake):
    info = error_details_pb2.ErrorInfo(
        reason="EMAIL_TAKEN", domain="storefront", metadata={"email": "ada@example.com"}
    )
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="password", description="too short"),
            error_details_pb2.BadRequest.FieldViolation(field="email", description="malformed"),
        ]
    )
    details = []
    for message in (info, bad_request):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad request", details=details)
    )
    fake.abort_status = AbortStatus(
        status.code, status.details, (*status.trailing_metadata, ("x-request-id", "req-42"))
    )

    with pytest.raises(grpc.RpcError) as raised:
        client.register("ada@example.com", "short")

    err = raised.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err) == ("EMAIL_TAKEN", {"email": "ada@example.com"})
    assert field_violations(err) == [("password", "too short"), ("email", "malformed")]
    assert request_id(err) == "req-42"
    assert len(fake.calls("RegisterUser")) == 1


def test_error_helpers_tolerate_errors_without_details(client, fake):
    fake.fail("GetCurrentUser", grpc.StatusCode.ABORTED)

    with pytest.raises(grpc.RpcError) as raised:
        whoami(client)

    assert error_info(raised.value) == ("", {})
    assert field_violations(raised.value) == []
    assert request_id(raised.value) == ""


@pytest.mark.parametrize(
    ("retry", "rand", "pause"),
    [
        (1, 0.5, 0.05),
        (2, 0.5, 0.1),
        (3, 0.999, 0.3996),
        (10, 0.999, 1.998),  # capped at max_backoff
        (1, 0.0, 0.0),
    ],
)
def test_backoff_is_jittered_exponential_and_capped(retry, rand, pause):
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=2.0, multiplier=2.0)

    assert policy.backoff(retry, rand) == pytest.approx(pause)


def test_client_certificate_needs_its_key():
    with pytest.raises(ValueError, match="together"):
        create_channel("127.0.0.1:1", client_certificate=b"cert")


def issue_certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def pem(item: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_mutual_tls_channel_reaches_a_server_that_requires_client_certificates(
    clock: FakeClock, tmp_path: Path
) -> None:
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = issue_certificate("test-ca", ca_key, None)
    server_cert = issue_certificate("storefront.test", server_key, (ca.subject, ca_key))
    client_cert = issue_certificate("exporter", client_key, (ca.subject, ca_key))
    (tmp_path / "client.pem").write_bytes(pem(client_cert))
    (tmp_path / "client.key").write_bytes(pem(client_key))
    credentials = grpc.ssl_server_credentials(
        [(pem(server_key), pem(server_cert))],
        root_certificates=pem(ca),
        require_client_auth=True,
    )
    fake = FakeIdentity(clock)
    server = start_server(fake, lambda s: s.add_secure_port("127.0.0.1:0", credentials))
    try:
        channel = create_channel(
            f"127.0.0.1:{server.storefront_port}",
            root_certificates=pem(ca),
            client_certificate=tmp_path / "client.pem",
            client_key=str(tmp_path / "client.key"),
            server_name_override="storefront.test",
        )
        with StorefrontClient(channel, default_timeout=DEFAULT_TIMEOUT) as tls_client:
            assert whoami(tls_client).id == "u1"
    finally:
        server.stop(None)
