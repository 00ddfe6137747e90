"""The outbox dispatcher: hands committed events on to webhooks and e-mails, at least once.

A pass, in any worker of any replica: fan out (in one transaction, take undelivered outbox events,
number them shop-wide, write their webhook deliveries and e-mails, move the recommendation counts,
and mark them handed on), then
send what is due, outside any transaction, until nothing is due or the pass's time budget is spent.
Fan-outs take turns on a lock (a dispatcher that finds it taken goes on to sending), so positions
are given in commit order: a reader that sees position N has seen every position before it. Each
message is leased to one process while it sends (domain/work_leases.py); one killed mid-send is
sent again by another once its lease expires.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peewee

from server import notifications
from server.db import database, try_lock_transaction_on, utcnow
from server.domain import emails, outbox, recommendations, webhooks
from server.models.outbox_event import OutboxEvent

FAN_OUT_BATCH = 500
# Published (after commit) when a fan-out has numbered events: WatchOrders streams read them.
POSITIONS_TOPIC = "positions"


def fan_out(limit: int = FAN_OUT_BATCH, *, mail: bool = True) -> int:
    """Hands up to `limit` undelivered events on (to e-mail too when `mail`); returns how many
    events (0 as well when another process is fanning out now)."""
    now = utcnow()
    with database.atomic():
        if not try_lock_transaction_on("outbox:fan-out"):
            return 0
        events = list(
            OutboxEvent.select()
            .where(OutboxEvent.delivered_time.is_null())
            .order_by(OutboxEvent.create_time, OutboxEvent.id)
            .limit(limit)
        )
        if not events:
            return 0
        webhooks.add_deliveries(events, now)
        if mail:
            emails.add_messages(events, now)
        # Here, where each event is taken exactly once: the counts move once per event.
        recommendations.record(events)
        positions = numbered(events, outbox.last_position())
        OutboxEvent.update(
            delivered_time=now,
            position=peewee.Case(OutboxEvent.id, list(positions.items())),
        ).where(OutboxEvent.id.in_(list(positions))).execute()
        notifications.notify(POSITIONS_TOPIC)
    return len(events)


def numbered(events: Sequence[OutboxEvent], last: int) -> dict[str, int]:
    """Positions last+1, last+2... for `events`, oldest first, each aggregate's in sequence order
    (clocks of different replicas may disagree with the sequence)."""
    ordered = sorted(events, key=lambda event: (event.create_time, event.id))
    slots: dict[tuple[str, str], list[int]] = defaultdict(list)
    members: dict[tuple[str, str], list[OutboxEvent]] = defaultdict(list)
    for position, event in enumerate(ordered, start=last + 1):
        key = (event.aggregate_type, event.aggregate_id)
        slots[key].append(position)
        members[key].append(event)
    return {
        event.id: position
        for key, positions in slots.items()
        for event, position in zip(
            sorted(members[key], key=lambda event: event.sequence), positions, strict=True
        )
    }


@dataclass
class Dispatcher:
    """One pass of fan-out and sending (the dispatcher job's run_once)."""

    webhooks: webhooks.WebhookSender
    emails: emails.EmailSender | None
    # Called after a fan-out numbered events (this process's WatchOrders streams read them).
    on_fanned_out: Callable[[], None] = lambda: None

    def run_once(self, *, budget_seconds: float = 5.0) -> int:
        """Fans out new events, then sends what is due until nothing is or the budget is spent;
        returns how many webhooks and e-mails were tried."""
        started = utcnow()

        def spent() -> float:
            return (utcnow() - started).total_seconds()

        # At most half the budget on fan-out: under a flood of new events, sending still gets
        # its turn (the rest is fanned out by the next pass).
        while spent() < budget_seconds / 2 and fan_out(mail=self.emails is not None):
            self.on_fanned_out()
        tried = 0
        while spent() < budget_seconds:
            sent = self.webhooks.send_due() + (self.emails.send_due() if self.emails else 0)
            if not sent:
                break
            tried += sent
        return tried
