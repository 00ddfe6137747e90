"""Webhooks: endpoints ADMINs register, and the delivery of outbox events to them.

Delivery is at least once, in per-aggregate sequence order per endpoint, following the Standard
Webhooks specification (`webhook-id` = the event id, `webhook-timestamp`, `webhook-signature`
`v1,` HMAC-SHA256 over `id.timestamp.body`). The dispatcher (domain/dispatch.py):

1. fans events out with `add_deliveries`: a PENDING delivery per endpoint that wants the event
   and existed when it happened (unique per endpoint and event), in the fan-out's transaction;
2. claims due deliveries (work leases: one process sends each at a time) whose endpoint is
   enabled and that have no earlier PENDING delivery of the same aggregate to the same
   endpoint, so an order's events arrive in order;
3. sends each outside any transaction and records the outcome: a 2xx succeeds, a 410 disables
   the endpoint, anything else is retried on the schedule and PARKED after the last attempt
   (visible in ListWebhookDeliveries, re-driven by RedeliverWebhookEvent).

A process killed mid-send leaves its lease to expire; the delivery is then sent again (receivers
deduplicate by `webhook-id`).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import peewee
from standardwebhooks.webhooks import Webhook

from server.db import database, lock_transaction_on, rfc3339, utcnow
from server.domain import list_filter, listing, outbox, work_leases
from server.errors import FailedPrecondition, NotFound
from server.models.outbox_event import OutboxEvent
from server.models.webhook import WebhookDelivery, WebhookEndpoint
from server.validation import Validator
from server.webhooks.metrics import WebhookMetrics
from server.webhooks.sender import AddressPolicy, Refused, Resolver, Sender, check_url
from server.webhooks.sender import checked_address as _checked_address
from server.webhooks.sender import resolve as _resolve

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
PARKED = "PARKED"

TEST_EVENT_TYPE = "webhook.test"
ENDPOINT = "webhook_endpoint"  # the aggregate of test events
# Every event type an endpoint may ask for (the outbox's names; OrderEvent.type lists the order
# ones). An endpoint listing none receives them all.
EVENT_TYPES = frozenset(
    {
        *(
            f"{outbox.ORDER}.{name}"
            for name in (
                "placed",
                "payment_captured",
                "payment_declined",
                "payment_outcome_unknown",
                "payment_not_completed",
                "reservation_expired",
                "late_charge_refunded",
                "cancelled",
                "shipped",
                "delivered",
                "refund_requested",
                "refund_succeeded",
                "refund_failed",
            )
        ),
        *(f"{outbox.PRODUCT}.{name}" for name in ("created", "updated", "archived", "restored")),
    }
)
MAX_ENDPOINTS = 100
DESCRIPTION_MAX_LENGTH = 200
SECRET_OVERLAP = dt.timedelta(hours=24)
# Pauses after each failed attempt, as Standard Webhooks suggests; after the last, PARKED.
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
SEND_BATCH = 50
LEASE_KIND = "webhook"
ERROR_MAX_LENGTH = 500


# --- endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointFields:
    """What an ADMIN sets on an endpoint."""

    url: str
    description: str
    event_types: tuple[str, ...]


@dataclass(frozen=True)
class Registration:
    """The address rules endpoints are checked against, at registration and at each delivery."""

    policy: AddressPolicy
    resolver: Resolver = _resolve


def new_secret() -> str:
    """Returns a Standard Webhooks signing secret: "whsec_" and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def event_types_of(endpoint: WebhookEndpoint) -> list[str]:
    """Returns the event types the endpoint asked for (empty: all)."""
    types: list[str] = json.loads(endpoint.event_types)
    return types


