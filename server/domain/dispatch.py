"""The outbox dispatcher: hands committed events on to webhooks and e-mails, at least once.

A pass, in any worker of any replica: fan out (in one transaction, take undelivered outbox events
- FOR UPDATE SKIP LOCKED on PostgreSQL, SQLite writers take turns - write their webhook
deliveries and e-mails, and mark them delivered to the dispatcher), then send what is due,
outside any transaction, until nothing is due or the pass's time budget is spent. Each message
is leased to one process while it sends (domain/work_leases.py); one killed mid-send is sent
again by another once its lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.db import database, is_sqlite, utcnow
from server.domain import emails, webhooks
from server.models.outbox_event import OutboxEvent

FAN_OUT_BATCH = 500


def fan_out(limit: int = FAN_OUT_BATCH, *, mail: bool = True) -> int:
    """Hands up to `limit` undelivered events on (to e-mail too when `mail`); returns how many
    events."""
    now = utcnow()
    with database.atomic():
        query = (
            OutboxEvent.select()
            .where(OutboxEvent.delivered_time.is_null())
            .order_by(OutboxEvent.create_time, OutboxEvent.id)
            .limit(limit)
        )
        if not is_sqlite():
            query = query.for_update(skip_locked=True)
        events = list(query)
        if not events:
            return 0
        webhooks.add_deliveries(events, now)
        if mail:
            emails.add_messages(events, now)
        OutboxEvent.update(delivered_time=now).where(
            OutboxEvent.id.in_([event.id for event in events])
        ).execute()
    return len(events)


@dataclass
class Dispatcher:
    """One pass of fan-out and sending (the dispatcher job's run_once)."""

    webhooks: webhooks.WebhookSender
    emails: emails.EmailSender | None

    def run_once(self, *, budget_seconds: float = 5.0) -> int:
        """Fans out new events, then sends what is due until nothing is or the budget is spent;
        returns how many webhooks and e-mails were tried."""
        started = utcnow()
        while fan_out(mail=self.emails is not None):
            pass
        tried = 0
        while (utcnow() - started).total_seconds() < budget_seconds:
            sent = self.webhooks.send_due() + (self.emails.send_due() if self.emails else 0)
            if not sent:
                break
            tried += sent
        return tried
