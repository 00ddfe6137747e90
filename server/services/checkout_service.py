"""CheckoutService servicer: unpacks the request, previews or places the order, packs the
response."""

from __future__ import annotations

import grpc
from storefront.v1 import checkout_service_pb2, checkout_service_pb2_grpc, common_pb2

from server import call_context
from server.domain import checkout
from server.domain.money import Money
from server.services.converters import (
    address_from_proto,
    money_from_proto,
    money_to_proto,
    rate_text,
)
from server.services.order_service import order_to_proto

pb = checkout_service_pb2


class CheckoutServicer(checkout_service_pb2_grpc.CheckoutServiceServicer):
    """Implements storefront.v1.CheckoutService."""

    def __init__(self, config: checkout.Checkout) -> None:
        self.config = config

    def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.ServicerContext
    ) -> pb.PlaceOrderResponse:
        placed = checkout.place_order(
            self.config,
            call_context.principal(),
            checkout.PlaceOrder(
                request_id=request.request_id,
                address=address_from_proto(request.shipping_address),
                currency_code=request.currency_code,
                payment_method_token=request.payment_method_token,
                expected_total=money_from_proto(request.expected_total)
                if request.HasField("expected_total")
                else None,
                discount_code=request.discount_code,
            ),
        )
        return pb.PlaceOrderResponse(order=order_to_proto(placed))

    def PreviewCheckout(
        self, request: pb.PreviewCheckoutRequest, context: grpc.ServicerContext
    ) -> pb.PreviewCheckoutResponse:
        price = checkout.preview(
            self.config,
            call_context.principal(),
            checkout.PreviewCheckout(
                address=address_from_proto(request.shipping_address),
                currency_code=request.currency_code,
                discount_code=request.discount_code,
            ),
        )

        def money(amount_minor: int) -> common_pb2.Money:
            return money_to_proto(Money(price.currency, amount_minor))

        return pb.PreviewCheckoutResponse(
            lines=[
                pb.PreviewLine(
                    line_id=line.cart_line_id,
                    product_id=line.product.id,
                    sku=line.product.sku,
                    name=line.product.name,
                    quantity=line.quantity,
                    unit_price=money(line.unit_price_minor),
                    line_total=money(line.total_minor),
                    discount=money(line.discount_minor),
                )
                for line in price.lines
            ],
            subtotal=money(price.subtotal_minor),
            shipping=money(price.shipping_minor),
            shipping_service_level=price.shipping.service_level,
            tax_rate=rate_text(price.tax_rate),
            tax=money(price.tax_minor),
            total=money(price.total_minor),
            discount=money(price.discount_minor),
            discount_code=price.discount_code,
        )
