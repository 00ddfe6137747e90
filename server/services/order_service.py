"""OrderService servicer: unpacks requests, calls the orders domain, packs responses."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from storefront.v1 import common_pb2, order_pb2, order_service_pb2, order_service_pb2_grpc

from server import call_context
from server.domain import order_actions, order_watch, orders
from server.domain.money import Money
from server.domain.orders import OrderDetails, RefundStatus, State
from server.domain.page_tokens import PageTokenSigner
from server.models.order import OrderEvent
from server.services.converters import (
    address_to_proto,
    money_to_proto,
    page_request,
    request_key,
    timestamp,
)

pb = order_service_pb2

STATE_TO_PROTO = {
    state: order_pb2.OrderState.Value(f"ORDER_STATE_{state.value}") for state in State
}
# Unknown numbers (and UNSPECIFIED) pass through as text the domain refuses.
STATE_FROM_PROTO = {number: state.value for state, number in STATE_TO_PROTO.items()}
REFUND_STATUS_TO_PROTO = {
    status: order_pb2.RefundStatus.Value(f"REFUND_STATUS_{status.value}") for status in RefundStatus
}


def order_to_proto(found: OrderDetails) -> order_pb2.Order:
    """Converts an order with its lines and refunds to its message."""
    order = found.order

    def money(amount_minor: int) -> common_pb2.Money:
        return money_to_proto(Money(order.currency, int(amount_minor)))

    return order_pb2.Order(
        id=order.id,
        customer_id=order.customer_id,
        state=STATE_TO_PROTO[State(order.state)],
        lines=[
            order_pb2.OrderLine(
                id=line.id,
                product_id=line.product_id,
                sku=line.sku,
                name=line.name,
                quantity=line.quantity,
                unit_price=money(line.unit_price_minor),
                line_total=money(line.line_total_minor),
                catalog_unit_price=money_to_proto(
                    Money(line.catalog_currency, int(line.catalog_unit_price_minor))
                ),
                discount=money(line.discount_minor),
            )
            for line in found.lines
        ],
        subtotal=money(order.subtotal_minor),
        shipping=money(order.shipping_minor),
        tax=money(order.tax_minor),
        total=money(order.total_minor),
        captured=money(order.captured_minor),
        refunded=money(order.refunded_minor),
        discount=money(order.discount_minor),
        discount_code=order.discount_code,
        tax_rate=order.tax_rate,
        shipping_quote_id=order.shipping_quote_id,
        shipping_service_level=order.shipping_service_level,
        shipping_address=address_to_proto(orders.shipping_address(order)),
        carrier=order.carrier,
        tracking_number=order.tracking_number,
        payment_failure_code=order.payment_failure_code,
        refunds=[
            order_pb2.OrderRefund(
                id=refund.id,
                amount=money(refund.amount_minor),
                status=REFUND_STATUS_TO_PROTO[RefundStatus(refund.status)],
                reason=refund.reason,
                create_time=timestamp(refund.create_time),
                lines=[
                    order_pb2.RefundLine(line_id=line_id, quantity=quantity)
                    for line_id, quantity in orders.refunded_lines(refund)
                ],
            )
            for refund in found.refunds
        ],
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
        paid_time=timestamp(order.paid_time),
        ship_time=timestamp(order.ship_time),
        deliver_time=timestamp(order.deliver_time),
        cancel_time=timestamp(order.cancel_time),
    )


def event_to_proto(event: OrderEvent) -> order_pb2.OrderEvent:
    """Converts a history entry to its message."""
    return order_pb2.OrderEvent(
        id=str(event.id),
        type=event.type,
        from_state=STATE_TO_PROTO[State(event.from_state)],
        to_state=STATE_TO_PROTO[State(event.to_state)],
        actor=event.actor,
        note=event.note,
        create_time=timestamp(event.create_time),
    )


class OrderServicer(order_service_pb2_grpc.OrderServiceServicer):
    """Implements storefront.v1.OrderService."""

    def __init__(self, pages: PageTokenSigner, streams: order_watch.OrderStreams) -> None:
        self.pages = pages
        self.streams = streams

    def WatchOrder(
        self, request: pb.WatchOrderRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchOrderResponse]:
        for update in self.streams.watch(
            call_context.principal(),
            request.order_id,
            request.after_sequence,
            active=context.is_active,
            on_end=context.add_callback,
        ):
            yield pb.WatchOrderResponse(
                order_id=update.order_id,
                sequence=update.sequence,
                event_type=update.event_type,
                state=STATE_TO_PROTO[State(update.state)],
                event_time=timestamp(update.time),
                order=order_to_proto(update.details) if update.details else None,
            )

    def WatchOrders(
        self, request: pb.WatchOrdersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchOrdersResponse]:
        states = [STATE_FROM_PROTO.get(number, f"#{number}") for number in request.states]
        for shop_update in self.streams.watch_all(
            states,
            request.after_position,
            active=context.is_active,
            on_end=context.add_callback,
        ):
            update = shop_update.update
            yield pb.WatchOrdersResponse(
                position=shop_update.position,
                update=None
                if update is None
                else pb.OrderUpdate(
                    order_id=update.order_id,
                    sequence=update.sequence,
                    event_type=update.event_type,
                    state=STATE_TO_PROTO[State(update.state)],
                    event_time=timestamp(update.time),
                ),
            )

    def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.ServicerContext
    ) -> pb.GetOrderResponse:
        return pb.GetOrderResponse(
            order=order_to_proto(orders.get(call_context.principal(), request.order_id))
        )

    def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.ServicerContext
    ) -> pb.ListOrdersResponse:
        page = orders.list_(call_context.principal(), page_request(request, self.pages))
        return pb.ListOrdersResponse(
            orders=[order_to_proto(found) for found in page.items],
            next_page_token=page.next_page_token,
        )

    def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.ServicerContext
    ) -> pb.CancelOrderResponse:
        cancelled = order_actions.cancel_order(
            call_context.principal(),
            order_actions.CancelOrder(request_key(request), request.order_id, request.reason),
        )
        return pb.CancelOrderResponse(order=order_to_proto(cancelled))

    def ShipOrder(
        self, request: pb.ShipOrderRequest, context: grpc.ServicerContext
    ) -> pb.ShipOrderResponse:
        shipped = order_actions.ship_order(
            call_context.principal(),
            order_actions.ShipOrder(
                request_key(request),
                request.order_id,
                carrier=request.carrier,
                tracking_number=request.tracking_number,
            ),
        )
        return pb.ShipOrderResponse(order=order_to_proto(shipped))

    def MarkOrderDelivered(
        self, request: pb.MarkOrderDeliveredRequest, context: grpc.ServicerContext
    ) -> pb.MarkOrderDeliveredResponse:
        delivered = order_actions.mark_order_delivered(
            call_context.principal(),
            order_actions.MarkOrderDelivered(request_key(request), request.order_id),
        )
        return pb.MarkOrderDeliveredResponse(order=order_to_proto(delivered))

    def RefundOrder(
        self, request: pb.RefundOrderRequest, context: grpc.ServicerContext
    ) -> pb.RefundOrderResponse:
        amount = (
            (request.amount.currency_code, request.amount.amount_minor)
            if request.HasField("amount")
            else None
        )
        refunded, refund_id = order_actions.refund_order(
            call_context.principal(),
            order_actions.RefundOrder(
                request_key(request),
                request.order_id,
                amount,
                request.reason,
                tuple((line.line_id, line.quantity) for line in request.lines),
            ),
        )
        return pb.RefundOrderResponse(order=order_to_proto(refunded), refund_id=refund_id)

    def ListOrderEvents(
        self, request: pb.ListOrderEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListOrderEventsResponse:
        page = orders.list_events(
            call_context.principal(),
            page_request(request, self.pages),
            order_id=request.order_id,
        )
        return pb.ListOrderEventsResponse(
            events=[event_to_proto(event) for event in page.items],
            next_page_token=page.next_page_token,
        )
