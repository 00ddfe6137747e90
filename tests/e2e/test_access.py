"""Every RPC, discovered from the registered descriptors, called as every kind of caller."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from storefront.v1 import identity_service_pb2

from server.domain.principal import Role
from server.interceptors.auth import access_rules
from server.services import registry
from tests.e2e.conftest import Running

SERVICES = registry.DESCRIPTORS
ANONYMOUS = "anonymous"
CALLERS = [ANONYMOUS, Role.CUSTOMER, Role.STAFF, Role.ADMIN, Role.SERVICE]
USERS = frozenset({Role.CUSTOMER, Role.STAFF, Role.ADMIN})
STAFF = frozenset({Role.STAFF, Role.ADMIN})
CUSTOMERS = frozenset({Role.CUSTOMER})
ADMIN = frozenset({Role.ADMIN})
PUBLIC = "public"

# Who may call each RPC. A new RPC without a row here fails test_every_rpc_has_a_row.
EXPECTED: dict[str, str | frozenset[Role]] = {
    "/storefront.v1.IdentityService/RegisterUser": PUBLIC,
    "/storefront.v1.IdentityService/Login": PUBLIC,
    "/storefront.v1.IdentityService/RefreshSession": PUBLIC,
    "/storefront.v1.IdentityService/Logout": USERS,
    "/storefront.v1.IdentityService/GetCurrentUser": USERS,
    "/storefront.v1.IdentityService/UpdateCurrentUser": USERS,
    "/storefront.v1.IdentityService/ChangePassword": USERS,
    "/storefront.v1.IdentityService/ListUsers": frozenset({Role.ADMIN}),
    "/storefront.v1.IdentityService/UpdateUserRole": frozenset({Role.ADMIN}),
    "/storefront.v1.IdentityService/DisableUser": frozenset({Role.ADMIN}),
    "/storefront.v1.IdentityService/ClearSignInThrottle": frozenset({Role.ADMIN}),
    "/storefront.v1.IdentityService/CreateServiceAccount": frozenset({Role.ADMIN}),
    "/storefront.v1.IdentityService/IssueServiceToken": PUBLIC,
    "/storefront.v1.IdentityService/ListSigningKeys": PUBLIC,
    "/storefront.v1.CatalogService/CreateProduct": STAFF,
    "/storefront.v1.CatalogService/GetProduct": PUBLIC,
    "/storefront.v1.CatalogService/BatchGetProducts": PUBLIC,
    "/storefront.v1.CatalogService/ListProducts": PUBLIC,
    "/storefront.v1.CatalogService/SearchProducts": PUBLIC,
    "/storefront.v1.CatalogService/UpdateProduct": STAFF,
    "/storefront.v1.CatalogService/ArchiveProduct": STAFF,
    "/storefront.v1.CatalogService/RestoreProduct": STAFF,
    "/storefront.v1.CatalogService/ListCategories": PUBLIC,
    "/storefront.v1.CatalogService/ImportProducts": STAFF,
    "/storefront.v1.InventoryService/GetStockLevel": PUBLIC,
    "/storefront.v1.InventoryService/BatchGetStockLevels": PUBLIC,
    "/storefront.v1.InventoryService/AdjustStock": STAFF,
    "/storefront.v1.OrderService/WatchOrder": USERS,
    "/storefront.v1.OrderService/WatchOrders": STAFF,
    "/storefront.v1.WebhookService/CreateWebhookEndpoint": ADMIN,
    "/storefront.v1.WebhookService/GetWebhookEndpoint": ADMIN,
    "/storefront.v1.WebhookService/ListWebhookEndpoints": ADMIN,
    "/storefront.v1.WebhookService/UpdateWebhookEndpoint": ADMIN,
    "/storefront.v1.WebhookService/DeleteWebhookEndpoint": ADMIN,
    "/storefront.v1.WebhookService/RotateWebhookSecret": ADMIN,
    "/storefront.v1.WebhookService/ListWebhookDeliveries": ADMIN,
    "/storefront.v1.WebhookService/RedeliverWebhookEvent": ADMIN,
    "/storefront.v1.WebhookService/SendTestWebhookEvent": ADMIN,
    "/storefront.v1.InventoryService/BatchAdjustStock": STAFF,
    "/storefront.v1.InventoryService/ListStockMovements": STAFF,
    "/storefront.v1.CurrencyService/ListCurrencies": PUBLIC,
    "/storefront.v1.CurrencyService/ConvertMoney": PUBLIC,
    "/storefront.v1.CurrencyService/UpdateExchangeRates": STAFF,
    "/storefront.v1.ShippingService/GetShippingQuote": PUBLIC,
    "/storefront.v1.CartService/GetCart": CUSTOMERS,
    "/storefront.v1.CartService/AddCartItem": CUSTOMERS,
    "/storefront.v1.CartService/UpdateCartItem": CUSTOMERS,
    "/storefront.v1.CartService/RemoveCartItem": CUSTOMERS,
    "/storefront.v1.CartService/EmptyCart": CUSTOMERS,
    "/storefront.v1.CheckoutService/PlaceOrder": CUSTOMERS,
    "/storefront.v1.CheckoutService/PreviewCheckout": CUSTOMERS,
    "/storefront.v1.PromotionService/CreatePromotion": STAFF,
    "/storefront.v1.PromotionService/GetPromotion": STAFF,
    "/storefront.v1.PromotionService/ListPromotions": STAFF,
    "/storefront.v1.PromotionService/ArchivePromotion": STAFF,
    "/storefront.v1.ReportService/GetSalesReport": STAFF,
    "/storefront.v1.ReportService/GetTopProductsReport": STAFF,
    "/storefront.v1.ReportService/GetStockValuationReport": STAFF,
    "/storefront.v1.ReportService/GetRefundsReport": STAFF,
    "/storefront.v1.IdentityService/EnableUser": ADMIN,
    "/storefront.v1.IdentityService/RequestPasswordReset": PUBLIC,
    "/storefront.v1.IdentityService/ResetPassword": PUBLIC,
    "/storefront.v1.IdentityService/SendVerificationEmail": USERS,
    "/storefront.v1.IdentityService/VerifyEmail": PUBLIC,
    "/storefront.v1.CatalogService/ListRelatedProducts": PUBLIC,
    "/storefront.v1.CatalogService/ListRecommendedProducts": CUSTOMERS,
    "/storefront.v1.OrderService/GetOrder": USERS,
    "/storefront.v1.OrderService/ListOrders": USERS,
    "/storefront.v1.OrderService/CancelOrder": USERS,
    "/storefront.v1.OrderService/ShipOrder": STAFF,
    "/storefront.v1.OrderService/MarkOrderDelivered": STAFF,
    "/storefront.v1.OrderService/RefundOrder": STAFF,
    "/storefront.v1.OrderService/ListOrderEvents": USERS,
}


def discovered_methods() -> dict[str, MethodDescriptor]:
    """Returns every RPC the server registers, by full path."""
    return {
        f"/{service.full_name}/{method.name}": method
        for service in SERVICES
        for method in service.methods
    }


def test_every_rpc_has_a_row() -> None:
    assert set(discovered_methods()) == set(EXPECTED)


def test_the_table_matches_the_contract() -> None:
    rules = access_rules(SERVICES)
    for path, expected in EXPECTED.items():
        rule = rules[path]
        if expected == PUBLIC:
            assert rule.public, path
        else:
            assert not rule.public and rule.roles == expected, path


def _token_for(running: Running, caller: str | Role) -> str | None:
    if caller == ANONYMOUS:
        return None
    if caller is Role.SERVICE:
        admin = running.login(Role.ADMIN)
        created = admin.identity.CreateServiceAccount(
            identity_service_pb2.CreateServiceAccountRequest(display_name="access-test")
        )
        issued = running.client().identity.IssueServiceToken(
            identity_service_pb2.IssueServiceTokenRequest(
                client_id=created.service_account.client_id, client_secret=created.client_secret
            )
        )
        return issued.session.access_token
    client = running.login(Role(caller))
    assert client.session is not None
    return client.session.access_token


@pytest.mark.parametrize("caller", CALLERS, ids=str)
def test_each_caller_gets_what_the_contract_says(running: Running, caller: str | Role) -> None:
    token = _token_for(running, caller)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel = running.channel()
    # Logout last: it ends the session the token belongs to.
    for path, method in sorted(
        discovered_methods().items(), key=lambda item: item[0].endswith("/Logout")
    ):
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        codec = {
            "request_serializer": request_class.SerializeToString,
            "response_deserializer": response_class.FromString,
        }
        expected = EXPECTED[path]
        allowed = expected == PUBLIC or (caller != ANONYMOUS and caller in expected)
        try:
            if method.client_streaming:
                channel.stream_unary(path, **codec)(
                    iter([request_class()]), metadata=metadata, timeout=10
                )
            else:
                channel.unary_unary(path, **codec)(request_class(), metadata=metadata, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        if allowed:
            # Empty requests may be invalid, but never refused for who the caller is.
            assert code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), (path, caller, code)
        elif caller == ANONYMOUS:
            assert code == grpc.StatusCode.UNAUTHENTICATED, (path, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (path, caller, code)
