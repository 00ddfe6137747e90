"""Instances and work leases on both engines: who is alive, and who holds which unit of work."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import peewee
import pytest

from server.db import utcnow
from server.domain import instances, work_leases
from server.models.server_instance import ServerInstance
from server.models.work_lease import WorkLease
from tests.conftest import insert_product

LEASE = dt.timedelta(seconds=30)


@pytest.fixture(autouse=True)
def no_instance() -> Iterator[None]:
    """Each test starts and ends as a process with no registered instance."""
    instances._current = None
    yield
    instances._current = None


def test_an_instance_is_alive_while_it_beats_and_dead_once_it_stops(db: peewee.Database) -> None:
    start = utcnow()
    me = instances.register(start)
    other = instances.register(start)  # the latest registration is this process's
    assert instances.current() == other
    late = start + instances.DEAD_AFTER + dt.timedelta(seconds=1)
    instances.heartbeat(other, late)
    assert not instances.is_dead(other, late)
    assert instances.is_dead(me, late)  # no beat for longer than DEAD_AFTER
    assert instances.is_dead("never-registered", start)
    instances.retire(other)
    assert instances.current() is None
    assert instances.is_dead(other, late)


def test_a_heartbeat_brings_back_a_removed_instance(db: peewee.Database) -> None:
    me = instances.register()
    ServerInstance.delete().execute()
    instances.heartbeat(me)
    assert not instances.is_dead(me, utcnow())


def test_registering_forgets_instances_dead_for_a_day(db: peewee.Database) -> None:
    now = utcnow()
    ancient = instances.register(now - instances.FORGET_AFTER - dt.timedelta(seconds=1))
    instances.register(now)
    assert not ServerInstance.select().where(ServerInstance.id == ancient).exists()


def _products(count: int) -> list[str]:
    return sorted(insert_product(on_hand=1) for _ in range(count))


def _claim(now: dt.datetime, limit: int = 10) -> list[str]:
    from server.models.product import Product

    rows = work_leases.claim(
        "test", Product.select(Product.id), Product.id, lease=LEASE, limit=limit, now=now
    )
    return sorted(row.id for row in rows)


def test_a_unit_leased_by_one_process_is_not_given_to_another_until_it_expires(
    db: peewee.Database,
) -> None:
    products = _products(3)
    now = utcnow()
    instances.register(now)  # process A
    held_by_a = _claim(now, limit=2)
    assert len(held_by_a) == 2
    assert sorted(row.item for row in WorkLease.select()) == held_by_a
    instances.register(now)  # process B: another instance in the same database
    assert _claim(now) == sorted(set(products) - set(held_by_a))
    assert _claim(now) == sorted(set(products) - set(held_by_a))  # its own again, no more
    assert _claim(now + LEASE) == products  # A's leases are over: B may take them


def test_the_holder_of_a_lease_may_claim_its_units_again(db: peewee.Database) -> None:
    products = _products(2)
    now = utcnow()
    instances.register(now)
    assert _claim(now) == products
    assert _claim(now + dt.timedelta(seconds=1)) == products


def test_a_job_pass_is_run_by_one_process_per_lease(db: peewee.Database) -> None:
    now = utcnow()
    instances.register(now)
    assert work_leases.claim_pass("purge", lease=LEASE, now=now)
    instances.register(now)
    assert not work_leases.claim_pass("purge", lease=LEASE, now=now)
    assert work_leases.claim_pass("purge", lease=LEASE, now=now + LEASE)
    assert work_leases.purge_expired(now + 2 * LEASE) == 1
