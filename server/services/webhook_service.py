"""WebhookService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import webhook_service_pb2, webhook_service_pb2_grpc

from server.domain import webhooks
from server.domain.page_tokens import PageTokenSigner
from server.models.webhook import WebhookDelivery, WebhookEndpoint
from server.services.converters import page_request, timestamp

pb = webhook_service_pb2

STATE_TO_PROTO = {
    webhooks.PENDING: pb.WEBHOOK_DELIVERY_STATE_PENDING,
    webhooks.SUCCEEDED: pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED,
    webhooks.PARKED: pb.WEBHOOK_DELIVERY_STATE_PARKED,
}


def endpoint_to_proto(endpoint: WebhookEndpoint) -> webhook_service_pb2.WebhookEndpoint:
    """Converts an endpoint row to its message; the secret never leaves this way."""
    return pb.WebhookEndpoint(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=webhooks.event_types_of(endpoint),
        disabled=endpoint.disabled_time is not None,
        disabled_reason=endpoint.disabled_reason or "",
        previous_secret_expire_time=timestamp(endpoint.previous_secret_expire_time),
        create_time=timestamp(endpoint.create_time),
        update_time=timestamp(endpoint.update_time),
    )


def delivery_to_proto(delivery: WebhookDelivery) -> webhook_service_pb2.WebhookDelivery:
    """Converts a delivery row to its message."""
    return pb.WebhookDelivery(
        id=delivery.id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        aggregate_type=delivery.aggregate_type,
        aggregate_id=delivery.aggregate_id,
        sequence=delivery.sequence,
        state=STATE_TO_PROTO[delivery.state],
        attempts=delivery.attempts,
        last_response_code=delivery.last_response_code or 0,
        last_error=delivery.last_error or "",
        next_attempt_time=(
            timestamp(delivery.next_attempt_time) if delivery.state == webhooks.PENDING else None
        ),
        last_attempt_time=timestamp(delivery.last_attempt_time),
        delivered_time=timestamp(delivery.delivered_time),
        create_time=timestamp(delivery.create_time),
    )


def fields_from_proto(endpoint: webhook_service_pb2.WebhookEndpoint) -> webhooks.EndpointFields:
    """Returns the settable fields of an endpoint message."""
    return webhooks.EndpointFields(
        url=endpoint.url, description=endpoint.description, event_types=tuple(endpoint.event_types)
    )


class WebhookServicer(webhook_service_pb2_grpc.WebhookServiceServicer):
    """Implements storefront.v1.WebhookService."""

    def __init__(self, pages: PageTokenSigner, registration: webhooks.Registration) -> None:
        self.pages = pages
        self.registration = registration

    def CreateWebhookEndpoint(
        self, request: pb.CreateWebhookEndpointRequest, context: grpc.ServicerContext
    ) -> pb.CreateWebhookEndpointResponse:
        endpoint, secret = webhooks.create_endpoint(
            fields_from_proto(request.endpoint), self.registration
        )
        return pb.CreateWebhookEndpointResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

    def GetWebhookEndpoint(
        self, request: pb.GetWebhookEndpointRequest, context: grpc.ServicerContext
    ) -> pb.GetWebhookEndpointResponse:
        endpoint = webhooks.get_endpoint(request.endpoint_id)
        return pb.GetWebhookEndpointResponse(endpoint=endpoint_to_proto(endpoint))

    def ListWebhookEndpoints(
        self, request: pb.ListWebhookEndpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListWebhookEndpointsResponse:
        endpoints = webhooks.list_endpoints()
        return pb.ListWebhookEndpointsResponse(endpoints=[endpoint_to_proto(e) for e in endpoints])

    def UpdateWebhookEndpoint(
        self, request: pb.UpdateWebhookEndpointRequest, context: grpc.ServicerContext
    ) -> pb.UpdateWebhookEndpointResponse:
        endpoint = webhooks.update_endpoint(
            request.endpoint.id,
            fields_from_proto(request.endpoint),
            list(request.update_mask.paths),
            disabled=request.endpoint.disabled,
            registration=self.registration,
        )
        return pb.UpdateWebhookEndpointResponse(endpoint=endpoint_to_proto(endpoint))

    def DeleteWebhookEndpoint(
        self, request: pb.DeleteWebhookEndpointRequest, context: grpc.ServicerContext
    ) -> pb.DeleteWebhookEndpointResponse:
        webhooks.delete_endpoint(request.endpoint_id)
        return pb.DeleteWebhookEndpointResponse()

    def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.ServicerContext
    ) -> pb.RotateWebhookSecretResponse:
        endpoint, secret = webhooks.rotate_secret(request.endpoint_id)
        return pb.RotateWebhookSecretResponse(endpoint=endpoint_to_proto(endpoint), secret=secret)

    def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        page = webhooks.list_deliveries(
            page_request(request, self.pages), endpoint_id=request.endpoint_id
        )
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page.items],
            next_page_token=page.next_page_token,
        )

    def RedeliverWebhookEvent(
        self, request: pb.RedeliverWebhookEventRequest, context: grpc.ServicerContext
    ) -> pb.RedeliverWebhookEventResponse:
        delivery = webhooks.redeliver(request.endpoint_id, request.event_id)
        return pb.RedeliverWebhookEventResponse(delivery=delivery_to_proto(delivery))

    def SendTestWebhookEvent(
        self, request: pb.SendTestWebhookEventRequest, context: grpc.ServicerContext
    ) -> pb.SendTestWebhookEventResponse:
        event = webhooks.send_test_event(request.endpoint_id)
        return pb.SendTestWebhookEventResponse(event_id=event.id)
