"""OrderService servicer: unpacks requests, calls the orders domain, packs responses."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf.message import Message
from storefront.v1 import common_pb2, order_service_pb2, order_service_pb2_grpc

from server import call_context
from server.domain import idempotency, orders, payment_jobs
from server.domain.money import Money
from server.domain.orders import OrderDetails, RefundStatus, State
from server.errors import Validator
from server.models.order import OrderEvent
from server.payments import PaymentGateway
from server.services.converters import money_to_proto, request_fingerprint, timestamp

pb = order_service_pb2

STATE_TO_PROTO = {state: pb.OrderState.Value(f"ORDER_STATE_{state.value}") for state in State}
REFUND_STATUS_TO_PROTO = {
    status: pb.RefundStatus.Value(f"REFUND_STATUS_{status.value}") for status in RefundStatus
}


def order_to_proto(found: OrderDetails) -> order_service_pb2.Order:
    """Converts an order with its lines and refunds to its message."""
    order = found.order

    def money(amount_minor: int) -> common_pb2.Money:
        return money_to_proto(Money(order.currency, int(amount_minor)))

    return pb.Order(
        id=order.id,
        customer_id=order.customer_id,
        state=STATE_TO_PROTO[State(order.state)],
        lines=[
            pb.OrderLine(
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
            )
            for line in found.lines
        ],
        subtotal=money(order.subtotal_minor),
        shipping=money(order.shipping_minor),
        tax=money(order.tax_minor),
        total=money(order.total_minor),
        captured=money(order.captured_minor),
        refunded=money(order.refunded_minor),
        tax_rate=order.tax_rate,
        shipping_quote_id=order.shipping_quote_id,
        shipping_service_level=order.shipping_service_level,
        shipping_address=pb.Address(
            recipient_name=order.ship_name,
            line1=order.ship_line1,
            line2=order.ship_line2,
            city=order.ship_city,
            region=order.ship_region,
            postal_code=order.ship_postal_code,
            country_code=order.ship_country,
        ),
        carrier=order.carrier,
        tracking_number=order.tracking_number,
        payment_failure_code=order.payment_failure_code,
        refunds=[
            pb.OrderRefund(
                id=refund.id,
                amount=money(refund.amount_minor),
                status=REFUND_STATUS_TO_PROTO[RefundStatus(refund.status)],
                reason=refund.reason,
                create_time=timestamp(refund.create_time),
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


def event_to_proto(event: OrderEvent) -> order_service_pb2.OrderEvent:
    """Converts a history entry to its message."""
    return pb.OrderEvent(
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

    def __init__(self, page_token_secret: bytes, gateway: PaymentGateway) -> None:
        self.page_token_secret = page_token_secret
        self.gateway = gateway

    def _current(self, order_id: str) -> order_service_pb2.Order:
        return order_to_proto(orders.get(call_context.principal(), order_id))

    def _once(
        self,
        request: Message,
        request_id: str,
        method: str,
        validate: Callable[[Validator], None],
        execute: Callable[[], str],
    ) -> str:
        """Runs a mutation once per request_id; returns what `execute` returned (or stored)."""
        stored = idempotency.run_once(
            principal=call_context.principal().subject,
            key=request_id,
            operation=f"/storefront.v1.OrderService/{method}",
            request_fingerprint=request_fingerprint(request),
            execute=lambda: execute().encode(),
            validate=validate,
        )
        return stored.decode()

    def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.ServicerContext
    ) -> pb.GetOrderResponse:
        return pb.GetOrderResponse(order=self._current(request.order_id))

    def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.ServicerContext
    ) -> pb.ListOrdersResponse:
        page = orders.list_(
            call_context.principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            filter_text=request.filter,
            order_by=request.order_by,
            secret=self.page_token_secret,
        )
        return pb.ListOrdersResponse(
            orders=[order_to_proto(found) for found in page.items],
            next_page_token=page.next_page_token,
        )

    def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.ServicerContext
    ) -> pb.CancelOrderResponse:
        actor = call_context.principal()
        self._once(
            request,
            request.request_id,
            "CancelOrder",
            lambda v: orders.check_order_action(
                v, order_id=request.order_id, reason=request.reason
            ),
            lambda: orders.cancel(actor, order_id=request.order_id, reason=request.reason) or "",
        )
        # The refund is committed; the provider is asked now, and again later if it does not say.
        payment_jobs.deliver_refunds(self.gateway, order_id=request.order_id)
        return pb.CancelOrderResponse(order=self._current(request.order_id))

    def ShipOrder(
        self, request: pb.ShipOrderRequest, context: grpc.ServicerContext
    ) -> pb.ShipOrderResponse:
        actor = call_context.principal()

        def execute() -> str:
            orders.ship(
                actor,
                order_id=request.order_id,
                carrier=request.carrier,
                tracking_number=request.tracking_number,
            )
            return request.order_id

        self._once(
            request,
            request.request_id,
            "ShipOrder",
            lambda v: orders.check_ship(
                v,
                order_id=request.order_id,
                carrier=request.carrier,
                tracking_number=request.tracking_number,
            ),
            execute,
        )
        return pb.ShipOrderResponse(order=self._current(request.order_id))

    def MarkOrderDelivered(
        self, request: pb.MarkOrderDeliveredRequest, context: grpc.ServicerContext
    ) -> pb.MarkOrderDeliveredResponse:
        actor = call_context.principal()

        def execute() -> str:
            orders.deliver(actor, order_id=request.order_id)
            return request.order_id

        self._once(
            request,
            request.request_id,
            "MarkOrderDelivered",
            lambda v: orders.check_order_action(v, order_id=request.order_id),
            execute,
        )
        return pb.MarkOrderDeliveredResponse(order=self._current(request.order_id))

    def RefundOrder(
        self, request: pb.RefundOrderRequest, context: grpc.ServicerContext
    ) -> pb.RefundOrderResponse:
        actor = call_context.principal()
        amount = (
            (request.amount.currency_code.strip().upper(), request.amount.amount_minor)
            if request.HasField("amount")
            else None
        )

        def validate(v: Validator) -> None:
            orders.check_refund(v, order_id=request.order_id, amount=amount, reason=request.reason)

        refund_id = self._once(
            request,
            request.request_id,
            "RefundOrder",
            validate,
            lambda: orders.refund(
                actor,
                order_id=request.order_id,
                amount_minor=None if amount is None else amount[1],
                currency="" if amount is None else amount[0],
                reason=request.reason,
            ),
        )
        payment_jobs.deliver_refunds(self.gateway, order_id=request.order_id)
        return pb.RefundOrderResponse(order=self._current(request.order_id), refund_id=refund_id)

    def ListOrderEvents(
        self, request: pb.ListOrderEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListOrderEventsResponse:
        page = orders.list_events(
            call_context.principal(),
            order_id=request.order_id,
            page_size=request.page_size,
            page_token=request.page_token,
            secret=self.page_token_secret,
        )
        return pb.ListOrderEventsResponse(
            events=[event_to_proto(event) for event in page.items],
            next_page_token=page.next_page_token,
        )