def _check_fields(
    v: Validator, fields: EndpointFields, registration: Registration, names: set[str]
) -> EndpointFields:
    url, description, types = fields.url, fields.description, fields.event_types
    if "url" in names:
        url = v.text("url", fields.url, 2048)
        if url:
            try:
                target = check_url(url, registration.policy)
                _checked_address(target, registration.policy, registration.resolver)
            except Refused as exc:
                v.add("url", str(exc))
    if "description" in names:
        description = v.text(
            "description", fields.description, DESCRIPTION_MAX_LENGTH, required=False
        )
    if "event_types" in names:
        for index, name in enumerate(fields.event_types):
            if name not in EVENT_TYPES:
                v.add(
                    f"event_types[{index}]",
                    "is not an event type (e.g. order.shipped; WebhookEndpoint lists them)",
                )
        if len(set(fields.event_types)) != len(fields.event_types):
            v.add("event_types", "must not list a type twice")
        types = tuple(sorted(fields.event_types))
    return EndpointFields(url, description, types)


def create_endpoint(
    fields: EndpointFields, registration: Registration
) -> tuple[WebhookEndpoint, str]:
    """Registers an endpoint; returns it and its signing secret (shown this once)."""
    v = Validator()
    checked = _check_fields(v, fields, registration, {"url", "description", "event_types"})
    v.raise_if_any()
    now = utcnow()
    secret = new_secret()
    with database.atomic():
        lock_transaction_on("webhook_endpoints")  # concurrent creations count in turn
        if WebhookEndpoint.select().count() >= MAX_ENDPOINTS:
            raise FailedPrecondition(
                f"At most {MAX_ENDPOINTS} webhook endpoints may exist.", reason="TOO_MANY_ENDPOINTS"
            )
        endpoint = WebhookEndpoint.create(
            id=str(uuid.uuid4()),
            url=checked.url,
            description=checked.description,
            event_types=json.dumps(list(checked.event_types)),
            secret=secret,
            create_time=now,
            update_time=now,
        )
    return endpoint, secret


def get_endpoint(endpoint_id: str) -> WebhookEndpoint:
    """Returns the endpoint; raises NotFound."""
    v = Validator()
    v.check_id("endpoint_id", endpoint_id, "webhook endpoint")
    v.raise_if_any()
    endpoint = WebhookEndpoint.get_or_none(WebhookEndpoint.id == endpoint_id)
    if endpoint is None:
        raise NotFound("The webhook endpoint does not exist.", reason="ENDPOINT_NOT_FOUND")
    return endpoint


def list_endpoints() -> list[WebhookEndpoint]:
    """Returns every endpoint (at most MAX_ENDPOINTS), oldest first."""
    return list(WebhookEndpoint.select().order_by(WebhookEndpoint.create_time, WebhookEndpoint.id))


UPDATABLE = frozenset({"url", "description", "event_types", "disabled"})


def update_endpoint(
    endpoint_id: str,
    fields: EndpointFields,
    mask: Sequence[str],
    *,
    disabled: bool,
    registration: Registration,
) -> WebhookEndpoint:
    """Sets the masked fields; `disabled` false re-enables an endpoint (after a 410, say)."""
    v = Validator()
    if not mask:
        v.add("update_mask", f"must name the fields to set: {', '.join(sorted(UPDATABLE))}")
    for name in mask:
        if name not in UPDATABLE:
            v.add(
                "update_mask", f"{name!r} cannot be set (settable: {', '.join(sorted(UPDATABLE))})"
            )
    checked = _check_fields(v, fields, registration, set(mask))
    v.raise_if_any()
    endpoint = get_endpoint(endpoint_id)
    now = utcnow()
    changes: dict[peewee.Field, object] = {WebhookEndpoint.update_time: now}
    if "url" in mask:
        changes[WebhookEndpoint.url] = checked.url
    if "description" in mask:
        changes[WebhookEndpoint.description] = checked.description
    if "event_types" in mask:
        changes[WebhookEndpoint.event_types] = json.dumps(list(checked.event_types))
    if "disabled" in mask:
        changes[WebhookEndpoint.disabled_time] = now if disabled else None
        changes[WebhookEndpoint.disabled_reason] = (
            "disabled by an administrator" if disabled else None
        )
    with database.atomic():
        WebhookEndpoint.update(changes).where(WebhookEndpoint.id == endpoint.id).execute()
    return get_endpoint(endpoint_id)


