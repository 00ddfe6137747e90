"""Session rules under concurrency, on both engines, through the domain functions."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import peewee
import pytest

from server.db import database
from server.domain import sessions, users
from server.domain.sessions import SessionPolicy
from server.errors import DomainError, ResourceExhausted, Unauthenticated
from server.models.session import Session
from server.models.user import LoginFailure

PASSWORD = "correct horse battery staple"


def run_concurrently(
    db: peewee.Database, count: int, work: Callable[[], object]
) -> list[object | DomainError]:
    """Runs `work` in `count` threads at once, each with its own connection; returns outcomes."""
    outcomes: list[object | DomainError] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def run() -> None:
        with db.connection_context():
            barrier.wait()
            try:
                result: object | DomainError = work()
            except DomainError as exc:
                result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_concurrent_refreshes_of_one_token_let_at_most_one_through(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    users.register(
        email="a@example.com", password=PASSWORD, display_name="", passwords=policy.passwords
    )
    _, first = sessions.login(email="a@example.com", password=PASSWORD, policy=policy)

    outcomes = run_concurrently(
        db, 8, lambda: sessions.refresh(refresh_token=first.refresh_token, policy=policy)
    )
    winners = [o for o in outcomes if isinstance(o, sessions.SessionTokens)]
    assert len(winners) <= 1
    assert all(isinstance(o, Unauthenticated) for o in outcomes if o not in winners)
    # Every loser was a reuse: the session is revoked, and with it the winner's new token.
    with db.connection_context():
        assert Session.select().where(Session.revoke_time.is_null()).count() == 0
    for winner in winners:
        assert isinstance(winner, sessions.SessionTokens)
        with db.connection_context(), pytest.raises(Unauthenticated):
            sessions.refresh(refresh_token=winner.refresh_token, policy=policy)


def test_concurrent_wrong_guesses_get_exactly_five_verifications(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    users.register(
        email="b@example.com", password=PASSWORD, display_name="", passwords=policy.passwords
    )
    outcomes = run_concurrently(
        db,
        12,
        lambda: sessions.login(email="b@example.com", password="wrong password!", policy=policy),
    )
    rejected = [o for o in outcomes if isinstance(o, Unauthenticated)]
    throttled = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert (len(rejected), len(throttled)) == (5, 7)
    with db.connection_context():
        # Refused attempts are not counted, so the window closes 15 minutes after the guesses.
        assert LoginFailure.select().count() == len(rejected)
        with pytest.raises(ResourceExhausted):
            sessions.login(email="b@example.com", password=PASSWORD, policy=policy)


def test_throttle_window_expires(db: peewee.Database, policy: SessionPolicy) -> None:
    users.register(
        email="c@example.com", password=PASSWORD, display_name="", passwords=policy.passwords
    )
    long_ago = dt.datetime(2020, 1, 1)
    with database.atomic():
        for _ in range(10):
            LoginFailure.create(email="c@example.com", attempt_time=long_ago)
    user, _ = sessions.login(email="c@example.com", password=PASSWORD, policy=policy)
    assert user.email == "c@example.com"
    assert LoginFailure.select().count() == 0


# --- throttling per email and client address ----------------------------------------------------


def register(email: str, policy: SessionPolicy) -> None:
    users.register(email=email, password=PASSWORD, display_name="", passwords=policy.passwords)


def login_from(address: str, email: str, password: str, policy: SessionPolicy) -> object:
    """Signs in from `address`; returns the user, or the DomainError raised."""
    try:
        return sessions.login(
            email=email, password=password, policy=policy, client_address=address
        )[0]
    except DomainError as exc:
        return exc


def failures(email: str, addresses: list[str]) -> None:
    """Records one recent failed sign-in for `email` from each address."""
    with database.atomic():
        for address in addresses:
            LoginFailure.create(email=email, client_address=address)


def test_wrong_guesses_from_one_address_do_not_lock_the_owner_out_elsewhere(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    register("owner@example.com", policy)
    guesses = [login_from("203.0.113.1", "owner@example.com", "wrong!", policy) for _ in range(5)]
    assert all(isinstance(g, Unauthenticated) for g in guesses)
    refused = login_from("203.0.113.1", "owner@example.com", PASSWORD, policy)
    assert isinstance(refused, ResourceExhausted) and refused.reason == "LOGIN_THROTTLED"
    assert refused.retry_delay_seconds is not None and 0 < refused.retry_delay_seconds <= 900
    user = login_from("198.51.100.7", "owner@example.com", PASSWORD, policy)
    assert getattr(user, "email", None) == "owner@example.com"
    # Signing in elsewhere forgets only that address's failures: the guesser stays throttled.
    assert isinstance(
        login_from("203.0.113.1", "owner@example.com", PASSWORD, policy), ResourceExhausted
    )


def test_one_address_guessing_across_many_emails_is_throttled_for_every_email(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    register("victim@example.com", policy)
    for n in range(sessions.ADDRESS_FAILURE_LIMIT):
        failures(f"user{n}@example.com", ["203.0.113.9"])
    refused = login_from("203.0.113.9", "victim@example.com", PASSWORD, policy)
    assert isinstance(refused, ResourceExhausted)
    assert getattr(
        login_from("198.51.100.1", "victim@example.com", PASSWORD, policy), "email", None
    )


def test_many_addresses_guessing_one_email_reach_its_ceiling(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    register("target@example.com", policy)
    addresses = [f"10.0.{n // 250}.{n % 250}" for n in range(sessions.EMAIL_FAILURE_LIMIT - 1)]
    failures("target@example.com", addresses)
    # One below the ceiling: a new address still gets its password checked (and fails).
    assert isinstance(
        login_from("10.9.9.9", "target@example.com", "wrong!", policy), Unauthenticated
    )
    refused = login_from("10.9.9.10", "target@example.com", PASSWORD, policy)
    assert isinstance(refused, ResourceExhausted)


def test_clearing_the_throttle_forgets_the_email_from_every_address(
    db: peewee.Database, policy: SessionPolicy
) -> None:
    register("locked@example.com", policy)
    failures("locked@example.com", ["10.0.0.1"] * 5 + ["10.0.0.2"] * 3)
    failures("other@example.com", ["10.0.0.1"])
    assert isinstance(
        login_from("10.0.0.1", "locked@example.com", PASSWORD, policy), ResourceExhausted
    )
    assert sessions.clear_sign_in_throttle(email=" Locked@Example.com ") == 8
    assert getattr(login_from("10.0.0.1", "locked@example.com", PASSWORD, policy), "email", None)
    assert LoginFailure.select().where(LoginFailure.email == "other@example.com").count() == 1
