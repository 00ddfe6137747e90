"""CheckoutService servicer: unpacks the request, places the order, packs the response."""

from __future__ import annotations

import grpc
from storefront.v1 import checkout_service_pb2, checkout_service_pb2_grpc

from server import call_context
from server.domain import checkout
from server.services.order_service import order_to_proto

pb = checkout_service_pb2


class CheckoutServicer(checkout_service_pb2_grpc.CheckoutServiceServicer):
    """Implements storefront.v1.CheckoutService."""

    def __init__(self, config: checkout.Checkout) -> None:
        self.config = config

    def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.ServicerContext
    ) -> pb.PlaceOrderResponse:
        address = request.shipping_address
        placed = checkout.place_order(
            self.config,
            call_context.principal(),
            checkout.PlaceOrder(
                request_id=request.request_id,
                address=checkout.Address(
                    recipient_name=address.recipient_name,
                    line1=address.line1,
                    line2=address.line2,
                    city=address.city,
                    region=address.region,
                    postal_code=address.postal_code,
                    country_code=address.country_code,
                ),
                currency_code=request.currency_code,
                payment_method_token=request.payment_method_token,
            ),
        )
        return pb.PlaceOrderResponse(order=order_to_proto(placed))
