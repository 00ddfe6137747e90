"""CartService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import cart_service_pb2, cart_service_pb2_grpc

from server import call_context
from server.domain import carts
from server.domain.money import Money
from server.services.converters import (
    money_to_proto,
    product_state_to_proto,
    request_key,
    timestamp,
)

pb = cart_service_pb2


def line_to_proto(line: carts.LineView) -> cart_service_pb2.CartLine:
    """Converts a line view to its message."""
    return pb.CartLine(
        id=line.id,
        product_id=line.product_id,
        sku=line.sku,
        name=line.name,
        unit_price=money_to_proto(Money(line.currency_code, line.unit_price_minor)),
        quantity=line.quantity,
        line_total=money_to_proto(Money(line.currency_code, line.line_total_minor)),
        available=line.available,
        in_stock=line.in_stock,
        product_state=product_state_to_proto(line.product_state),
        create_time=timestamp(line.create_time),
        update_time=timestamp(line.update_time),
    )


def cart_to_proto(cart: carts.CartView) -> cart_service_pb2.Cart:
    """Converts a cart view to its message."""
    return pb.Cart(
        lines=[line_to_proto(line) for line in cart.lines],
        subtotals=[money_to_proto(Money(code, amount)) for code, amount in cart.subtotals],
        total_quantity=cart.total_quantity,
        update_time=timestamp(cart.update_time),
    )


def _owner() -> str:
    return call_context.principal().subject


class CartServicer(cart_service_pb2_grpc.CartServiceServicer):
    """Implements storefront.v1.CartService; every call acts on the caller's own cart."""

    def GetCart(
        self, request: pb.GetCartRequest, context: grpc.ServicerContext
    ) -> pb.GetCartResponse:
        return pb.GetCartResponse(cart=cart_to_proto(carts.get(_owner())))

    def AddCartItem(
        self, request: pb.AddCartItemRequest, context: grpc.ServicerContext
    ) -> pb.AddCartItemResponse:
        cart, line_id = carts.add_item(
            _owner(),
            carts.AddItem(
                request_key(request) if request.request_id else None,
                request.product_id,
                request.quantity,
            ),
        )
        return pb.AddCartItemResponse(cart=cart_to_proto(cart), line_id=line_id)

    def UpdateCartItem(
        self, request: pb.UpdateCartItemRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCartItemResponse:
        cart = carts.update(_owner(), line_id=request.line_id, quantity=request.quantity)
        return pb.UpdateCartItemResponse(cart=cart_to_proto(cart))

    def RemoveCartItem(
        self, request: pb.RemoveCartItemRequest, context: grpc.ServicerContext
    ) -> pb.RemoveCartItemResponse:
        return pb.RemoveCartItemResponse(
            cart=cart_to_proto(carts.remove(_owner(), line_id=request.line_id))
        )

    def EmptyCart(
        self, request: pb.EmptyCartRequest, context: grpc.ServicerContext
    ) -> pb.EmptyCartResponse:
        return pb.EmptyCartResponse(cart=cart_to_proto(carts.empty(_owner())))
