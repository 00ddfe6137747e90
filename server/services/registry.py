"""Every storefront service: its descriptor and how to add its servicer to a server.

The app registers servicers from this list, and the access rules, health, reflection and the
access test read the same descriptors, so a new service is added in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from storefront.v1 import (
    cart_service_pb2,
    cart_service_pb2_grpc,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    checkout_service_pb2,
    checkout_service_pb2_grpc,
    currency_service_pb2,
    currency_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
    promotion_service_pb2,
    promotion_service_pb2_grpc,
    report_service_pb2,
    report_service_pb2_grpc,
    shipping_service_pb2,
    shipping_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from server.domain import account_recovery, checkout, order_watch, shipping, webhooks
from server.domain.page_tokens import PageTokenSigner
from server.domain.product_cache import ProductCache
from server.domain.sessions import SessionPolicy
from server.services.cart_service import CartServicer
from server.services.catalog_service import CatalogServicer
from server.services.checkout_service import CheckoutServicer
from server.services.currency_service import CurrencyServicer
from server.services.identity_service import IdentityServicer
from server.services.inventory_service import InventoryServicer
from server.services.order_service import OrderServicer
from server.services.promotion_service import PromotionServicer
from server.services.report_service import ReportServicer
from server.services.shipping_service import ShippingServicer
from server.services.webhook_service import WebhookServicer


@dataclass(frozen=True)
class Dependencies:
    """What the servicers are made with; built once by the app."""

    sessions: SessionPolicy
    pages: PageTokenSigner
    product_cache: ProductCache
    shipping_rules: shipping.Rules
    checkout: checkout.Checkout
    webhook_registration: webhooks.Registration
    order_streams: order_watch.OrderStreams
    account_tokens: account_recovery.TokenKey


@dataclass(frozen=True)
class Service:
    """One service: its descriptor (RPCs, access rules) and how its servicer joins a server."""

    descriptor: ServiceDescriptor
    add_to: Callable[[grpc.Server, Dependencies], None]

    @property
    def name(self) -> str:
        """The full name, e.g. storefront.v1.OrderService."""
        return str(self.descriptor.full_name)


def _described(module: object, name: str) -> ServiceDescriptor:
    return module.DESCRIPTOR.services_by_name[name]  # type: ignore[attr-defined,no-any-return]


SERVICES: tuple[Service, ...] = (
    Service(
        _described(identity_service_pb2, "IdentityService"),
        lambda server, deps: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            IdentityServicer(deps.sessions, deps.pages, deps.account_tokens), server
        ),
    ),
    Service(
        _described(catalog_service_pb2, "CatalogService"),
        lambda server, deps: catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(deps.pages, deps.product_cache), server
        ),
    ),
    Service(
        _described(inventory_service_pb2, "InventoryService"),
        lambda server, deps: inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(
            InventoryServicer(deps.pages), server
        ),
    ),
    Service(
        _described(currency_service_pb2, "CurrencyService"),
        lambda server, deps: currency_service_pb2_grpc.add_CurrencyServiceServicer_to_server(
            CurrencyServicer(), server
        ),
    ),
    Service(
        _described(shipping_service_pb2, "ShippingService"),
        lambda server, deps: shipping_service_pb2_grpc.add_ShippingServiceServicer_to_server(
            ShippingServicer(deps.shipping_rules), server
        ),
    ),
    Service(
        _described(cart_service_pb2, "CartService"),
        lambda server, deps: cart_service_pb2_grpc.add_CartServiceServicer_to_server(
            CartServicer(), server
        ),
    ),
    Service(
        _described(checkout_service_pb2, "CheckoutService"),
        lambda server, deps: checkout_service_pb2_grpc.add_CheckoutServiceServicer_to_server(
            CheckoutServicer(deps.checkout), server
        ),
    ),
    Service(
        _described(order_service_pb2, "OrderService"),
        lambda server, deps: order_service_pb2_grpc.add_OrderServiceServicer_to_server(
            OrderServicer(deps.pages, deps.order_streams), server
        ),
    ),
    Service(
        _described(webhook_service_pb2, "WebhookService"),
        lambda server, deps: webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(deps.pages, deps.webhook_registration), server
        ),
    ),
    Service(
        _described(promotion_service_pb2, "PromotionService"),
        lambda server, deps: promotion_service_pb2_grpc.add_PromotionServiceServicer_to_server(
            PromotionServicer(deps.pages), server
        ),
    ),
    Service(
        _described(report_service_pb2, "ReportService"),
        lambda server, deps: report_service_pb2_grpc.add_ReportServiceServicer_to_server(
            ReportServicer(), server
        ),
    ),
)

DESCRIPTORS: tuple[ServiceDescriptor, ...] = tuple(service.descriptor for service in SERVICES)
