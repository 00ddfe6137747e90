"""Leases that share background work among processes: each unit is done by one at a time.

A job pass (in any worker of any replica) picks the units it will work on with `claim`: in one
short transaction it selects candidates that hold no live lease and leases them to this process
until `expire_time`. The lease is not given back when the unit is done: it lasts a pass interval,
so that in each interval one process, and only one, works on each unit (one provider lookup per
pending order per pass, however many processes run the reconciler). The holder itself may claim
its units again at any time (its next pass, or a refund its outbox consumer sends at once). A
process that dies holding leases only delays its units until they expire.

PostgreSQL: the candidates are locked FOR UPDATE SKIP LOCKED, so concurrent passes pick
different units instead of queueing on the same rows, and each lease is an upsert that only
replaces an expired one (a pass whose snapshot missed a lease committed meanwhile gets no row
for it). SQLite: the transaction is IMMEDIATE, so passes of all processes claim one at a time.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

import peewee

from server.db import database, is_sqlite, utcnow
from server.domain import instances
from server.models.work_lease import WorkLease

M = TypeVar("M", bound=peewee.Model)
T = TypeVar("T")
Outcome = TypeVar("Outcome")
# How often `work_through` writes the outcomes so far.
RECORD_EVERY = dt.timedelta(seconds=1)
# The kind of the leases on whole job passes.
JOB_LEASE = "job"


def claim(
    kind: str,
    candidates: peewee.ModelSelect[M],
    item_field: peewee.Field,
    *,
    lease: dt.timedelta,
    limit: int,
    now: dt.datetime | None = None,
) -> list[M]:
    """Leases up to `limit` rows of `candidates` that nobody holds; returns those leased.

    `item_field` is the selected column that names a unit (a primary key). Call outside any
    transaction.
    """
    now = now or utcnow()
    owner = _owner()
    held = WorkLease.select(WorkLease.item).where(
        (WorkLease.kind == kind)
        & (WorkLease.item == item_field)
        & (WorkLease.expire_time > now)
        & (WorkLease.owner != owner)
    )
    query = candidates.where(~peewee.fn.EXISTS(held)).limit(limit)
    if not is_sqlite():
        query = query.for_update(of=candidates.model, skip_locked=True)
    with database.atomic():
        rows = list(query)
        return [
            row
            for row in rows
            if _lease(kind, str(getattr(row, item_field.name)), owner, now + lease, now)
        ]


def work_through(
    claimed: Sequence[T],
    *,
    claimed_at: dt.datetime,
    lease: dt.timedelta,
    attempt: Callable[[T], Outcome | None],
    record: Callable[[list[Outcome]], None],
) -> int:
    """Attempts each claimed unit in turn and records the outcomes together, a transaction per
    `RECORD_EVERY` rather than one per unit (on SQLite each write waits its turn behind the
    request writers, so a write per unit falls far behind under load); returns how many were
    attempted. A crash before a write repeats the unwritten attempts (at least once). Stops at
    half the lease: the rest stays this process's to claim again at once, not another's to
    attempt as well meanwhile. `attempt` returns None for a unit with nothing to do.
    """
    outcomes: list[Outcome] = []
    written = claimed_at
    attempted = 0
    for unit in claimed:
        now = utcnow()
        if now - claimed_at > lease / 2:
            break
        if now - written > RECORD_EVERY:
            record(outcomes)
            outcomes, written = [], now
        attempted += 1
        outcome = attempt(unit)
        if outcome is not None:
            outcomes.append(outcome)
    record(outcomes)
    return attempted


def claim_pass(name: str, *, lease: dt.timedelta, now: dt.datetime | None = None) -> bool:
    """Leases a whole pass of the job `name`: whether this process runs it now."""
    now = now or utcnow()
    with database.atomic():
        return _lease(JOB_LEASE, name, _owner(), now + lease, now)


def purge_expired(now: dt.datetime) -> int:
    """Deletes the leases whose time is up; returns how many."""
    with database.atomic():
        return int(WorkLease.delete().where(WorkLease.expire_time <= now).execute())


def _owner() -> str:
    """This process: its instance, or (outside a serving process: `storefront reconcile`) its
    host and pid, unique among the processes running now."""
    return instances.current() or f"{socket.gethostname()[:24]}:{os.getpid()}"


def _lease(kind: str, item: str, owner: str, expire_time: dt.datetime, now: dt.datetime) -> bool:
    """Takes the lease on (kind, item) unless another owner holds a live one; whether it was."""
    taken = (
        WorkLease.insert(kind=kind, item=item, owner=owner, expire_time=expire_time)
        .on_conflict(
            conflict_target=[WorkLease.kind, WorkLease.item],
            update={WorkLease.owner: owner, WorkLease.expire_time: expire_time},
            # The row already stored, as it is now (PostgreSQL waits for a concurrent claimer's
            # commit): only an expired lease, or the owner's own, is replaced.
            where=(WorkLease.expire_time <= now) | (WorkLease.owner == owner),
        )
        .as_rowcount()
        .execute()
    )
    return bool(taken == 1)
