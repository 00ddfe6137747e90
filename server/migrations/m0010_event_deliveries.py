"""Webhook endpoints, the delivery of each outbox event to each endpoint, and order e-mails."""

from __future__ import annotations

import peewee


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class WebhookEndpoint(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    url = peewee.CharField(max_length=2048)
    description = peewee.CharField(max_length=200)
    event_types = peewee.TextField()
    secret = peewee.CharField(max_length=64)
    previous_secret = peewee.CharField(max_length=64, null=True)
    previous_secret_expire_time = peewee.DateTimeField(null=True)
    disabled_time = peewee.DateTimeField(null=True)
    disabled_reason = peewee.CharField(max_length=200, null=True)
    create_time = peewee.DateTimeField()
    update_time = peewee.DateTimeField()

    class Meta:
        table_name = "webhook_endpoints"


class WebhookDelivery(_Frozen):
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
        indexes = (
            (("endpoint_id", "event_id"), True),
            (("state", "next_attempt_time"), False),
            (("endpoint_id", "aggregate_type", "aggregate_id", "sequence"), False),
            (("endpoint_id", "create_time"), False),
        )


class EmailMessage(_Frozen):
    id = peewee.CharField(max_length=36, primary_key=True)
    event_id = peewee.CharField(max_length=36, unique=True)
    recipient = peewee.CharField(max_length=320)
    subject = peewee.CharField(max_length=200)
    text_body = peewee.TextField()
    html_body = peewee.TextField()
    state = peewee.CharField(max_length=16)
    attempts = peewee.IntegerField()
    next_attempt_time = peewee.DateTimeField()
    last_error = peewee.CharField(max_length=500, null=True)
    create_time = peewee.DateTimeField()
    sent_time = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "email_messages"
        indexes = ((("state", "next_attempt_time"), False),)


TABLES = [WebhookEndpoint, WebhookDelivery, EmailMessage]


def up(db: peewee.Database) -> None:
    """Creates webhook_endpoints, webhook_deliveries and email_messages."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
