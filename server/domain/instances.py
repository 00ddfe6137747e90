"""Process instances: who is alive, so that the work of a dead process is taken over at once.

Each serving process (a worker, a replica) registers an instance at start, refreshes its
heartbeat every HEARTBEAT_SECONDS and deletes it when it stops. What it claims (idempotency keys
in flight) carries its id. Another process that finds such a claim asks `is_dead`: no row, or a
heartbeat older than DEAD_AFTER, means the owner was killed (kill -9, OOM, a lost machine) and
the claim may be taken over, within seconds instead of the stale-claim timeout.

Heartbeats are compared with this process's clock: machines must keep their clocks within a
second or two of each other (NTP). A live process taken for dead is safe, only wasteful: every
claim it holds is completed by compare-and-set, so of the two calls only one's outcome stands,
and provider calls are keyed, so nothing is charged twice.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid

from server.db import database, utcnow
from server.models.server_instance import ServerInstance

HEARTBEAT_SECONDS = 1.0
# Several missed heartbeats: a process busy for a moment (a long GC, a queue for SQLite's writer
# turn) is not taken for dead.
DEAD_AFTER = dt.timedelta(seconds=5)
# Rows of instances that died without deleting them are removed this long after their last beat.
FORGET_AFTER = dt.timedelta(days=1)

_current: str | None = None


def current() -> str | None:
    """The id of this process's registered instance; None outside a serving process."""
    return _current


def register(now: dt.datetime | None = None) -> str:
    """Registers this process as a live instance and returns its id."""
    global _current
    now = now or utcnow()
    instance_id = str(uuid.uuid4())
    with database.atomic():
        ServerInstance.delete().where(ServerInstance.heartbeat_time < now - FORGET_AFTER).execute()
        ServerInstance.create(
            id=instance_id,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            start_time=now,
            heartbeat_time=now,
        )
    _current = instance_id
    return instance_id


def heartbeat(instance_id: str, now: dt.datetime | None = None) -> None:
    """Refreshes the instance's heartbeat (re-creating its row if it was removed)."""
    now = now or utcnow()
    with database.atomic():
        beat = (
            ServerInstance.update(heartbeat_time=now)
            .where(ServerInstance.id == instance_id)
            .execute()
        )
        if beat == 0:
            ServerInstance.insert(
                id=instance_id,
                host=socket.gethostname()[:255],
                pid=os.getpid(),
                start_time=now,
                heartbeat_time=now,
            ).on_conflict_ignore().execute()


def retire(instance_id: str) -> None:
    """Deletes the instance: it has stopped and holds nothing any more."""
    global _current
    with database.atomic():
        ServerInstance.delete().where(ServerInstance.id == instance_id).execute()
    if _current == instance_id:
        _current = None


def is_dead(instance_id: str, now: dt.datetime) -> bool:
    """Whether the instance has stopped beating (or never existed, or retired)."""
    if instance_id == _current:
        return False
    last_beat = (
        ServerInstance.select(ServerInstance.heartbeat_time)
        .where(ServerInstance.id == instance_id)
        .scalar()
    )
    return last_beat is None or last_beat < now - DEAD_AFTER
