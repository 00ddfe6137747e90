"""dispatch.numbered: shop-wide positions, oldest first, each aggregate's in sequence order."""

from __future__ import annotations

import datetime as dt

from server.domain.dispatch import numbered
from server.models.outbox_event import OutboxEvent

T0 = dt.datetime(2026, 12, 5, 12, 0, 0)


def event(event_id: str, aggregate_id: str, sequence: int, seconds: float) -> OutboxEvent:
    return OutboxEvent(
        id=event_id,
        aggregate_type="order",
        aggregate_id=aggregate_id,
        sequence=sequence,
        create_time=T0 + dt.timedelta(seconds=seconds),
    )


def test_positions_follow_time_after_the_last_one_given() -> None:
    events = [event("b", "o2", 1, 2.0), event("a", "o1", 1, 1.0), event("c", "o1", 2, 3.0)]
    assert numbered(events, 41) == {"a": 42, "b": 43, "c": 44}


def test_an_aggregate_keeps_its_sequence_order_when_clocks_disagree() -> None:
    # o1's second event was stamped by a replica whose clock runs behind.
    events = [event("a", "o1", 1, 5.0), event("b", "o2", 1, 4.0), event("c", "o1", 2, 3.0)]
    positions = numbered(events, 0)
    assert positions["a"] < positions["c"]
    assert sorted(positions.values()) == [1, 2, 3]
    assert positions == {"c": 3, "b": 2, "a": 1}
