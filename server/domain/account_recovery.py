"""Account recovery and e-mail verification: single-use tokens sent by e-mail.

A token is the HMAC of a random id under a key derived from the deployment's secret; the database
holds only the token's SHA-256, never the token. The e-mail is stored with a marker in its place
and the dispatcher, which derives the token again from the id, writes it in as it sends: a copy
of the database (a backup, say) holds no usable token. Tokens never reach a log.

RequestPasswordReset answers the same whether or not the address has an account, and sends at
most MAX_PER_HOUR e-mails of a kind per account an hour. ResetPassword sets the password, uses
the token up, voids the account's other reset tokens and ends every session.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import uuid

from server.db import database, utcnow
from server.domain import emails, users
from server.domain.passwords import PasswordHasher
from server.domain.principal import Principal
from server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.models import session as session_model
from server.models import user as user_model
from server.models.account_token import AccountToken
from server.models.session import Session
from server.models.user import User
from server.validation import Validator

PASSWORD_RESET = "PASSWORD_RESET"  # noqa: S105 (a token purpose, not a password)
EMAIL_VERIFICATION = "EMAIL_VERIFICATION"
LIFETIMES = {
    PASSWORD_RESET: dt.timedelta(minutes=30),
    EMAIL_VERIFICATION: dt.timedelta(hours=24),
}
MAX_PER_HOUR = 3
TOKEN_MAX_LENGTH = 100
_MARKER = re.compile(r"\[\[account-token:([0-9a-f-]{36})\]\]")


class TokenKey:
    """Derives each account token from its id; one secret for every process of a deployment."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an account token secret is required")
        self.__key = hmac.new(secret, b"storefront account tokens", hashlib.sha256).digest()

    def token(self, token_id: str) -> str:
        """The token of `token_id`: 43 URL-safe characters."""
        digest = hmac.new(self.__key, token_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def expand(self, text: str) -> str:
        """`text` with each stored token marker replaced by its token (as an e-mail is sent)."""
        return _MARKER.sub(lambda match: self.token(match.group(1)), text)


def _marker(token_id: str) -> str:
    return f"[[account-token:{token_id}]]"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_password_reset(*, email: str, key: TokenKey) -> None:
    """E-mails a reset token to the account of `email`, if there is one (the answer is the same
    either way)."""
    v = Validator()
    address = users.validate_email(v, "email", email)
    v.raise_if_any()
    with database.atomic():
        user = User.get_or_none(User.email == address)
        if user is None or user.disabled:
            return
        _issue(user, PASSWORD_RESET, key, "Reset your storefront password", "password_reset")


def send_verification_email(*, principal: Principal, key: TokenKey) -> None:
    """E-mails the caller a token that verifies their address; FAILED_PRECONDITION
    (EMAIL_ALREADY_VERIFIED) when it is."""
    with database.atomic():
        user = users.get_or_raise(principal.subject)
        if user.email_verified:
            raise FailedPrecondition(
                "Your e-mail address is already verified.", reason="EMAIL_ALREADY_VERIFIED"
            )
        _issue(user, EMAIL_VERIFICATION, key, "Confirm your e-mail address", "email_verification")


def _issue(user: User, purpose: str, key: TokenKey, subject: str, template: str) -> None:
    """Stores a token and its e-mail, unless MAX_PER_HOUR were issued in the last hour (then
    nothing, silently: the answer must not tell). Call in a transaction."""
    now = utcnow()
    recent = (
        AccountToken.select()
        .where(
            (AccountToken.user_id == user.id)
            & (AccountToken.purpose == purpose)
            & (AccountToken.create_time > now - dt.timedelta(hours=1))
        )
        .count()
    )
    if recent >= MAX_PER_HOUR:
        return
    token_id = str(uuid.uuid4())
    lifetime = LIFETIMES[purpose]
    AccountToken.create(
        id=token_id,
        user_id=user.id,
        purpose=purpose,
        token_hash=_hash(key.token(token_id)),
        expire_time=now + lifetime,
        create_time=now,
    )
    emails.store(
        message_key=token_id,
        recipient=user.email,
        subject=subject,
        template=template,
        context={
            "name": user.display_name or user.email,
            "token": _marker(token_id),
            "minutes": int(lifetime.total_seconds() // 60),
        },
        now=now,
    )


def reset_password(*, token: str, new_password: str, passwords: PasswordHasher) -> None:
    """Sets the password of the token's account, uses the token up and ends every session."""
    v = Validator()
    _check_token(v, token)
    users.validate_password(v, "new_password", new_password)
    v.raise_if_any()
    new_hash = passwords.hash(new_password)
    now = utcnow()
    with database.atomic():
        found = _use(token, PASSWORD_RESET, now)
        (
            User.update(password_hash=new_hash, version=User.version + 1, update_time=now)
            .where(User.id == found.user_id)
            .execute()
        )
        # Every other reset token of the account is void too: one reset per request.
        AccountToken.update(use_time=now).where(
            (AccountToken.user_id == found.user_id)
            & (AccountToken.purpose == PASSWORD_RESET)
            & AccountToken.use_time.is_null()
        ).execute()
        user = User.get_by_id(found.user_id)
        user_model.clear_failures(email=user.email)
        session_model.revoke(Session.user == found.user_id, reason="PASSWORD_RESET", now=now)


def verify_email(*, token: str) -> User:
    """Marks the token's account's e-mail verified and uses the token up; returns the user."""
    v = Validator()
    _check_token(v, token)
    v.raise_if_any()
    now = utcnow()
    with database.atomic():
        found = _use(token, EMAIL_VERIFICATION, now)
        User.update(email_verified=True, version=User.version + 1, update_time=now).where(
            (User.id == found.user_id) & (User.email_verified == False)  # noqa: E712
        ).execute()
        return User.get_by_id(found.user_id)


def _check_token(v: Validator, token: str) -> None:
    # Never echoed: a token is a credential.
    if not token:
        v.add("token", "is required")
    elif len(token) > TOKEN_MAX_LENGTH:
        v.add("token", f"must be at most {TOKEN_MAX_LENGTH} characters")


def _use(token: str, purpose: str, now: dt.datetime) -> AccountToken:
    """Marks the live token of `purpose` used; INVALID_ARGUMENT (TOKEN_INVALID) when it is
    unknown, used or expired (one answer for all three)."""
    found = AccountToken.get_or_none(
        (AccountToken.token_hash == _hash(token)) & (AccountToken.purpose == purpose)
    )
    used = (
        found is not None
        and found.use_time is None
        and found.expire_time > now
        and AccountToken.update(use_time=now)
        .where((AccountToken.id == found.id) & AccountToken.use_time.is_null())
        .execute()
        == 1
    )
    if found is None or not used:
        raise InvalidArgument(
            "The token is unknown, used or expired; ask for a new one.",
            reason="TOKEN_INVALID",
            violations=[FieldViolation("token", "is unknown, used or expired")],
        )
    return found
