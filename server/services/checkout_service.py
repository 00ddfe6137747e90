"""CheckoutService servicer: unpacks the request, places the order, packs the response."""

from __future__ import annotations

import grpc
from storefront.v1 import checkout_service_pb2, checkout_service_pb2_grpc

from server import call_context
from server.domain import checkout
from server.services.converters import address_from_proto
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
            ),
        )
        return pb.PlaceOrderResponse(order=order_to_proto(placed))
