"""Watching an order: its current state, then each later event, for as long as the client stays.

The order's outbox events are numbered 1, 2, 3... with no gaps (domain/outbox.py), so a watcher
only needs the last sequence it sent: it reads the events after it, sends them, and waits. A
change committed in this process wakes its watchers at once (an outbox consumer); one committed
by another worker or replica is found by the next poll. Each read takes a database connection
for the read alone; a wait holds none.

Streams are capped per process (`StreamSlots`): the server provisions a worker thread per slot
on top of those of unary calls, so open streams never take the capacity unary calls need.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from server.db import database
from server.domain import orders, outbox
from server.domain.orders import OrderDetails
from server.domain.principal import Principal
from server.errors import ResourceExhausted
from server.validation import Validator

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Update:
    """One message of a watch: the first shows the whole order (`details`), later ones an event."""

    order_id: str
    sequence: int
    event_type: str
    state: str
    time: dt.datetime
    details: OrderDetails | None = None


class StreamSlots:
    """At most `limit` open streams in this process; beyond it, RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit) if limit > 0 else None

    def take(self) -> Callable[[], None]:
        """Takes a slot; returns the function that gives it back (call it exactly once)."""
        if self._free is None or not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                f"This server already has its {self.limit} streams open; retry later or elsewhere.",
                reason="STREAM_LIMIT",
                retry_delay_seconds=1.0,
            )
        return self._free.release


class Wakeups:
    """Wakes the watchers of an aggregate when this process commits one of its events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}

    def register(self, aggregate_id: str) -> threading.Event:
        """Returns an event set whenever `aggregate_id` changes here (until `forget`)."""
        wake = threading.Event()
        with self._lock:
            self._waiting.setdefault(aggregate_id, set()).add(wake)
        return wake

    def forget(self, aggregate_id: str, wake: threading.Event) -> None:
        """Stops waking `wake`."""
        with self._lock:
            waiting = self._waiting.get(aggregate_id)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
                    del self._waiting[aggregate_id]

    def on_committed(self, event: outbox.Event) -> None:
        """The outbox consumer: wakes the watchers of the event's aggregate."""
        with self._lock:
            waiting = list(self._waiting.get(event.aggregate_id, ()))
        for wake in waiting:
            wake.set()


def watch(
    viewer: Principal,
    order_id: str,
    after_sequence: int,
    *,
    active: Callable[[], bool],
    wake: threading.Event,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[Update]:
    """Yields the order's updates while `active()`; `wake` cuts a wait short. Raises NotFound
    (before yielding anything) when `viewer` may not see the order."""
    v = Validator()
    orders.check_order_id(v, order_id)
    v.check(after_sequence >= 0, "after_sequence", "must not be negative")
    v.raise_if_any()
    with database.connection_context():
        found = orders.get(viewer, order_id)
        history = outbox.events_of(outbox.ORDER, order_id)
    last = after_sequence
    if after_sequence == 0:
        last = history[-1].sequence if history else 0
        order = found.order
        yield Update(order.id, last, "", order.state, order.update_time, details=found)
    else:
        yield from _updates(history, last)
        last = max([last, *(e.sequence for e in history)])
    while active():
        wake.wait(poll_seconds)
        wake.clear()
        with database.connection_context():
            events = outbox.events_of(outbox.ORDER, order_id, after=last)
        yield from _updates(events, last)
        if events:
            last = events[-1].sequence


def _updates(events: list[outbox.Event], after: int) -> Iterator[Update]:
    for event in events:
        if event.sequence > after:
            yield Update(
                event.aggregate_id,
                event.sequence,
                event.type,
                str(event.payload["to_state"]),
                event.create_time,
            )


@dataclass
class OrderStreams:
    """This process's order watches: their slots and wake-ups."""

    slots: StreamSlots
    wakeups: Wakeups
    poll_seconds: float = POLL_SECONDS

    def watch(
        self,
        viewer: Principal,
        order_id: str,
        after_sequence: int,
        *,
        active: Callable[[], bool],
        on_end: Callable[[Callable[[], None]], object],
    ) -> Iterator[Update]:
        """`watch` in a slot of its own; `on_end` registers what to run when the call ends (a
        cancelled stream's wait is cut short, and its slot freed at once)."""
        release = self.slots.take()
        wake = self.wakeups.register(order_id)
        try:
            on_end(wake.set)
            yield from watch(
                viewer,
                order_id,
                after_sequence,
                active=active,
                wake=wake,
                poll_seconds=self.poll_seconds,
            )
        finally:
            self.wakeups.forget(order_id, wake)
            release()
