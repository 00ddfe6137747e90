"""Malformed bodies, NUL characters and huge values get a clean, bounded INVALID_ARGUMENT."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pool, field_mask_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront.v1 import checkout_service_pb2 as checkout_pb
from storefront.v1 import common_pb2 as common_pb
from storefront.v1 import currency_service_pb2 as currency_pb
from storefront.v1 import identity_service_pb2 as identity_pb
from storefront.v1 import order_pb2, product_pb2
from storefront_client import error_info, field_violations, request_id

from server.app import HEALTH_SERVICE_NAME
from server.domain.principal import Role
from server.interceptors.errors import MAX_VIOLATIONS
from server.models.service_account import ServiceAccount
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode
# gRPC clients start refusing trailers above 8 KiB; ours stay well below.
TRAILER_LIMIT_BYTES = 8 * 1024

NOT_PROTOBUF = [
    pytest.param(b"\x0a\x05ab", id="length-beyond-the-body"),
    pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8-in-a-string"),
    pytest.param(b"\x08\x80", id="truncated-varint"),
]


def _raw_call(running: Running, method: str, body: bytes) -> grpc.RpcError:
    with running.channel() as channel:
        call = channel.unary_unary(method)
        return rpc_error(lambda: call(body, timeout=10))


def _trailer_bytes(err: grpc.RpcError) -> int:
    return sum(
        len(key) + len(value if isinstance(value, bytes) else value.encode())
        for key, value in err.trailing_metadata() or ()
    )


def _assert_clean_invalid_argument(err: grpc.RpcError) -> None:
    """INVALID_ARGUMENT in the usual shape: a reason, the request id twice, small trailers."""
    assert err.code() == StatusCode.INVALID_ARGUMENT, err.details()
    reason, _ = error_info(err)
    assert reason
    rid = request_id(err)
    assert rid
    [raw] = [v for k, v in err.trailing_metadata() or () if k == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    infos = [d for d in status.details if d.Is(error_details_pb2.RequestInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RequestInfo()
    infos[0].Unpack(info)
    assert info.request_id == rid
    # Base64 makes binary trailers a third larger on the wire than the raw bytes counted here.
    assert _trailer_bytes(err) * 4 // 3 < TRAILER_LIMIT_BYTES


@pytest.mark.parametrize("body", NOT_PROTOBUF)
@pytest.mark.parametrize(
    "method",
    [
        "/storefront.v1.CatalogService/GetProduct",
        "/storefront.v1.IdentityService/Login",
        "/storefront.v1.OrderService/GetOrder",
    ],
)
def test_a_body_that_is_not_protobuf_is_invalid_argument_logged_and_counted(
    running: Running, method: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    service, name = method.lstrip("/").split("/")
    with caplog.at_level(logging.INFO):
        err = _raw_call(running, method, body)
    _assert_clean_invalid_argument(err)
    assert error_info(err)[0] == "MALFORMED_REQUEST"
    assert "is not a valid storefront.v1." in (err.details() or "")

    warnings = [r for r in caplog.records if r.name == "storefront.requests"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert warnings[0].exc_info is None
    assert getattr(warnings[0], "request_id", None) == request_id(err)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    access = [r for r in caplog.records if r.name == "storefront.access"]
    assert [getattr(r, "grpc.code") for r in access] == ["InvalidArgument"]

    handled = running.app.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": service,
            "grpc_method": name,
            "grpc_code": "InvalidArgument",
        },
    )
    assert handled == 1


def test_every_unary_method_refuses_a_malformed_body_the_same_way(running: Running) -> None:
    methods = [
        f"/{service.full_name}/{method.name}"
        for service in map(descriptor_pool.Default().FindServiceByName, running.app.service_names)
        for method in service.methods
        if not method.client_streaming and not method.server_streaming
    ]
    assert len(methods) > 40
    for method in methods:
        err = _raw_call(running, method, b"\x0a\x05ab")
        _assert_clean_invalid_argument(err)
        assert error_info(err)[0] == "MALFORMED_REQUEST", method


def test_a_malformed_message_in_a_request_stream_imports_nothing(running: Running) -> None:
    staff = running.login(Role.STAFF)
    good = catalog_pb.ImportProductsRequest(
        product=product_pb2.Product(
            sku="GOOD-1",
            name="Good",
            price=common_pb.Money(currency_code="EUR", amount_minor=100),
        )
    ).SerializeToString()
    call = staff.channel.stream_unary("/storefront.v1.CatalogService/ImportProducts")
    err = rpc_error(lambda: call(iter([good, b"\x0a\x05ab"]), timeout=10))
    _assert_clean_invalid_argument(err)
    listed = staff.catalog.ListProducts(catalog_pb.ListProductsRequest(show_archived=True))
    assert not listed.products


def test_health_keeps_serving_after_malformed_bodies(running: Running) -> None:
    for body in (b"\x0a\x05ab", b"\xff" * 64):
        _raw_call(running, "/storefront.v1.CatalogService/GetProduct", body)
    with running.channel() as channel:
        check = channel.unary_unary(
            f"/{HEALTH_SERVICE_NAME}/Check",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
        answer = health_pb2.HealthCheckResponse.FromString(
            check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --- NUL characters: refused the same way on both engines -----------------------------------------


def test_a_nul_in_any_string_is_refused_before_it_reaches_the_database(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    err = rpc_error(
        lambda: admin.identity.CreateServiceAccount(
            identity_pb.CreateServiceAccountRequest(display_name="a\x00b")
        )
    )
    _assert_clean_invalid_argument(err)
    assert field_violations(err) == [("display_name", "must not contain NUL characters")]
    with running.db.connection_context():
        assert ServiceAccount.select().count() == 0


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param(
            lambda c: c.identity.Login(
                identity_pb.LoginRequest(email="a\x00@example.com", password=PASSWORD)
            ),
            "email",
            id="login-email",
        ),
        pytest.param(
            lambda c: c.catalog.SearchProducts(catalog_pb.SearchProductsRequest(query="mug\x00")),
            "query",
            id="search-query",
        ),
        pytest.param(
            lambda c: c.catalog.UpdateProduct(
                catalog_pb.UpdateProductRequest(
                    product=product_pb2.Product(id=str(uuid.uuid4()), categories=["a", "b\x00"])
                )
            ),
            "product.categories[1]",
            id="nested-repeated",
        ),
    ],
)
def test_nul_violations_name_the_field(
    running: Running, call: Callable[..., object], field: str
) -> None:
    admin = running.login(Role.ADMIN)
    err = rpc_error(lambda: call(admin))
    _assert_clean_invalid_argument(err)
    assert violated_fields(err) == {field}


def test_a_service_account_name_with_control_characters_is_refused(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    err = rpc_error(
        lambda: admin.identity.CreateServiceAccount(
            identity_pb.CreateServiceAccountRequest(display_name="a\x07b")
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"display_name"}


# --- bounded error details ----------------------------------------------------------------------


def _update_rates(count: int) -> Callable[..., object]:
    rates = [currency_pb.ExchangeRate(currency_code="XX", rate="x") for _ in range(count)]
    return lambda c: c.currency.UpdateExchangeRates(
        currency_pb.UpdateExchangeRatesRequest(rates=rates)
    )


def _update_user(paths: list[str]) -> Callable[..., object]:
    return lambda c: c.identity.UpdateCurrentUser(
        identity_pb.UpdateCurrentUserRequest(
            user=identity_pb.User(display_name="Ada"),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )


def _update_product(paths: list[str]) -> Callable[..., object]:
    return lambda c: c.catalog.UpdateProduct(
        catalog_pb.UpdateProductRequest(
            product=product_pb2.Product(id=str(uuid.uuid4()), name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            etag='W/"1"',
        )
    )


def _place_order(currency_code: str) -> Callable[..., object]:
    return lambda c: c.checkout.PlaceOrder(
        checkout_pb.PlaceOrderRequest(
            request_id=str(uuid.uuid4()),
            currency_code=currency_code,
            payment_method_token="tok_visa",
            shipping_address=order_pb2.Address(
                recipient_name="Ada", line1="1 Way", city="Berlin", country_code="DE"
            ),
        )
    )


@pytest.mark.parametrize(
    ("call", "role", "at_least"),
    [
        pytest.param(_place_order("Q" * 17000), Role.CUSTOMER, 1, id="huge-currency-code"),
        pytest.param(_update_user(["r" * 17000]), Role.CUSTOMER, 1, id="huge-mask-path"),
        pytest.param(_update_user(["role"] * 300), Role.CUSTOMER, 300, id="300-mask-paths"),
        pytest.param(_update_rates(200), Role.STAFF, 400, id="200-bad-rates"),
        pytest.param(_update_product(["sku", "x" * 5000] * 50), Role.STAFF, 50, id="100-paths"),
    ],
)
def test_error_details_stay_small_whatever_the_request(
    running: Running, call: Callable[..., object], role: Role, at_least: int
) -> None:
    client = running.login(role)
    err = rpc_error(lambda: call(client))
    _assert_clean_invalid_argument(err)
    violations = field_violations(err)
    assert 1 <= len(violations) <= MAX_VIOLATIONS + 1
    for field, description in violations:
        assert len(field) <= 128 and len(description.encode()) <= 160
    if at_least > MAX_VIOLATIONS:
        field, description = violations[-1]
        assert field == ""
        left_out = int(description.split()[1])
        assert left_out + len(violations) - 1 >= at_least
    # The status message names the first fields too, within its own bound.
    message = err.details() or ""
    assert len(message.encode()) <= 512
    first_field, first_description = violations[0]
    assert message.startswith(f"{first_field}: {first_description[:40]}")


def test_the_status_message_names_the_invalid_fields(running: Running) -> None:
    customer = running.login(Role.CUSTOMER)
    request = checkout_pb.PlaceOrderRequest(
        request_id="not-a-uuid",
        currency_code="EUR",
        payment_method_token="tok_visa",
        shipping_address=order_pb2.Address(
            recipient_name="Ada", line1="1 Way", city="Nowhere", country_code="XX"
        ),
    )
    err = rpc_error(lambda: customer.checkout.PlaceOrder(request))
    _assert_clean_invalid_argument(err)
    violations = field_violations(err)
    assert {field for field, _ in violations} == {"request_id", "shipping_address.country_code"}
    # Readable from any tool: the message is the violations, in the detail's order.
    assert err.details() == "; ".join(f"{field}: {text}" for field, text in violations)
    assert error_info(err)[0] == "FIELD_INVALID"


def test_more_than_five_invalid_fields_are_counted_in_the_message(running: Running) -> None:
    staff = running.login(Role.STAFF)
    err = rpc_error(lambda: _update_rates(3)(staff))
    violations = field_violations(err)
    assert 5 < len(violations) <= MAX_VIOLATIONS and violations[-1][0]  # every one listed
    named = "; ".join(f"{field}: {text}" for field, text in violations[:5])
    assert err.details() == f"{named}; and {len(violations) - 5} more"


def test_a_huge_currency_code_is_refused_without_a_lookup_or_an_echo(running: Running) -> None:
    customer = running.login(Role.CUSTOMER)
    err = rpc_error(lambda: _place_order("Q" * 17000)(customer))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    [description] = [d for f, d in field_violations(err) if f == "currency_code"]
    assert "QQQQ" not in description


# --- ChangePassword ------------------------------------------------------------------------------


def test_a_wrong_current_password_is_invalid_argument_as_the_contract_says(
    running: Running,
) -> None:
    client = running.login()
    err = rpc_error(
        lambda: client.identity.ChangePassword(
            identity_pb.ChangePasswordRequest(
                current_password="not the password", new_password="a whole new passphrase"
            )
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert error_info(err)[0] == "INVALID_CURRENT_PASSWORD"
    assert violated_fields(err) == {"current_password"}


def test_an_overlong_current_password_is_refused_before_hashing(running: Running) -> None:
    client = running.login()
    err = rpc_error(
        lambda: client.identity.ChangePassword(
            identity_pb.ChangePasswordRequest(
                current_password="p" * (1 << 20), new_password="a whole new passphrase"
            )
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert error_info(err)[0] == "FIELD_INVALID"  # a field check, not a wrong password
    assert field_violations(err) == [("current_password", "must be at most 128 characters")]
    client.identity.GetCurrentUser(identity_pb.GetCurrentUserRequest())
