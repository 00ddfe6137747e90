"""Webhook endpoints (ADMIN-managed) and the delivery of each outbox event to each of them."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class WebhookEndpoint(BaseModel):
    """An HTTPS URL told about events of the listed types (all when the list is empty)."""

    id = peewee.CharField(max_length=36, primary_key=True)
    url = peewee.CharField(max_length=2048)
    description = peewee.CharField(max_length=200)
    event_types = peewee.TextField()  # a JSON list of event type names
    # Standard Webhooks secrets ("whsec_" + base64 of 32 random bytes). During a rotation's
    # overlap both sign, so receivers can switch over at their own pace.
    secret = peewee.CharField(max_length=64)
    previous_secret = peewee.CharField(max_length=64, null=True)
    previous_secret_expire_time = peewee.DateTimeField(null=True)
    disabled_time = peewee.DateTimeField(null=True)
    disabled_reason = peewee.CharField(max_length=200, null=True)
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "webhook_endpoints"


class WebhookDelivery(BaseModel):
    """One outbox event on its way to one endpoint: PENDING, then SUCCEEDED or PARKED."""

    id = peewee.CharField(max_length=36, primary_key=True)
    endpoint = peewee.ForeignKeyField(
        WebhookEndpoint, on_delete="CASCADE", column_name="endpoint_id"
    )
    event_id = peewee.CharField(max_length=36)
    aggregate_type = peewee.CharField(max_length=32)
    aggregate_id = peewee.CharField(max_length=64)
    sequence = peewee.BigIntegerField()
    event_type = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=16)
    attempts = peewee.IntegerField()
    next_attempt_time = peewee.DateTimeField()
    last_attempt_time = peewee.DateTimeField(null=True)
    last_response_code = peewee.IntegerField(null=True)
    last_error = peewee.CharField(max_length=500, null=True)
    create_time = peewee.DateTimeField()
    delivered_time = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "webhook_deliveries"
