"""WebhookService and its dispatcher: real servers and a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from standardwebhooks.webhooks import Webhook
from storefront.v1 import (
    order_pb2,
    order_service_pb2,
)
from storefront.v1 import webhook_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from tests.e2e.conftest import Running, place_paid_order, rpc_error, violated_fields, wait_for
from tests.fakes.webhook_receiver import Received, WebhookReceiver

StatusCode = grpc.StatusCode
# Loopback receivers over plain http, a fast dispatcher and a short retry schedule.
WEBHOOK_SETTINGS = {
    "webhook_allow_http": True,
    "webhook_allow_private_addresses": True,
    "dispatch_interval_seconds": 0.05,
    "delivery_retry_schedule": (0.05, 0.05, 0.05),
    "webhook_timeout_seconds": 2.0,
}


@pytest.fixture
def hooks(server_factory: Callable[..., Running]) -> Running:
    return server_factory(**WEBHOOK_SETTINGS)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


def create_endpoint(
    admin: StorefrontClient, url: str, *types: str
) -> pb.CreateWebhookEndpointResponse:
    return admin.webhooks.CreateWebhookEndpoint(
        pb.CreateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(url=url, description="orders", event_types=list(types))
        )
    )


def place_order(running: Running) -> order_pb2.Order:
    """A customer buys one unit of a new product: PLACED then PAYMENT_CAPTURED."""
    return place_paid_order(running).order


def verified(secret: str, request: Received) -> dict[str, object]:
    """The body of a request whose Standard Webhooks signature verifies under `secret`."""
    payload: dict[str, object] = Webhook(secret).verify(request.body, request.headers)
    return payload


def deliveries(admin: StorefrontClient, endpoint_id: str) -> list[pb.WebhookDelivery]:
    return list(
        admin.webhooks.ListWebhookDeliveries(
            pb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id)
        ).deliveries
    )


def test_order_events_arrive_signed_and_in_sequence(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    created = create_endpoint(admin, receiver.url)
    assert created.secret.startswith("whsec_")
    order = place_order(hooks)

    assert wait_for(lambda: len(receiver.received()) >= 2)
    requests = receiver.received()
    bodies = [verified(created.secret, request) for request in requests]
    assert [b["type"] for b in bodies] == ["order.placed", "order.payment_captured"]
    data = [b["data"] for b in bodies]
    assert all(isinstance(d, dict) for d in data)
    assert [d["sequence"] for d in data] == [1, 2]  # type: ignore[index]
    assert {d["order_id"] for d in data} == {order.id}  # type: ignore[index]
    assert data[1]["to_state"] == "PAID"  # type: ignore[index]
    # webhook-id is the event id, the same one the delivery lists.
    listed = deliveries(admin, created.endpoint.id)
    assert {d.event_id for d in listed} == {r.headers["webhook-id"] for r in requests}
    assert {d.state for d in listed} == {pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED}
    assert all(d.last_response_code == 200 and d.attempts == 1 for d in listed)
    # A wrong secret does not verify.
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(requests[0].body, requests[0].headers)


def test_an_endpoint_receives_only_the_types_it_asked_for_and_events_after_it(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    place_order(hooks)  # before the endpoint: not for it
    created = create_endpoint(admin, receiver.url, "order.payment_captured")
    order = place_order(hooks)
    assert wait_for(lambda: len(receiver.received()) >= 1)
    time.sleep(0.3)  # anything else would have arrived by now
    (only,) = receiver.received()
    body = verified(created.secret, only)
    assert body["type"] == "order.payment_captured"
    assert body["data"]["order_id"] == order.id  # type: ignore[index]


def test_a_failing_endpoint_is_retried_then_parked_then_redelivered(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    receiver.status = 503
    created = create_endpoint(admin, receiver.url)
    event_id = admin.webhooks.SendTestWebhookEvent(
        pb.SendTestWebhookEventRequest(endpoint_id=created.endpoint.id)
    ).event_id

    def parked() -> bool:
        return [d.state for d in deliveries(admin, created.endpoint.id)] == [
            pb.WEBHOOK_DELIVERY_STATE_PARKED
        ]

    assert wait_for(parked)
    (delivery,) = deliveries(admin, created.endpoint.id)
    # The first attempt and one per pause of the schedule.
    assert delivery.attempts == 1 + len(WEBHOOK_SETTINGS["delivery_retry_schedule"])  # type: ignore[arg-type]
    assert (delivery.last_response_code, delivery.last_error) == (503, "HTTP 503")
    assert len(receiver.received()) == delivery.attempts
    assert {r.headers["webhook-id"] for r in receiver.received()} == {event_id}

    receiver.status = 204
    redelivered = admin.webhooks.RedeliverWebhookEvent(
        pb.RedeliverWebhookEventRequest(endpoint_id=created.endpoint.id, event_id=event_id)
    ).delivery
    assert redelivered.state == pb.WEBHOOK_DELIVERY_STATE_PENDING
    assert wait_for(
        lambda: (
            deliveries(admin, created.endpoint.id)[0].state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
        )
    )
    parked_only = admin.webhooks.ListWebhookDeliveries(
        pb.ListWebhookDeliveriesRequest(
            endpoint_id=created.endpoint.id, filter="state = WEBHOOK_DELIVERY_STATE_PARKED"
        )
    )
    assert not parked_only.deliveries


def test_a_410_disables_the_endpoint_until_it_is_enabled_again(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    receiver.status = 410
    created = create_endpoint(admin, receiver.url)
    endpoint_id = created.endpoint.id
    admin.webhooks.SendTestWebhookEvent(pb.SendTestWebhookEventRequest(endpoint_id=endpoint_id))

    def endpoint() -> pb.WebhookEndpoint:
        return admin.webhooks.GetWebhookEndpoint(
            pb.GetWebhookEndpointRequest(endpoint_id=endpoint_id)
        ).endpoint

    assert wait_for(lambda: endpoint().disabled)
    assert "410" in endpoint().disabled_reason
    receiver.status = 200
    held = admin.webhooks.SendTestWebhookEvent(
        pb.SendTestWebhookEventRequest(endpoint_id=endpoint_id)
    ).event_id
    time.sleep(0.3)
    assert held not in {r.headers["webhook-id"] for r in receiver.received()}

    admin.webhooks.UpdateWebhookEndpoint(
        pb.UpdateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(id=endpoint_id, disabled=False),
            update_mask=FieldMask(paths=["disabled"]),
        )
    )
    assert not endpoint().disabled and endpoint().disabled_reason == ""
    assert wait_for(lambda: held in {r.headers["webhook-id"] for r in receiver.received()})


def test_a_rotated_secret_and_the_previous_one_both_sign_during_the_overlap(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    created = create_endpoint(admin, receiver.url)
    rotated = admin.webhooks.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(endpoint_id=created.endpoint.id)
    )
    assert rotated.secret != created.secret
    assert rotated.endpoint.HasField("previous_secret_expire_time")
    admin.webhooks.SendTestWebhookEvent(
        pb.SendTestWebhookEventRequest(endpoint_id=created.endpoint.id)
    )
    assert wait_for(lambda: len(receiver.received()) == 1)
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(rotated.secret, request)["type"] == "webhook.test"
    assert verified(created.secret, request)["type"] == "webhook.test"


def test_endpoints_are_listed_updated_and_deleted_without_their_secret(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    first = create_endpoint(admin, receiver.url, "order.shipped").endpoint
    second = create_endpoint(admin, receiver.url + "/other").endpoint
    listed = admin.webhooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest()).endpoints
    assert [e.id for e in listed] == [first.id, second.id]
    assert "whsec_" not in str(listed)
    updated = admin.webhooks.UpdateWebhookEndpoint(
        pb.UpdateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(
                id=first.id,
                description="shipping",
                event_types=["order.delivered", "order.shipped"],
            ),
            update_mask=FieldMask(paths=["description", "event_types"]),
        )
    ).endpoint
    assert (updated.description, list(updated.event_types)) == (
        "shipping",
        ["order.delivered", "order.shipped"],
    )
    assert updated.url == first.url
    admin.webhooks.DeleteWebhookEndpoint(pb.DeleteWebhookEndpointRequest(endpoint_id=first.id))
    err = rpc_error(
        lambda: admin.webhooks.GetWebhookEndpoint(
            pb.GetWebhookEndpointRequest(endpoint_id=first.id)
        )
    )
    assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "ENDPOINT_NOT_FOUND")


@pytest.mark.parametrize(
    ("endpoint", "mask", "violations"),
    [
        (
            pb.WebhookEndpoint(url="http://127.0.0.1/x", event_types=["order.nope"]),
            None,
            {"event_types[0]"},
        ),
        (
            pb.WebhookEndpoint(url="http://127.0.0.1/x", event_types=["order.shipped"] * 2),
            None,
            {"event_types"},
        ),
        (
            pb.WebhookEndpoint(url="http://127.0.0.1/x", description="d" * 201),
            None,
            {"description"},
        ),
        (pb.WebhookEndpoint(url=""), None, {"url"}),
        (pb.WebhookEndpoint(url="http://127.0.0.1/x"), ["secret"], {"update_mask"}),
        (pb.WebhookEndpoint(url="http://127.0.0.1/x"), [], {"update_mask"}),
    ],
    ids=["unknown-type", "repeated-type", "long-description", "no-url", "bad-mask", "empty-mask"],
)
def test_invalid_endpoints_are_refused(
    hooks: Running,
    receiver: WebhookReceiver,
    endpoint: pb.WebhookEndpoint,
    mask: list[str] | None,
    violations: set[str],
) -> None:
    admin = hooks.login(Role.ADMIN)
    if mask is None:
        err = rpc_error(
            lambda: admin.webhooks.CreateWebhookEndpoint(
                pb.CreateWebhookEndpointRequest(endpoint=endpoint)
            )
        )
    else:
        existing = create_endpoint(admin, receiver.url).endpoint
        endpoint.id = existing.id
        err = rpc_error(
            lambda: admin.webhooks.UpdateWebhookEndpoint(
                pb.UpdateWebhookEndpointRequest(
                    endpoint=endpoint, update_mask=FieldMask(paths=mask)
                )
            )
        )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == violations
    assert error_info(err)[0] == "FIELD_INVALID"


def test_unknown_endpoints_and_events_are_not_found(hooks: Running) -> None:
    admin = hooks.login(Role.ADMIN)
    missing = str(uuid.uuid4())
    for call in (
        lambda: admin.webhooks.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(endpoint_id=missing)
        ),
        lambda: admin.webhooks.DeleteWebhookEndpoint(
            pb.DeleteWebhookEndpointRequest(endpoint_id=missing)
        ),
        lambda: admin.webhooks.SendTestWebhookEvent(
            pb.SendTestWebhookEventRequest(endpoint_id=missing)
        ),
        lambda: admin.webhooks.ListWebhookDeliveries(
            pb.ListWebhookDeliveriesRequest(endpoint_id=missing)
        ),
    ):
        err = rpc_error(call)
        assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "ENDPOINT_NOT_FOUND")


# --- SSRF ---------------------------------------------------------------------------------------

FORBIDDEN_URLS = [
    "http://127.0.0.1:{port}/",
    "http://[::1]:{port}/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:{port}/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://localhost:{port}/",  # a name that resolves to a loopback address
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_x",
    "http://user@127.0.0.1:{port}/",
    "http://example.com@127.0.0.1:{port}/",
    "http://224.0.0.1/",
]


def test_forbidden_urls_are_refused_at_registration_without_a_connection(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(webhook_allow_http=True)  # private addresses stay forbidden
    admin = running.login(Role.ADMIN)
    with WebhookReceiver() as listener:
        for url in FORBIDDEN_URLS:
            err = rpc_error(lambda url=url: create_endpoint(admin, url.format(port=listener.port)))
            assert err.code() == StatusCode.INVALID_ARGUMENT, url
            assert violated_fields(err) == {"url"}, url
        assert listener.connections == 0


def test_https_is_required_unless_plain_http_is_allowed(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    err = rpc_error(lambda: create_endpoint(admin, "http://example.com/hooks"))
    assert violated_fields(err) == {"url"}
    assert "https" in err.details()


def test_a_redirect_is_not_followed(hooks: Running, receiver: WebhookReceiver) -> None:
    admin = hooks.login(Role.ADMIN)
    with WebhookReceiver() as elsewhere:
        receiver.status = 302
        receiver.location = elsewhere.url
        created = create_endpoint(admin, receiver.url)
        admin.webhooks.SendTestWebhookEvent(
            pb.SendTestWebhookEventRequest(endpoint_id=created.endpoint.id)
        )
        assert wait_for(
            lambda: any(d.last_response_code == 302 for d in deliveries(admin, created.endpoint.id))
        )
        assert elsewhere.connections == 0


def test_only_admins_manage_webhooks(running: Running) -> None:
    for role in (Role.CUSTOMER, Role.STAFF):
        stub = running.login(role).webhooks
        err = rpc_error(
            lambda stub=stub: stub.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest())
        )
        assert err.code() == StatusCode.PERMISSION_DENIED


def test_order_history_and_webhook_bodies_agree(hooks: Running, receiver: WebhookReceiver) -> None:
    admin = hooks.login(Role.ADMIN)
    created = create_endpoint(admin, receiver.url)
    order = place_order(hooks)
    staff = hooks.login(Role.STAFF)
    staff.orders.ShipOrder(
        order_service_pb2.ShipOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), carrier="DHL", tracking_number="1"
        )
    )
    assert wait_for(lambda: len(receiver.received()) >= 3)
    bodies = [json.loads(r.body) for r in receiver.received()]
    assert [b["data"]["to_state"] for b in bodies] == ["PENDING_PAYMENT", "PAID", "SHIPPED"]
    assert [b["data"]["sequence"] for b in bodies] == [1, 2, 3]
    assert created.endpoint.id
    # Each carries the order as of its event.
    snapshots = [b["data"]["order"] for b in bodies]
    assert [o["state"] for o in snapshots] == ["PENDING_PAYMENT", "PAID", "SHIPPED"]
    assert [o["tracking_number"] for o in snapshots] == ["", "", "1"]
    paid = order.total.amount_minor
    assert [o["captured_minor"] for o in snapshots] == [0, paid, paid]
    placed = snapshots[0]
    assert (placed["id"], placed["currency"], placed["total_minor"]) == (
        order.id,
        order.total.currency_code,
        order.total.amount_minor,
    )
    assert [(line["product_id"], line["quantity"]) for line in placed["lines"]] == [
        (line.product_id, line.quantity) for line in order.lines
    ]
    assert placed["shipping_address"]["country_code"] == order.shipping_address.country_code


def test_redelivering_an_unknown_event_is_not_found(
    hooks: Running, receiver: WebhookReceiver
) -> None:
    admin = hooks.login(Role.ADMIN)
    created = create_endpoint(admin, receiver.url)
    err = rpc_error(
        lambda: admin.webhooks.RedeliverWebhookEvent(
            pb.RedeliverWebhookEventRequest(
                endpoint_id=created.endpoint.id, event_id=str(uuid.uuid4())
            )
        )
    )
    assert (err.code(), error_info(err)[0]) == (StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


def test_at_most_100_endpoints_exist(hooks: Running, receiver: WebhookReceiver) -> None:
    admin = hooks.login(Role.ADMIN)
    for n in range(100):
        create_endpoint(admin, f"{receiver.url}/{n}")
    err = rpc_error(lambda: create_endpoint(admin, receiver.url))
    assert (err.code(), error_info(err)[0]) == (
        StatusCode.FAILED_PRECONDITION,
        "TOO_MANY_ENDPOINTS",
    )
    listed = admin.webhooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest()).endpoints
    assert len(listed) == 100
