"""Sessions: sign-in with throttling, refresh-token rotation, logout and password change."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import uuid
from dataclasses import dataclass

from server.db import database, lock_transaction_on, utcnow
from server.domain import users
from server.domain.passwords import MAX_PASSWORD_LENGTH, PasswordHasher
from server.domain.principal import Principal, Role
from server.domain.tokens import IssuedToken, TokenService
from server.errors import FieldViolation, InvalidArgument, ResourceExhausted, Unauthenticated
from server.models import session as session_model
from server.models import user as user_model
from server.models.service_account import is_enabled as service_account_enabled
from server.models.session import RefreshToken, Session
from server.models.user import User
from server.validation import Validator, has_control_characters

# Failed sign-ins allowed per window: per email and address, per address, per email.
LOGIN_FAILURE_LIMIT = 5
ADDRESS_FAILURE_LIMIT = 50
EMAIL_FAILURE_LIMIT = 100
LOGIN_FAILURE_WINDOW = dt.timedelta(minutes=15)
# The same words for an unknown email, a wrong password and a disabled account, so the answer
# does not reveal which accounts exist.
BAD_CREDENTIALS = "The email or password is incorrect."
INVALID_SESSION = "The session has ended; sign in again."


@dataclass(frozen=True)
class SessionTokens:
    """What a client holds for one session: an access token and the next refresh token."""

    access: IssuedToken
    refresh_token: str
    refresh_expire_time: dt.datetime


@dataclass(frozen=True)
class SessionPolicy:
    """How sessions are minted: token service, password hasher, refresh-token lifetime."""

    tokens: TokenService
    passwords: PasswordHasher
    refresh_ttl: dt.timedelta


def _hash_token(token: str) -> str:
    # Refresh tokens carry 256 random bits, so a fast hash is enough to make a stolen table
    # useless; argon2 would only add latency.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_refresh_token(session_id: str, now: dt.datetime) -> str:
    token = secrets.token_urlsafe(32)
    RefreshToken.create(token_hash=_hash_token(token), session=session_id, create_time=now)
    return token


def _start_session(user: User, policy: SessionPolicy, now: dt.datetime) -> SessionTokens:
    """Creates a session with its first refresh token; call inside a transaction."""
    session = Session.create(
        id=str(uuid.uuid4()), user=user.id, create_time=now, expire_time=now + policy.refresh_ttl
    )
    refresh = _new_refresh_token(session.id, now)
    access = policy.tokens.issue(subject=user.id, role=Role(user.role), session_id=session.id)
    return SessionTokens(access, refresh, session.expire_time)


@dataclass(frozen=True)
class _FailureLimit:
    """At most `limit` failed sign-ins per window for failures matching the email and/or address."""

    limit: int
    by_email: bool
    by_address: bool


# The tight limit is per (email, address): guesses from one place cannot lock the owner out
# elsewhere. The per-address limit stops one place guessing across many accounts; the
# per-email ceiling, far higher, stops guessing one account from many places (an admin can
# clear it with ClearSignInThrottle if that locks the owner out).
FAILURE_LIMITS = (
    _FailureLimit(LOGIN_FAILURE_LIMIT, by_email=True, by_address=True),
    _FailureLimit(ADDRESS_FAILURE_LIMIT, by_email=False, by_address=True),
    _FailureLimit(EMAIL_FAILURE_LIMIT, by_email=True, by_address=False),
)


def _throttled_attempt(email: str, client_address: str, now: dt.datetime) -> None:
    """Counts an attempt for `email` from `client_address` as failed until it succeeds; raises
    if any of FAILURE_LIMITS is reached.

    Count and record happen in one transaction serialised per address and per email (locks
    always taken in that order), so concurrent guesses cannot slip past a limit together.
    """
    since = now - LOGIN_FAILURE_WINDOW
    with database.atomic():
        lock_transaction_on(f"login-address:{client_address}")
        lock_transaction_on(f"login:{email}")
        user_model.clear_failures(email=email, before=since)
        user_model.clear_failures(client_address=client_address, before=since)
        for rule in FAILURE_LIMITS:
            count, oldest = user_model.recent_failures(
                since=since,
                email=email if rule.by_email else None,
                client_address=client_address if rule.by_address else None,
            )
            if count >= rule.limit:
                # Refused attempts are not recorded: the window closes on time, however hard an
                # attacker keeps trying.
                wait = (
                    LOGIN_FAILURE_WINDOW if oldest is None else oldest + LOGIN_FAILURE_WINDOW - now
                )
                seconds = max(wait.total_seconds(), 1.0)
                raise ResourceExhausted(
                    "Too many failed sign-in attempts; try again later.",
                    reason="LOGIN_THROTTLED",
                    metadata={"retry_after_seconds": str(math.ceil(seconds))},
                    retry_delay_seconds=seconds,
                )
        user_model.record_failure(email, client_address)


def clear_sign_in_throttle(*, email: str) -> int:
    """Forgets every failed sign-in recorded for `email`, from every address; returns how many."""
    v = Validator()
    email = users.normalize_email(email)
    _validate_email(v, email)
    v.raise_if_any()
    with database.atomic():
        lock_transaction_on(f"login:{email}")
        return user_model.clear_failures(email=email)


def _validate_email(v: Validator, email: str) -> None:
    v.check(bool(email), "email", "is required")
    v.check(len(email) <= user_model.EMAIL_MAX_LENGTH, "email", "is too long")
    v.check(not has_control_characters(email), "email", "must not contain control characters")


def login(
    *, email: str, password: str, policy: SessionPolicy, client_address: str = ""
) -> tuple[User, SessionTokens]:
    """Signs a user in; raises Unauthenticated (one message for every cause) or throttles.

    Failures are counted per email and `client_address` (the caller's IP; "" when unknown).
    """
    v = Validator()
    email = users.normalize_email(email)
    _validate_email(v, email)
    v.check(bool(password), "password", "is required")
    v.check(len(password) <= 1024, "password", "is too long")
    v.raise_if_any()
    _throttled_attempt(email, client_address, utcnow())
    user = user_model.get_by_email(email)
    if user is None:
        policy.passwords.verify_nothing(password)
        raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
    if not policy.passwords.verify(user.password_hash, password) or user.disabled:
        raise Unauthenticated(BAD_CREDENTIALS, reason="INVALID_CREDENTIALS")
    # Only this address's failures: other places' guesses still count towards their limits.
    user_model.clear_failures(email=email, client_address=client_address)
    now = utcnow()
    with database.atomic():
        if policy.passwords.needs_rehash(user.password_hash):
            (
                User.update(password_hash=policy.passwords.hash(password))
                .where(User.id == user.id)
                .execute()
            )
        return user, _start_session(user, policy, now)


def refresh(*, refresh_token: str, policy: SessionPolicy) -> SessionTokens:
    """Exchanges a refresh token for the next pair; a reused token revokes its whole session."""
    v = Validator()
    v.check(bool(refresh_token), "refresh_token", "is required")
    v.check(len(refresh_token) <= 256, "refresh_token", "is too long")
    v.raise_if_any()
    now = utcnow()
    token_hash = _hash_token(refresh_token)
    with database.atomic():
        stored = RefreshToken.get_or_none(RefreshToken.token_hash == token_hash)
        if stored is None:
            raise Unauthenticated(INVALID_SESSION, reason="INVALID_REFRESH_TOKEN")
        # Guarded update: of two concurrent exchanges of one token exactly one wins.
        first_use = (
            RefreshToken.update(use_time=now)
            .where((RefreshToken.token_hash == token_hash) & RefreshToken.use_time.is_null())
            .execute()
        ) == 1
        if first_use:
            session = session_model.live_session(session_id=stored.session_id, now=now)
            if session is not None:
                next_token = _new_refresh_token(session.id, now)
                access = policy.tokens.issue(
                    subject=session.user.id, role=Role(session.user.role), session_id=session.id
                )
                return SessionTokens(access, next_token, session.expire_time)
        else:
            # A second use means the token was copied: end the session for every holder.
            session_model.revoke(
                Session.id == stored.session_id, reason="REFRESH_TOKEN_REUSE", now=now
            )
    # Raised outside the transaction so the reuse revocation above is committed.
    raise Unauthenticated(INVALID_SESSION, reason="INVALID_REFRESH_TOKEN")


def logout(*, principal: Principal, all_sessions: bool) -> int:
    """Ends the caller's current session, or all of them; returns how many were live."""
    condition = (
        (Session.user == principal.subject)
        if all_sessions
        else (Session.id == principal.session_id)
    )
    with database.atomic():
        return session_model.revoke(condition, reason="LOGOUT", now=utcnow())


def change_password(
    *,
    principal: Principal,
    current_password: str,
    new_password: str,
    policy: SessionPolicy,
    client_address: str = "",
) -> SessionTokens:
    """Replaces the caller's password, ends every session and starts a new one.

    Wrong current passwords count as failed sign-ins for the user's email from `client_address`.
    """
    v = Validator()
    if not current_password:
        v.add("current_password", "is required")
    elif len(current_password) > MAX_PASSWORD_LENGTH:
        # No password is ever set longer, and hashing a huge value would be a cheap way to burn CPU.
        v.add("current_password", f"must be at most {MAX_PASSWORD_LENGTH} characters")
    users.validate_password(v, "new_password", new_password)
    v.check(new_password != current_password, "new_password", "must differ from the current one")
    v.raise_if_any()
    user = users.get_or_raise(principal.subject)
    # Wrong current passwords count against the same limit as failed sign-ins, so a stolen access
    # token cannot be used to guess the password either.
    _throttled_attempt(user.email, client_address, utcnow())
    if not policy.passwords.verify(user.password_hash, current_password):
        raise InvalidArgument(
            "The current password is incorrect.",
            reason="INVALID_CURRENT_PASSWORD",
            violations=[FieldViolation("current_password", "is incorrect")],
        )
    user_model.clear_failures(email=user.email, client_address=client_address)
    new_hash = policy.passwords.hash(new_password)
    now = utcnow()
    with database.atomic():
        (
            User.update(password_hash=new_hash, version=User.version + 1, update_time=now)
            .where(User.id == user.id)
            .execute()
        )
        session_model.revoke(Session.user == user.id, reason="PASSWORD_CHANGED", now=now)
        return _start_session(user, policy, now)


def authorize(principal: Principal) -> Principal:
    """Returns the principal with its current role if its session or account is still live.

    Access tokens are checked against the database on every call, so logout, password change,
    disabling and role changes take effect at once rather than when the token expires.
    """
    if principal.is_service:
        if not service_account_enabled(principal.subject):
            raise Unauthenticated(INVALID_SESSION, reason="SESSION_REVOKED")
        return principal
    assert principal.session_id is not None
    role_name = session_model.live_session_role(
        session_id=principal.session_id, user_id=principal.subject, now=utcnow()
    )
    if role_name is None:
        raise Unauthenticated(INVALID_SESSION, reason="SESSION_REVOKED")
    role = Role(role_name)
    if role is principal.role:
        return principal
    return Principal(
        subject=principal.subject,
        role=role,
        token_id=principal.token_id,
        session_id=principal.session_id,
    )
