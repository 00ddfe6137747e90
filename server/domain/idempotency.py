"""Idempotency keys: a request_id makes a mutation run once per principal; retries replay it."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from server.db import database, utcnow
from server.domain import instances
from server.domain.commands import RequestKey
from server.errors import Aborted, FailedPrecondition
from server.models.idempotency_key import IdempotencyKey
from server.validation import Validator

# Rules, in one place:
# - Only a successful execute() is stored (state DONE, with the response it returned); a retry
#   with the same principal, key and request gets those bytes back without running anything.
# - Nothing else is stored. Invalid fields are refused before the key is claimed. When execute()
#   raises anything (InvalidArgument, NotFound, FailedPrecondition such as INSUFFICIENT_STOCK, a
#   database error, a bug), its transaction rolls back and the claim is deleted, so a retry runs
#   again and sees the state of the moment.
# - The response is stored in the same transaction as execute()'s own writes: either both commit
#   or neither, so a crash between them can never make a retry apply the change twice.
# - A claim is committed before execute() runs, so a concurrent duplicate finds it IN_FLIGHT
#   (ABORTED, REQUEST_IN_FLIGHT) instead of running alongside it. A claim names the process
#   instance that made it: once that instance is dead (instances.is_dead: killed, within
#   seconds), the claim may be taken over. A claim older than STALE_CLAIM_AFTER (a hung call, or
#   one made outside a serving process) may be taken over too.
# - The same key with a different request (operation or fields) is FAILED_PRECONDITION,
#   IDEMPOTENCY_KEY_REUSED, whether the first is done or in flight.
# - Keys live KEY_TTL from their claim; expired keys count as unused and are purged now and then.

KEY_TTL = dt.timedelta(hours=24)
STALE_CLAIM_AFTER = dt.timedelta(seconds=120)
PRINCIPAL_MAX_LENGTH = 64
OPERATION_MAX_LENGTH = 100

IN_FLIGHT = "IN_FLIGHT"
DONE = "DONE"
_CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Claim:
    """A key this call holds: identified by the claim time it wrote."""

    principal: str
    key: str
    claim_time: dt.datetime


def check_key(v: Validator, field: str, key: str) -> str:
    """Checks that `key` is a UUID (8-4-4-4-12 hex, any case); returns it lower-cased."""
    try:
        valid = len(key) == 36 and str(uuid.UUID(key)) == key.lower()
    except ValueError:
        valid = False
    if not key:
        v.add(field, "is required; send a new UUID for each request and reuse it on retries")
    elif not valid:
        v.add(field, "must be a UUID such as 123e4567-e89b-42d3-a456-426614174000")
    return key.lower()


def key_reused() -> FailedPrecondition:
    """The error for a request_id already used for a different request."""
    return FailedPrecondition(
        "This request_id was already used for a different request; send a new request_id.",
        reason="IDEMPOTENCY_KEY_REUSED",
    )


def request_hash(operation: str, request_fingerprint: bytes) -> str:
    """Returns the hex digest that identifies one request to one operation."""
    return hashlib.sha256(operation.encode() + b"\x00" + request_fingerprint).hexdigest()


class Verdict(enum.Enum):
    """What a call does about a key that is already stored."""

    REPLAY = "replay"  # done, same request: return the stored response
    REUSED = "reused"  # same key, different request: FAILED_PRECONDITION
    IN_FLIGHT = "in_flight"  # the first call is still running: ABORTED
    TAKE_OVER = "take_over"  # expired, or a claim whose call died: claim it anew


def _never(owner: str) -> bool:
    return False


def judge(
    existing: IdempotencyKey,
    *,
    digest: str,
    now: dt.datetime,
    is_dead: Callable[[str], bool] = _never,
) -> Verdict:
    """Returns what a call with request hash `digest` does about the stored key `existing`;
    `is_dead(owner)` tells whether the instance that claimed it has died."""
    if existing.expire_time <= now:
        return Verdict.TAKE_OVER
    if existing.request_hash != digest:
        return Verdict.REUSED
    if existing.state == DONE:
        return Verdict.REPLAY
    if existing.create_time <= now - STALE_CLAIM_AFTER:
        return Verdict.TAKE_OVER
    if existing.owner is not None and is_dead(existing.owner):
        return Verdict.TAKE_OVER
    return Verdict.IN_FLIGHT


def begin(
    *,
    principal: str,
    key: str,
    operation: str,
    request_fingerprint: bytes,
    validate: Callable[[Validator], None] | None = None,
) -> Claim | bytes:
    """Validates the request and claims its key in a committed transaction of its own.

    Returns the claim, which the caller must `complete` inside the transaction that makes the
    change or `abandon` when the change fails; or the stored response of an earlier call. Raises
    InvalidArgument (nothing claimed), FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED, or ABORTED
    REQUEST_IN_FLIGHT. `validate` may add the request's other field violations, so that every
    invalid field is reported together. Call it outside any transaction.
    """
    if database.in_transaction():
        raise RuntimeError("an idempotency key must be claimed outside a transaction")
    if not principal or len(principal) > PRINCIPAL_MAX_LENGTH:
        raise ValueError("an idempotency principal is 1 to 64 characters")
    if not operation or len(operation) > OPERATION_MAX_LENGTH:
        raise ValueError("an idempotency operation is 1 to 100 characters")
    v = Validator()
    key = check_key(v, "request_id", key)
    if validate is not None:
        validate(v)
    v.raise_if_any()

    digest = request_hash(operation, request_fingerprint)
    claimed = _claim(principal, key, operation, digest, utcnow())
    return claimed


def complete(claim: Claim, response: bytes) -> None:
    """Stores the response under the claim; call inside the transaction that made the change.

    Raises ABORTED (REQUEST_IN_FLIGHT) if the claim went stale and another call took the key
    over: the caller's transaction must then roll back, so only the other call's change stands.
    """
    if not database.in_transaction():
        raise RuntimeError("complete() must run in the transaction that makes the change")
    stored = (
        IdempotencyKey.update(state=DONE, response=response)
        .where(_is_claim(claim) & (IdempotencyKey.state == IN_FLIGHT))
        .execute()
    )
    if stored != 1:
        raise Aborted(
            "A retry with the same request_id took over this request; its outcome stands.",
            reason="REQUEST_IN_FLIGHT",
        )


def abandon(claim: Claim) -> None:
    """Deletes this call's claim so that a retry runs again; best effort (a claim left behind
    goes stale and is taken over)."""
    with contextlib.suppress(peewee.PeeweeException):
        _forget(claim)


def run_once(
    *,
    principal: str,
    key: str,
    operation: str,
    request_fingerprint: bytes,
    execute: Callable[[], bytes],
    validate: Callable[[Validator], None] | None = None,
) -> bytes:
    """Runs `execute` once per (principal, key) and returns its response, or the stored one.

    `execute` runs in one transaction with the storing of its response (see `begin` for the
    rest). Call it outside any transaction: the claim must be committed before `execute` runs.
    """
    claimed = begin(
        principal=principal,
        key=key,
        operation=operation,
        request_fingerprint=request_fingerprint,
        validate=validate,
    )
    if isinstance(claimed, bytes):
        return claimed
    try:
        with database.atomic():
            response = execute()
            complete(claimed, response)  # rolls back this call's writes if it was taken over
    except BaseException:
        abandon(claimed)
        raise
    return response


def run_once_for_id(
    *,
    principal: str,
    operation: str,
    request: RequestKey,
    execute: Callable[[], str],
    validate: Callable[[Validator], None] | None = None,
) -> str:
    """`run_once` for a use case whose response is an id (or another short text): returns the
    id `execute` returned, or the one stored by the first call with this key."""
    return run_once(
        principal=principal,
        key=request.request_id,
        operation=operation,
        request_fingerprint=request.fingerprint,
        execute=lambda: execute().encode(),
        validate=validate,
    ).decode()


def _claim(
    principal: str, key: str, operation: str, digest: str, now: dt.datetime
) -> Claim | bytes:
    """Claims the key in its own committed transaction; returns the claim or a stored response."""
    owner = instances.current()
    for _ in range(_CLAIM_ATTEMPTS):
        with database.atomic():
            # The primary key decides a race between duplicates on both engines: one INSERT
            # lands, the others find its row (PostgreSQL makes them wait for its commit).
            inserted = (
                IdempotencyKey.insert(
                    principal=principal,
                    key=key,
                    operation=operation,
                    request_hash=digest,
                    state=IN_FLIGHT,
                    response=None,
                    create_time=now,
                    expire_time=now + KEY_TTL,
                    owner=owner,
                )
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
            if inserted == 1:
                return Claim(principal, key, now)
            existing = IdempotencyKey.get_or_none(
                (IdempotencyKey.principal == principal) & (IdempotencyKey.key == key)
            )
            if existing is None:
                continue  # a failed first call deleted its claim between the INSERT and the read
            verdict = judge(
                existing,
                digest=digest,
                now=now,
                is_dead=lambda claimant: instances.is_dead(claimant, now),
            )
            if verdict is Verdict.REUSED:
                raise key_reused()
            if verdict is Verdict.REPLAY:
                assert existing.response is not None  # DONE always stores the response
                return bytes(existing.response)
            if verdict is Verdict.IN_FLIGHT:
                raise Aborted(
                    "The first request with this request_id is still running; retry later.",
                    reason="REQUEST_IN_FLIGHT",
                )
            # Compare-and-set on the stored claim time: of several callers taking over, one wins.
            taken = (
                IdempotencyKey.update(
                    operation=operation,
                    request_hash=digest,
                    state=IN_FLIGHT,
                    response=None,
                    create_time=now,
                    expire_time=now + KEY_TTL,
                    owner=owner,
                )
                .where(
                    (IdempotencyKey.principal == principal)
                    & (IdempotencyKey.key == key)
                    & (IdempotencyKey.create_time == existing.create_time)
                )
                .execute()
            )
            if taken == 1:
                return Claim(principal, key, now)
    # Only reachable if the key is deleted and re-created between statements again and again.
    raise Aborted("The request_id is contended; retry later.", reason="REQUEST_IN_FLIGHT")


def _is_claim(claim: Claim) -> Any:
    return (
        (IdempotencyKey.principal == claim.principal)
        & (IdempotencyKey.key == claim.key)
        & (IdempotencyKey.create_time == claim.claim_time)
    )


def _forget(claim: Claim) -> None:
    """Deletes this call's claim (not one another call has taken over since)."""
    with database.atomic():
        (
            IdempotencyKey.delete()
            .where(_is_claim(claim) & (IdempotencyKey.state == IN_FLIGHT))
            .execute()
        )


def purge_expired(now: dt.datetime) -> int:
    """Deletes the keys whose time is up; returns how many."""
    with database.atomic():
        return int(IdempotencyKey.delete().where(IdempotencyKey.expire_time <= now).execute())
