"""Watching orders: one order's current state then each later event (WatchOrder), or every
order's events shop-wide (WatchOrders), for as long as the client stays.

An order's outbox events are numbered 1, 2, 3... with no gaps (domain/outbox.py), so a watcher of
one order only needs the last sequence it sent: it reads the events after it, sends them, and
waits. The shop-wide watch reads by the position the dispatcher gives each event as it hands it on
(domain/dispatch.py), in commit order, so the last position sent is enough there. A change
committed in this process wakes its watchers at once (an outbox consumer); one committed by
another worker or replica wakes them through a PostgreSQL notification or, on SQLite, the
process's outbox poller (server/notifications.py); each stream's own slow poll is only a net.
Each read takes a database connection for the read alone; a wait holds none.

Streams are capped per process (`StreamSlots`): the server provisions a worker thread per slot
on top of those of unary calls, so open streams never take the capacity unary calls need. A
server that stops ends its streams with UNAVAILABLE (SHUTTING_DOWN) before it stops serving, and
waits for their threads before it closes the database.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from server.db import database
from server.domain import orders, outbox
from server.domain.orders import OrderDetails
from server.domain.principal import Principal
from server.errors import ResourceExhausted, Unavailable
from server.validation import Validator

# How often a stream re-reads on its own (a commit anywhere wakes it sooner).
POLL_SECONDS = 5.0
# Wakes the shop-wide watchers (WatchOrders) when events have been given positions.
ALL_ORDERS = "*"
# Events a shop-wide watcher reads at a time.
SHOP_READ_BATCH = 200


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
    """At most `limit` open streams in this process; beyond it, RESOURCE_EXHAUSTED. Once
    `close`d, none (UNAVAILABLE)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken = 0
        self._closed = False
        self._changed = threading.Condition()

    def take(self) -> Callable[[], None]:
        """Takes a slot; returns the function that gives it back (call it exactly once)."""
        with self._changed:
            if self._closed:
                raise shutting_down()
            if self._taken >= self.limit:
                raise ResourceExhausted(
                    f"This server already has its {self.limit} streams open; retry later or "
                    "elsewhere.",
                    reason="STREAM_LIMIT",
                    retry_delay_seconds=1.0,
                )
            self._taken += 1
        return self._give_back

    def _give_back(self) -> None:
        with self._changed:
            self._taken -= 1
            self._changed.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuses new streams, then waits up to `timeout` seconds for the open ones to end;
        returns whether they all did."""
        with self._changed:
            self._closed = True
            return self._changed.wait_for(lambda: self._taken == 0, timeout)


def shutting_down() -> Unavailable:
    """The error a stream ends with when its server stops: reconnect (to another replica)."""
    return Unavailable(
        "This server is shutting down; reconnect, resuming after the last message you saw.",
        reason="SHUTTING_DOWN",
    )


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

    def wake(self, aggregate_id: str) -> None:
        """Wakes the watchers registered for `aggregate_id`."""
        with self._lock:
            waiting = list(self._waiting.get(aggregate_id, ()))
        for wake in waiting:
            wake.set()

    def wake_everyone(self) -> None:
        """Wakes every watcher (after notifications may have been missed)."""
        with self._lock:
            waiting = [wake for wakes in self._waiting.values() for wake in wakes]
        for wake in waiting:
            wake.set()

    def on_committed(self, event: outbox.Event) -> None:
        """The outbox consumer: wakes the watchers of the event's aggregate."""
        self.wake(event.aggregate_id)


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


@dataclass(frozen=True)
class ShopUpdate:
    """One message of a shop-wide watch: an order's event at `position`, or (the first message,
    `update` None) the position the watch starts after."""

    position: int
    update: Update | None = None


def watch_all(
    states: Collection[str],
    after_position: int,
    *,
    active: Callable[[], bool],
    wake: threading.Event,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[ShopUpdate]:
    """Yields every order event after `after_position` (0: from now) that leaves its order in
    one of `states` (any when empty), in position order, while `active()`."""
    v = Validator()
    v.check(after_position >= 0, "after_position", "must not be negative")
    known = {state.value for state in orders.State}
    for index, state in enumerate(states):
        v.check(state in known, f"states[{index}]", "must be a known order state")
    v.raise_if_any()
    wanted = frozenset(states)
    last = after_position
    if after_position == 0:
        with database.connection_context():
            last = outbox.last_position()
    yield ShopUpdate(last)
    while True:
        with database.connection_context():
            events = outbox.events_after_position(last, limit=SHOP_READ_BATCH)
        for position, event in events:
            last = position
            state = str(event.payload.get("to_state", ""))
            if event.aggregate_type == outbox.ORDER and (not wanted or state in wanted):
                yield ShopUpdate(position, next(_updates([event], 0)))
        if len(events) == SHOP_READ_BATCH:
            continue  # more are waiting: read on without a pause
        if not active():
            return
        wake.wait(poll_seconds)
        wake.clear()


@dataclass
class OrderStreams:
    """This process's order watches: their slots and wake-ups."""

    slots: StreamSlots
    wakeups: Wakeups
    poll_seconds: float = POLL_SECONDS
    _closing: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def close(self, timeout: float) -> bool:
        """Ends every open stream with UNAVAILABLE (SHUTTING_DOWN) and refuses new ones; waits up
        to `timeout` seconds for their threads to leave the database; returns whether all did."""
        self._closing.set()
        self.wakeups.wake_everyone()
        return self.slots.close(timeout)

    def _open(self, active: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: active() and not self._closing.is_set()

    def _ended(self) -> None:
        if self._closing.is_set():
            raise shutting_down()

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
                active=self._open(active),
                wake=wake,
                poll_seconds=self.poll_seconds,
            )
            self._ended()
        finally:
            self.wakeups.forget(order_id, wake)
            release()

    def watch_all(
        self,
        states: Collection[str],
        after_position: int,
        *,
        active: Callable[[], bool],
        on_end: Callable[[Callable[[], None]], object],
    ) -> Iterator[ShopUpdate]:
        """`watch_all` in a slot of its own, like `watch`."""
        release = self.slots.take()
        wake = self.wakeups.register(ALL_ORDERS)
        try:
            on_end(wake.set)
            yield from watch_all(
                states,
                after_position,
                active=self._open(active),
                wake=wake,
                poll_seconds=self.poll_seconds,
            )
            self._ended()
        finally:
            self.wakeups.forget(ALL_ORDERS, wake)
            release()
