"""Service accounts: creation and the client-credentials exchange for SERVICE tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from server.db import database, utcnow
from server.domain.principal import Principal, Role
from server.domain.tokens import IssuedToken, TokenService
from server.errors import Unauthenticated
from server.models import service_account as service_account_model
from server.models.service_account import ServiceAccount
from server.validation import Validator

DISPLAY_NAME_MAX_LENGTH = 100
BAD_CLIENT_CREDENTIALS = "The client credentials are incorrect."
# Compared against when the client id is unknown, so both failures take the same path.
_UNKNOWN_CLIENT_HASH = hashlib.sha256(b"storefront-unknown-client").hexdigest()


def _hash_secret(secret: str) -> str:
    # Client secrets are 256 random bits: a fast hash suffices (nothing to brute-force).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create(*, actor: Principal, display_name: str) -> tuple[ServiceAccount, str]:
    """Creates a service account; returns it and its client secret (shown once)."""
    v = Validator()
    name = v.text("display_name", display_name, DISPLAY_NAME_MAX_LENGTH)
    v.raise_if_any()
    secret = secrets.token_urlsafe(32)
    with database.atomic():
        account = ServiceAccount.create(
            id=str(uuid.uuid4()),
            client_id=f"sa-{secrets.token_hex(12)}",
            secret_hash=_hash_secret(secret),
            display_name=name,
            created_by=actor.subject,
            create_time=utcnow(),
        )
    return account, secret


def issue_token(*, client_id: str, client_secret: str, tokens: TokenService) -> IssuedToken:
    """Exchanges client credentials for a SERVICE access token."""
    v = Validator()
    v.check(bool(client_id), "client_id", "is required")
    v.check(
        len(client_id) <= 64 and client_id.isascii() and client_id.isprintable(),
        "client_id",
        "must be at most 64 printable ASCII characters",
    )
    v.check(bool(client_secret), "client_secret", "is required")
    v.check(len(client_secret) <= 256, "client_secret", "is too long")
    v.raise_if_any()
    account = service_account_model.get_by_client_id(client_id)
    expected = account.secret_hash if account is not None else _UNKNOWN_CLIENT_HASH
    matches = hmac.compare_digest(expected, _hash_secret(client_secret))
    if account is None or not matches or account.disabled:
        raise Unauthenticated(BAD_CLIENT_CREDENTIALS, reason="INVALID_CLIENT_CREDENTIALS")
    return tokens.issue(subject=account.id, role=Role.SERVICE)
