"""Idempotency rules that need no database: key format, request hashing, what a stored key means."""

from __future__ import annotations

import datetime as dt

import pytest

from server.domain import idempotency
from server.domain.idempotency import DONE, IN_FLIGHT, KEY_TTL, STALE_CLAIM_AFTER, Verdict
from server.models.idempotency_key import IdempotencyKey
from server.validation import Validator

NOW = dt.datetime(2026, 1, 1, 12, 0, 0)
KEY = "123e4567-e89b-42d3-a456-426614174000"


@pytest.mark.parametrize(
    ("key", "valid", "normalised"),
    [
        (KEY, True, KEY),
        (KEY.upper(), True, KEY),
        ("", False, ""),
        ("not-a-uuid", False, "not-a-uuid"),
        (KEY.replace("-", ""), False, None),  # uuid.UUID accepts it; the contract does not
        ("{" + KEY + "}", False, None),
        ("urn:uuid:" + KEY, False, None),
        (KEY + " ", False, None),
        ("x" * 1000, False, None),
    ],
)
def test_request_ids_must_be_hyphenated_uuids(
    key: str, valid: bool, normalised: str | None
) -> None:
    v = Validator()
    result = idempotency.check_key(v, "request_id", key)
    assert (not v.violations) is valid
    assert all(violation.field == "request_id" for violation in v.violations)
    if normalised is not None:
        assert result == normalised


def test_the_request_hash_separates_operations_and_requests() -> None:
    base = idempotency.request_hash("/svc/A", b"fields")
    assert len(base) == 64  # fits the request_hash column
    assert base == idempotency.request_hash("/svc/A", b"fields")
    assert base != idempotency.request_hash("/svc/B", b"fields")
    assert base != idempotency.request_hash("/svc/A", b"other")
    # The separator keeps operation and fields from running into each other.
    assert idempotency.request_hash("/svc/A", b"b") != idempotency.request_hash("/svc/Ab", b"")


def _stored(
    *,
    state: str,
    digest: str = "h",
    claimed: dt.timedelta = dt.timedelta(0),
    owner: str | None = None,
) -> IdempotencyKey:
    create_time = NOW - claimed
    return IdempotencyKey(
        principal="p",
        key=KEY,
        operation="/svc/A",
        request_hash=digest,
        state=state,
        response=b"r" if state == DONE else None,
        create_time=create_time,
        expire_time=create_time + KEY_TTL,
        owner=owner,
    )


SECOND = dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("stored", "digest", "verdict"),
    [
        (_stored(state=DONE), "h", Verdict.REPLAY),
        (_stored(state=DONE), "other", Verdict.REUSED),
        (_stored(state=IN_FLIGHT), "h", Verdict.IN_FLIGHT),
        (_stored(state=IN_FLIGHT), "other", Verdict.REUSED),
        (_stored(state=IN_FLIGHT, claimed=STALE_CLAIM_AFTER - SECOND), "h", Verdict.IN_FLIGHT),
        (_stored(state=IN_FLIGHT, claimed=STALE_CLAIM_AFTER), "h", Verdict.TAKE_OVER),
        # A stale claim for another request is still a reused key: it may have had effects.
        (_stored(state=IN_FLIGHT, claimed=STALE_CLAIM_AFTER), "other", Verdict.REUSED),
        # A done key is kept and replayed however old, until it expires.
        (_stored(state=DONE, claimed=KEY_TTL - SECOND), "h", Verdict.REPLAY),
        (_stored(state=DONE, claimed=KEY_TTL - SECOND), "other", Verdict.REUSED),
        # Expired keys count as never used.
        (_stored(state=DONE, claimed=KEY_TTL), "h", Verdict.TAKE_OVER),
        (_stored(state=DONE, claimed=KEY_TTL), "other", Verdict.TAKE_OVER),
        (_stored(state=IN_FLIGHT, claimed=KEY_TTL), "other", Verdict.TAKE_OVER),
    ],
)
def test_what_a_stored_key_means_for_a_new_call(
    stored: IdempotencyKey, digest: str, verdict: Verdict
) -> None:
    assert idempotency.judge(stored, digest=digest, now=NOW) is verdict


@pytest.mark.parametrize(
    ("stored", "digest", "dead", "verdict"),
    [
        # A fresh claim whose process died is taken over at once...
        (_stored(state=IN_FLIGHT, owner="a"), "h", {"a"}, Verdict.TAKE_OVER),
        # ...not while it lives, nor when it names no process (claimed outside a server).
        (_stored(state=IN_FLIGHT, owner="a"), "h", {"b"}, Verdict.IN_FLIGHT),
        (_stored(state=IN_FLIGHT), "h", {"a"}, Verdict.IN_FLIGHT),
        # A dead owner changes nothing about a done key or a reused one.
        (_stored(state=DONE, owner="a"), "h", {"a"}, Verdict.REPLAY),
        (_stored(state=IN_FLIGHT, owner="a"), "other", {"a"}, Verdict.REUSED),
    ],
)
def test_a_claim_of_a_dead_process_is_taken_over(
    stored: IdempotencyKey, digest: str, dead: set[str], verdict: Verdict
) -> None:
    assert idempotency.judge(stored, digest=digest, now=NOW, is_dead=dead.__contains__) is verdict
