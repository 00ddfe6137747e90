"""Order e-mails, rendered when their event is dispatched and sent at least once."""

from __future__ import annotations

import peewee

from server.db import BaseModel


class EmailMessage(BaseModel):
    """One e-mail about one order event: PENDING, then SENT (or PARKED when refused for good)."""

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