def delete_endpoint(endpoint_id: str) -> None:
    """Deletes the endpoint and its deliveries."""
    endpoint = get_endpoint(endpoint_id)
    with database.atomic():
        WebhookDelivery.delete().where(WebhookDelivery.endpoint == endpoint.id).execute()
        WebhookEndpoint.delete().where(WebhookEndpoint.id == endpoint.id).execute()


def rotate_secret(
    endpoint_id: str, overlap: dt.timedelta = SECRET_OVERLAP
) -> tuple[WebhookEndpoint, str]:
    """Gives the endpoint a new secret; the old one also signs until `overlap` has passed."""
    endpoint = get_endpoint(endpoint_id)
    now = utcnow()
    secret = new_secret()
    with database.atomic():
        WebhookEndpoint.update(
            secret=secret,
            previous_secret=endpoint.secret,
            previous_secret_expire_time=now + overlap,
            update_time=now,
        ).where(WebhookEndpoint.id == endpoint.id).execute()
    return get_endpoint(endpoint_id), secret


DELIVERY_LIST = listing.ListSpec(
    name="webhook_deliveries",
    model=WebhookDelivery,
    filter_fields={
        "state": list_filter.FilterField(
            WebhookDelivery.state,
            list_filter.FieldKind.ENUM,
            enum_values={f"WEBHOOK_DELIVERY_STATE_{s}": s for s in (PENDING, SUCCEEDED, PARKED)},
        ),
        "event_type": list_filter.FilterField(
            WebhookDelivery.event_type, list_filter.FieldKind.STRING, operators=("=", "!=")
        ),
    },
    order_fields={"create_time": WebhookDelivery.create_time},
    default_order="create_time desc",
)


def list_deliveries(
    page: listing.PageRequest, *, endpoint_id: str
) -> listing.Page[WebhookDelivery]:
    """Returns one page of the endpoint's deliveries, newest first; raises NotFound."""
    endpoint = get_endpoint(endpoint_id)
    request = listing.parse_list_request(DELIVERY_LIST, page, scope=endpoint.id)
    return listing.fetch_page(
        WebhookDelivery.select().where(WebhookDelivery.endpoint == endpoint.id), request
    )


def redeliver(endpoint_id: str, event_id: str) -> WebhookDelivery:
    """Sends the event to the endpoint again, from the first attempt: a parked or succeeded
    delivery is re-driven; an event the endpoint never had is delivered now."""
    v = Validator()
    v.check_id("event_id", event_id, "event")
    v.raise_if_any()
    endpoint = get_endpoint(endpoint_id)
    event = OutboxEvent.get_or_none(OutboxEvent.id == event_id)
    if event is None:
        raise NotFound("The event does not exist.", reason="EVENT_NOT_FOUND")
    now = utcnow()
    with database.atomic():
        _insert_deliveries([(endpoint.id, event)], now)
        WebhookDelivery.update(
            state=PENDING, attempts=0, next_attempt_time=now, delivered_time=None
        ).where(
            (WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.event_id == event.id)
        ).execute()
    return WebhookDelivery.get(
        (WebhookDelivery.endpoint == endpoint.id) & (WebhookDelivery.event_id == event.id)
    )


def send_test_event(endpoint_id: str) -> outbox.Event:
    """Emits a webhook.test event that only this endpoint receives; returns it."""
    endpoint = get_endpoint(endpoint_id)
    with database.atomic():
        return outbox.emit(ENDPOINT, endpoint.id, TEST_EVENT_TYPE, {"endpoint_id": endpoint.id})


# --- dispatch -----------------------------------------------------------------------------------


