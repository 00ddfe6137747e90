"""ShippingService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import shipping_service_pb2, shipping_service_pb2_grpc

from server.domain import shipping
from server.domain.shipping import Quote, Rules
from server.services.converters import money_from_proto, money_to_proto

pb = shipping_service_pb2


def quote_to_proto(quote: Quote) -> shipping_service_pb2.ShippingQuote:
    """Converts a domain quote to its message."""
    return pb.ShippingQuote(
        quote_id=quote.quote_id,
        zone_id=quote.zone_id,
        rules_version=quote.rules_version,
        service_level=quote.service_level,
        cost=money_to_proto(quote.cost),
        free_shipping=quote.free_shipping,
        free_shipping_threshold=(
            money_to_proto(quote.free_shipping_threshold)
            if quote.free_shipping_threshold is not None
            else None
        ),
        min_delivery_days=quote.min_delivery_days,
        max_delivery_days=quote.max_delivery_days,
    )


class ShippingServicer(shipping_service_pb2_grpc.ShippingServiceServicer):
    """Implements storefront.v1.ShippingService with the rules loaded at start-up."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    def GetShippingQuote(
        self, request: pb.GetShippingQuoteRequest, context: grpc.ServicerContext
    ) -> pb.GetShippingQuoteResponse:
        quote = shipping.quote(
            self.rules,
            destination_country=request.destination_country_code,
            total_weight_grams=request.total_weight_grams,
            subtotal=money_from_proto(request.subtotal),
        )
        return pb.GetShippingQuoteResponse(quote=quote_to_proto(quote))
