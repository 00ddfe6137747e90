"""Every unary RPC, fed requests built from its descriptors, answers in a well-formed way.

The RPCs come from the generated descriptors, so a new one is fuzzed without touching this file.
One real server per engine gets, per RPC, bodies that are not protobuf, each field alone at its
edge values, and a derandomized hypothesis campaign; each request goes as one caller (anonymous,
customer or admin; those the RPC's access option admits more often). Every answer must pass one
oracle: never UNKNOWN or INTERNAL; every failure carries its request id (`x-request-id` and a
google.rpc.RequestInfo) in trailers under 8 KiB; no traceback, SQL or driver name in the message
or any detail; never UNSTORABLE_VALUE, which means validation let a value reach the database.
Afterwards the server still reports SERVING.

Sizes: STOREFRONT_FUZZ_EXAMPLES examples per RPC on SQLite (default 300) and
STOREFRONT_FUZZ_EXAMPLES_POSTGRES on PostgreSQL (default a sixth of that, at least 50);
`make fuzz` runs the nightly size.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import peewee
import pytest
import storefront.v1
from google.protobuf import any_pb2, message_factory, symbol_database
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from storefront.v1 import cart_service_pb2, checkout_service_pb2

from server.app import create_app
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.interceptors.auth import access_rules
from server.interceptors.request_log import REQUEST_ID_HEADER
from server.models.user import User
from tests.conftest import empty_tables, insert_product
from tests.e2e.conftest import PASSWORD, Running, make_settings
from tests.fuzz_requests import (
    MALFORMED_BODIES,
    FuzzBody,
    Hints,
    MessageStrategies,
    bodies,
    single_field_probes,
)

pytestmark = pytest.mark.fuzz

ANONYMOUS = "anonymous"
CUSTOMER = "customer"
ADMIN = "admin"
CALLERS = (ANONYMOUS, CUSTOMER, ADMIN)
CALLER_ROLES = {CUSTOMER: Role.CUSTOMER, ADMIN: Role.ADMIN}
CALL_TIMEOUT_SECONDS = 10
# grpc refuses received metadata above 8 KiB (at random up to 16 KiB, always beyond), counting
# each entry as name + value + 32 bytes (HPACK's accounting), its own entries included.
TRAILER_LIMIT_BYTES = 8 * 1024
TRAILER_ENTRY_OVERHEAD = 32
GRPC_OWN_TRAILERS = ((":status", b"200"), ("content-type", b"application/grpc"))
STATUS_DETAILS_HEADER = "grpc-status-details-bin"
FORBIDDEN_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
LEAKS = (
    re.compile(r"Traceback|File \""),
    re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|WHERE|INTO|SET|VALUES)\b", re.S),
    re.compile(r"peewee|psycopg|sqlite3|IntegrityError|OperationalError", re.I),
)
UNSTORABLE_VALUE = "UNSTORABLE_VALUE"
OVERSIZED_TRAILERS = "received metadata size exceeds"


def storefront_services() -> list[ServiceDescriptor]:
    """Returns every service the generated storefront.v1 modules declare."""
    services: dict[str, ServiceDescriptor] = {}
    for module_info in pkgutil.iter_modules(storefront.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"storefront.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = service
    return sorted(services.values(), key=lambda service: service.full_name)


def unary_methods() -> dict[str, MethodDescriptor]:
    """Returns every unary-unary RPC by full path (/package.Service/Method)."""
    return {
        f"/{service.full_name}/{method.name}": method
        for service in storefront_services()
        for method in service.methods
        if not method.client_streaming and not method.server_streaming
    }


UNARY_METHODS = unary_methods()
ACCESS_RULES = access_rules(storefront_services())
RPC_IDS = [path.rsplit(".", 1)[-1] for path in UNARY_METHODS]


def examples_per_rpc(db: peewee.Database) -> int:
    """Returns the campaign size for the server's engine (environment overrides the defaults)."""
    on_sqlite = int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES", "300"))
    if not isinstance(db, peewee.PostgresqlDatabase):
        return on_sqlite
    return int(os.environ.get("STOREFRONT_FUZZ_EXAMPLES_POSTGRES", str(max(50, on_sqlite // 6))))


# --- the oracle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a caller saw: the status code, the message and the trailing metadata."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str | bytes], ...]
    response: bytes = b""


def _text_in(message: Message) -> list[str]:
    """Returns every string in `message`, nested messages and map keys included."""
    found: list[str] = []
    for descriptor, value in message.ListFields():
        items = value if descriptor.is_repeated else [value]
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            items = [*value.keys(), *value.values()]
        for item in items:
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, Message):
                found.extend(_text_in(item))
    return found


def _unpacked(detail: any_pb2.Any) -> Message:
    message_class = symbol_database.Default().GetSymbol(detail.TypeName())
    unpacked: Message = message_class()
    assert detail.Unpack(unpacked), detail.type_url
    return unpacked


def trailer_bytes(answer: Answer) -> int:
    """Returns the trailers' size as grpc counts it against its limit: name + value + 32 per
    entry, binary values base64-encoded, plus the entries grpc adds itself."""
    entries = [
        *GRPC_OWN_TRAILERS,
        ("grpc-status", str(answer.code.value[0]).encode()),
        ("grpc-message", answer.message.encode()),
        *(
            (key, value if isinstance(value, bytes) else value.encode())
            for key, value in answer.trailers
        ),
    ]
    return sum(
        len(key)
        + ((len(value) * 4 + 2) // 3 if key.endswith("-bin") else len(value))
        + TRAILER_ENTRY_OVERHEAD
        for key, value in entries
    )


def assert_well_formed(answer: Answer, output: Descriptor) -> None:
    """Fails unless `answer` is what any request, however hostile, may get back."""
    if answer.code == grpc.StatusCode.OK:
        message_factory.GetMessageClass(output).FromString(answer.response)
        return
    assert answer.code not in FORBIDDEN_CODES, f"{answer.code.name}: {answer.message!r}"
    # One assertion for both faces of the defect: between grpc's soft and hard limits the client
    # drops oversized trailers at random, so the same request fails either way.
    size = trailer_bytes(answer)
    oversized = OVERSIZED_TRAILERS in answer.message or size >= TRAILER_LIMIT_BYTES
    assert not oversized, f"trailers over 8 KiB ({size} bytes arrived): {answer.message[:200]!r}"
    trailers = dict(answer.trailers)
    request_id = trailers.get(REQUEST_ID_HEADER)
    assert request_id, f"no {REQUEST_ID_HEADER} on {answer.code.name}: {answer.message!r}"
    raw_status = trailers.get(STATUS_DETAILS_HEADER)
    assert isinstance(raw_status, bytes), f"no {STATUS_DETAILS_HEADER} on {answer.code.name}"
    status = status_pb2.Status.FromString(raw_status)
    details = [_unpacked(detail) for detail in status.details]
    request_ids = [d.request_id for d in details if isinstance(d, error_details_pb2.RequestInfo)]
    assert request_ids == [request_id], f"RequestInfo {request_ids} vs header {request_id!r}"
    reasons = [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert UNSTORABLE_VALUE not in reasons, f"a value reached the database: {answer.message!r}"
    for text in [answer.message, status.message, *(t for d in details for t in _text_in(d))]:
        for leak in LEAKS:
            assert not leak.search(text), f"leaks {leak.pattern!r}: {text[:300]!r}"


# --- the server and its callers ------------------------------------------------------------------


@dataclass
class FuzzTarget:
    """A running server with an anonymous, a customer and an admin caller, and rows to aim at."""

    running: Running
    channel: grpc.Channel
    emails: dict[str, str]
    hints: Hints
    tokens: dict[str, str] = field(default_factory=dict)

    def metadata(self, caller: str) -> tuple[tuple[str, str], ...]:
        """Returns the caller's authorization header, signing in again if its session ended."""
        if caller == ANONYMOUS:
            return ()
        if caller not in self.tokens:
            self.tokens[caller] = self._sign_in(caller)
        return (("authorization", f"Bearer {self.tokens[caller]}"),)

    def _sign_in(self, caller: str) -> str:
        client = self.running.client()
        try:
            client.login(self.emails[caller], PASSWORD)
        except grpc.RpcError:
            # Throttled by fuzzed ChangePassword calls, or changed: carry on as a new account.
            self.emails[caller] = self.running.create_user(CALLER_ROLES[caller])
            client.login(self.emails[caller], PASSWORD)
        assert client.session is not None
        return client.session.access_token

    def send(self, path: str, body: bytes, caller: str) -> Answer:
        """Sends raw `body` to `path` as `caller`; returns what came back."""
        call = self.channel.unary_unary(path)
        try:
            response, outcome = call.with_call(
                body, metadata=self.metadata(caller), timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.RpcError as err:
            answer = Answer(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))
            if answer.code == grpc.StatusCode.UNAUTHENTICATED:
                # Logout (or anything else) may have ended the session: sign in before next use.
                self.tokens.pop(caller, None)
            return answer
        return Answer(grpc.StatusCode.OK, "", tuple(outcome.trailing_metadata() or ()), response)

    def serving(self) -> bool:
        """Whether the server's overall health is SERVING."""
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# Field by field, so the test does not depend on which generated module declares Address.
ADDRESS = {
    "recipient_name": "Erika Mustermann",
    "line1": "Hauptstrasse 1",
    "city": "Berlin",
    "postal_code": "10115",
    "country_code": "DE",
}


def _seed_rows(running: Running, customer_email: str) -> list[str]:
    """Creates a product, an order and a cart line for the customer; returns their ids."""
    with running.db.connection_context():
        product_id = insert_product(on_hand=10_000)
    customer = running.client()
    customer.login(customer_email, PASSWORD)
    item = cart_service_pb2.AddCartItemRequest(
        product_id=product_id, quantity=1, request_id=str(uuid.uuid4())
    )
    customer.cart.AddCartItem(item)
    order = checkout_service_pb2.PlaceOrderRequest(
        request_id=str(uuid.uuid4()), currency_code="EUR", payment_method_token="tok_visa"
    )
    for name, value in ADDRESS.items():
        setattr(order.shipping_address, name, value)
    placed = customer.checkout.PlaceOrder(order)
    item.request_id = str(uuid.uuid4())
    cart = customer.cart.AddCartItem(item).cart
    return [product_id, placed.order.id, *(line.id for line in cart.lines)]


@pytest.fixture(scope="module")
def target(e2e_database_url: tuple[Path, str]) -> Iterator[FuzzTarget]:
    """One server per engine for the whole campaign (a server per RPC would cost more than the
    RPC's campaign on PostgreSQL), its callers signed up, and a product, order and cart line."""
    tmp, url = e2e_database_url
    app = create_app(make_settings(tmp, url))
    app.start()
    try:
        empty_tables(app.db)
        running = Running(app, app.db, f"127.0.0.1:{app.port}", PasswordHasher(concurrency=4))
        emails = {caller: running.create_user(role) for caller, role in CALLER_ROLES.items()}
        # Aimed at by id and email instead of the callers, so a fuzzed DisableUser, role change
        # or failed sign-in does not lock the callers out of the rest of the campaign.
        victim_email = running.create_user(Role.CUSTOMER)
        with running.db.connection_context():
            victim_id = str(User.get(User.email == victim_email).id)
        rows = _seed_rows(running, emails[CUSTOMER])
        hints = Hints(ids=[victim_id, *rows], emails=[victim_email, "nobody@example.com"])
        yield FuzzTarget(running, running.channel(), emails, hints)
    finally:
        app.stop(grace=0)


def allowed_callers(path: str) -> list[str]:
    """Returns the callers the RPC's access option admits, least privileged first."""
    rule = ACCESS_RULES[path]
    allowed = [
        caller
        for caller in CALLERS
        if rule.public or (caller != ANONYMOUS and CALLER_ROLES[caller] in rule.roles)
    ]
    return allowed or list(CALLERS)


def callers_for(path: str) -> st.SearchStrategy[str]:
    """Every caller, those the RPC admits three times as often: most requests get past auth."""
    return st.sampled_from([*allowed_callers(path) * 3, *CALLERS])


def _failures(target: FuzzTarget, path: str, cases: Iterable[tuple[bytes, str, str]]) -> str:
    """Sends each (body, caller, label) case; returns one line per ill-formed answer."""
    output = UNARY_METHODS[path].output_type
    failures = []
    for body, caller, label in cases:
        try:
            assert_well_formed(target.send(path, body, caller), output)
        except AssertionError as failure:
            # The first line is the oracle's own message; pytest's explanation follows it.
            failures.append(f"{label} as {caller}: {str(failure).splitlines()[0]}")
    return "\n".join(failures)


# --- the tests -----------------------------------------------------------------------------------


def test_every_registered_service_is_fuzzed(target: FuzzTarget) -> None:
    discovered = {service.full_name for service in storefront_services()}
    assert set(target.running.app.service_names) == discovered


@pytest.mark.parametrize("path", UNARY_METHODS, ids=RPC_IDS)
def test_bodies_that_are_not_protobuf_get_a_well_formed_answer(
    target: FuzzTarget, path: str
) -> None:
    cases = [(body, caller, repr(body)) for body in MALFORMED_BODIES for caller in CALLERS]
    failures = _failures(target, path, cases)
    assert not failures, failures
    assert target.serving()


@pytest.mark.parametrize("path", UNARY_METHODS, ids=RPC_IDS)
def test_each_field_at_its_edge_values_gets_a_well_formed_answer(
    target: FuzzTarget, path: str
) -> None:
    caller = allowed_callers(path)[-1]
    probes = single_field_probes(UNARY_METHODS[path].input_type)
    failures = _failures(target, path, [(probe.body, caller, repr(probe)) for probe in probes])
    assert not failures, failures
    assert target.serving()


# Hypothesis warns when it prints the (deeply nested) strategy of a large message.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@pytest.mark.parametrize("path", UNARY_METHODS, ids=RPC_IDS)
def test_fuzzed_requests_get_a_well_formed_answer(target: FuzzTarget, path: str) -> None:
    method = UNARY_METHODS[path]

    @settings(
        max_examples=examples_per_rpc(target.running.db),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        request=bodies(method.input_type, MessageStrategies(target.hints)),
        caller=callers_for(path),
    )
    def campaign(request: FuzzBody, caller: str) -> None:
        answer = target.send(path, request.body, caller)
        try:
            assert_well_formed(answer, method.output_type)
        except AssertionError:
            note(f"{path} as {caller}: {request!r}")
            raise

    campaign()
    assert target.serving()