@dataclass
class WebhookSender:
    """Sends due deliveries to their endpoints and records each outcome."""

    sender: Sender
    metrics: WebhookMetrics
    retry_schedule: Sequence[float] = DEFAULT_RETRY_SCHEDULE
    lease: dt.timedelta = dt.timedelta(seconds=60)

    def send_due(self) -> int:
        """Sends up to one batch of due deliveries, their outcomes written together
        (work_leases.work_through); returns how many were tried."""
        claimed_at = utcnow()
        due = claim_due(SEND_BATCH, self.lease)
        if not due:
            return 0
        # Column values: reading `delivery.endpoint` would load each row on its own.
        endpoint_ids = list({d.__data__["endpoint"] for d in due})
        endpoints = {
            e.id: e for e in WebhookEndpoint.select().where(WebhookEndpoint.id.in_(endpoint_ids))
        }
        event_ids = [d.event_id for d in due]
        events = {e.id: e for e in OutboxEvent.select().where(OutboxEvent.id.in_(event_ids))}

        def attempt(delivery: WebhookDelivery) -> Attempt | None:
            endpoint = endpoints.get(delivery.__data__["endpoint"])
            event = events.get(delivery.event_id)
            if endpoint is None or event is None:
                return None  # deleted meanwhile (the endpoint) or purged (the event)
            return self.attempt(delivery, endpoint, event)

        return work_leases.work_through(
            due, claimed_at=claimed_at, lease=self.lease, attempt=attempt, record=self._record
        )

    def attempt(
        self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, event: OutboxEvent
    ) -> Attempt:
        """Sends one delivery; returns its outcome (not yet written)."""
        body = request_body(event)
        now = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": "storefront-webhooks/1",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures(endpoint, event.id, now, body),
        }
        code: int | None = None
        try:
            response = self.sender.post(endpoint.url, body, headers)
            code = response.status
            error = None if 200 <= code < 300 else f"HTTP {code}"
            reason = "succeeded" if error is None else "http_status"
        except Refused as exc:
            error, reason = f"refused: {exc}", "refused"
        except (OSError, http.client.HTTPException) as exc:
            error, reason = f"{type(exc).__name__}: {exc}", "connection"
        self.metrics.attempts.labels(reason).inc()
        finished = utcnow()
        if error is None:
            self.metrics.lag.observe((finished - event.create_time).total_seconds())
        return Attempt(delivery, endpoint.id, code, error, finished)

    def _record(self, outcomes: list[Attempt]) -> None:
        if outcomes:
            self.metrics.parked.inc(record_attempts(outcomes, self.retry_schedule))


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt's outcome: the answer's status code and the error, if any."""

    delivery: WebhookDelivery
    endpoint_id: str
    code: int | None
    error: str | None
    time: dt.datetime


def request_body(event: OutboxEvent) -> bytes:
    """The JSON body: type, timestamp and data (the event's facts - an order's with the order as
    of the event, `data.order` - its aggregate and sequence)."""
    data = {
        **json.loads(event.payload),
        "event_id": event.id,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": int(event.sequence),
    }
    return json.dumps(
        {"type": event.type, "timestamp": rfc3339(event.create_time), "data": data},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def signatures(endpoint: WebhookEndpoint, event_id: str, now: dt.datetime, body: bytes) -> str:
    """The `webhook-signature` header: the current secret's signature and, during a rotation's
    overlap, the previous one's, space-separated."""
    secrets_in_use = [endpoint.secret]
    if (
        endpoint.previous_secret
        and endpoint.previous_secret_expire_time
        and (endpoint.previous_secret_expire_time > now.replace(tzinfo=None))
    ):
        secrets_in_use.append(endpoint.previous_secret)
    return " ".join(Webhook(secret).sign(event_id, now, body) for secret in secrets_in_use)


def record_attempts(outcomes: Sequence[Attempt], schedule: Sequence[float]) -> int:
    """Stores the attempts' outcomes in one transaction; returns how many were parked."""
    parked = 0
    with database.atomic():
        for outcome in outcomes:
            changes = _attempt_changes(outcome, schedule)
            WebhookDelivery.update(changes).where(
                (WebhookDelivery.id == outcome.delivery.id) & (WebhookDelivery.state == PENDING)
            ).execute()
            parked += changes.get(WebhookDelivery.state) == PARKED
            if outcome.code == 410:  # Gone: the receiver asks never to be called again
                WebhookEndpoint.update(
                    disabled_time=outcome.time, disabled_reason="the endpoint answered 410 Gone"
                ).where(
                    (WebhookEndpoint.id == outcome.endpoint_id)
                    & WebhookEndpoint.disabled_time.is_null()
                ).execute()
    return parked


