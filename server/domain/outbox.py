"""The transactional outbox: what happened, written in the transaction that made it happen.

`emit` inserts an event into `outbox_events` inside the caller's transaction, numbered per
aggregate (1, 2, 3... with no gaps: writers of one aggregate take turns on its lock). The event
therefore exists exactly when the change does: a rollback takes both away.

After the outermost transaction commits, the in-process consumers registered with `subscribe`
see each event (product-cache invalidation, refund delivery, metrics, waking the dispatcher and
watchers), on the committing thread,
before the call that made the change returns. They are hints that must tolerate repeats and never
raise into the committed call: an event emitted inside a savepoint that was later rolled back
still reaches them. Other processes are told at commit by a PostgreSQL notification naming the
aggregate (server/notifications.py). Delivery to the outside world reads the table (the
dispatcher, domain/dispatch.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import peewee

from server import notifications
from server.db import database, lock_transaction_on, utcnow
from server.models.outbox_event import OutboxEvent

log = logging.getLogger("storefront.outbox")

ORDER = "order"
PRODUCT = "product"


@dataclass(frozen=True)
class Event:
    """One committed (or committing) event."""

    id: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    type: str
    payload: Mapping[str, Any]
    create_time: dt.datetime


Consumer = Callable[[Event], None]


@dataclass(frozen=True, eq=False)
class Subscription:
    """A consumer's registration; `unsubscribe` it when what it serves stops."""

    name: str
    consumer: Consumer


_subscriptions: dict[str, Subscription] = {}
_subscriptions_lock = threading.Lock()


def subscribe(name: str, consumer: Consumer) -> Subscription:
    """Makes `consumer` see every event committed in this process from now on, in place of any
    consumer subscribed under the same name (the last server built in a process serves)."""
    subscription = Subscription(name, consumer)
    with _subscriptions_lock:
        _subscriptions[name] = subscription
    return subscription


def unsubscribe(subscription: Subscription) -> None:
    """Removes the subscription, unless another has replaced it since."""
    with _subscriptions_lock:
        if _subscriptions.get(subscription.name) is subscription:
            del _subscriptions[subscription.name]


def emit(
    aggregate_type: str,
    aggregate_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    now: dt.datetime | None = None,
) -> Event:
    """Records an event in the current transaction and returns it.

    Raises RuntimeError outside a transaction: an event written on its own could exist without
    its change, or the change without it.
    """
    if not database.in_transaction():
        raise RuntimeError("outbox.emit() must run in the transaction that makes the change")
    # Writers of one aggregate take turns (PostgreSQL; SQLite writers already do), so the next
    # number is always the last one plus one.
    lock_transaction_on(f"outbox:{aggregate_type}:{aggregate_id}")
    last = (
        OutboxEvent.select(peewee.fn.MAX(OutboxEvent.sequence))
        .where(
            (OutboxEvent.aggregate_type == aggregate_type)
            & (OutboxEvent.aggregate_id == aggregate_id)
        )
        .scalar()
    )
    event = Event(
        id=str(uuid.uuid4()),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        sequence=int(last or 0) + 1,
        type=event_type,
        payload=dict(payload),
        create_time=now or utcnow(),
    )
    OutboxEvent.insert(
        id=event.id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        sequence=event.sequence,
        type=event_type,
        payload=json.dumps(event.payload, sort_keys=True, separators=(",", ":")),
        create_time=event.create_time,
    ).execute()
    # Other processes learn of it at commit (PostgreSQL; SQLite's poll).
    notifications.notify(f"{aggregate_type}:{aggregate_id}")
    database.after_commit(lambda: _publish(event))
    return event


def _publish(event: Event) -> None:
    """Hands a committed event to every consumer; a failing consumer is logged, not raised."""
    with _subscriptions_lock:
        subscriptions = list(_subscriptions.values())
    for subscription in subscriptions:
        try:
            subscription.consumer(event)
        except Exception:
            # The change is committed; the consumer's work is redone by its own fallback (the
            # reconciler, the cache TTL) or on the next event.
            log.exception(
                "outbox consumer %s failed on event %s (%s)",
                subscription.name,
                event.id,
                event.type,
            )


def events_of(aggregate_type: str, aggregate_id: str, *, after: int = 0) -> list[Event]:
    """Returns the aggregate's events in sequence order (those numbered above `after`)."""
    return [
        _event(row)
        for row in OutboxEvent.select()
        .where(
            (OutboxEvent.aggregate_type == aggregate_type)
            & (OutboxEvent.aggregate_id == aggregate_id)
            & (OutboxEvent.sequence > after)
        )
        .order_by(OutboxEvent.sequence)
    ]


def last_position() -> int:
    """The highest position the dispatcher has given an event so far (0 when none)."""
    return int(OutboxEvent.select(peewee.fn.MAX(OutboxEvent.position)).scalar() or 0)


def events_after_position(after: int, *, limit: int) -> list[tuple[int, Event]]:
    """Up to `limit` events with a position above `after`, by position, with their positions."""
    return [
        (int(row.position or 0), _event(row))
        for row in OutboxEvent.select()
        .where(OutboxEvent.position > after)
        .order_by(OutboxEvent.position)
        .limit(limit)
    ]


def _event(row: OutboxEvent) -> Event:
    return Event(
        id=row.id,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        sequence=int(row.sequence),
        type=row.type,
        payload=json.loads(row.payload),
        create_time=row.create_time,
    )