def _attempt_changes(outcome: Attempt, schedule: Sequence[float]) -> dict[peewee.Field, object]:
    attempts = int(outcome.delivery.attempts) + 1
    error = outcome.error
    changes: dict[peewee.Field, object] = {
        WebhookDelivery.attempts: attempts,
        WebhookDelivery.last_attempt_time: outcome.time,
        WebhookDelivery.last_response_code: outcome.code,
        WebhookDelivery.last_error: error[:ERROR_MAX_LENGTH] if error else None,
    }
    if error is None:
        changes[WebhookDelivery.state] = SUCCEEDED
        changes[WebhookDelivery.delivered_time] = outcome.time
    elif attempts > len(schedule):
        changes[WebhookDelivery.state] = PARKED
    else:
        changes[WebhookDelivery.next_attempt_time] = outcome.time + dt.timedelta(
            seconds=schedule[attempts - 1]
        )
    return changes


def add_deliveries(events: Sequence[OutboxEvent], now: dt.datetime) -> int:
    """Writes a PENDING delivery of each event to each endpoint that wants it (in the caller's
    transaction); returns how many. Disabled endpoints too: their deliveries wait until they are
    enabled again."""
    endpoints = list(WebhookEndpoint.select())
    pairs = [
        (endpoint.id, event)
        for event in events
        for endpoint in endpoints
        if _wants(endpoint, event)
    ]
    _insert_deliveries(pairs, now)
    return len(pairs)


def _wants(endpoint: WebhookEndpoint, event: OutboxEvent) -> bool:
    if event.create_time < endpoint.create_time:
        return False  # it happened before the endpoint was registered
    if event.aggregate_type == ENDPOINT:
        return bool(event.aggregate_id == endpoint.id)  # a test event: its endpoint only
    types = event_types_of(endpoint)
    return not types or event.type in types


def _insert_deliveries(pairs: Sequence[tuple[str, OutboxEvent]], now: dt.datetime) -> None:
    rows = [
        {
            "id": str(uuid.uuid4()),
            "endpoint": endpoint_id,
            "event_id": event.id,
            "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id,
            "sequence": event.sequence,
            "event_type": event.type,
            "state": PENDING,
            "attempts": 0,
            "next_attempt_time": now,
            "create_time": now,
        }
        for endpoint_id, event in pairs
    ]
    for start in range(0, len(rows), 100):
        WebhookDelivery.insert_many(rows[start : start + 100]).on_conflict_ignore().execute()


def claim_due(limit: int, lease: dt.timedelta) -> list[WebhookDelivery]:
    """Leases up to `limit` due deliveries to enabled endpoints, each the earliest PENDING one
    of its aggregate for its endpoint."""
    now = utcnow()
    earlier = WebhookDelivery.alias()
    blocked = earlier.select(earlier.id).where(
        (earlier.endpoint == WebhookDelivery.endpoint)
        & (earlier.aggregate_type == WebhookDelivery.aggregate_type)
        & (earlier.aggregate_id == WebhookDelivery.aggregate_id)
        & (earlier.sequence < WebhookDelivery.sequence)
        & (earlier.state == PENDING)
    )
    enabled = WebhookEndpoint.select(WebhookEndpoint.id).where(
        WebhookEndpoint.disabled_time.is_null()
    )
    candidates = (
        WebhookDelivery.select()
        .where(
            (WebhookDelivery.state == PENDING)
            & (WebhookDelivery.next_attempt_time <= now)
            & WebhookDelivery.endpoint.in_(enabled)
            & ~peewee.fn.EXISTS(blocked)
        )
        .order_by(WebhookDelivery.next_attempt_time, WebhookDelivery.create_time)
    )
    return work_leases.claim(
        LEASE_KIND, candidates, WebhookDelivery.id, lease=lease, limit=limit, now=now
    )
