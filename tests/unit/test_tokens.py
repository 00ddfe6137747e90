"""TokenService in isolation: what it issues, and the limits it refuses to be built with."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.domain.principal import Role
from server.domain.tokens import Keyring, TokenService
from server.errors import Unauthenticated


def service(**kwargs: int) -> TokenService:
    return TokenService(
        Keyring.of(Ed25519PrivateKey.generate()), issuer="iss", audience="aud", **kwargs
    )


def test_issued_token_round_trips_to_its_principal() -> None:
    tokens = service()
    issued = tokens.issue(subject="user-1", role=Role.STAFF, session_id="s-1")
    principal = tokens.verify(issued.token)
    assert (principal.subject, principal.role, principal.session_id) == (
        "user-1",
        Role.STAFF,
        "s-1",
    )
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "EdDSA" and header["kid"] == tokens.keyring.signing_kid


def test_service_tokens_carry_no_session() -> None:
    tokens = service()
    principal = tokens.verify(tokens.issue(subject="svc", role=Role.SERVICE).token)
    assert principal.is_service and principal.session_id is None


def test_a_token_from_another_keyring_is_refused() -> None:
    other = service().issue(subject="u", role=Role.CUSTOMER, session_id="s").token
    with pytest.raises(Unauthenticated):
        service().verify(other)


def test_expiry_respects_the_leeway() -> None:
    tokens = service(ttl_seconds=60, leeway_seconds=10)
    issued_at = 1_000_000.0
    token = tokens.issue(subject="u", role=Role.CUSTOMER, session_id="s", now=issued_at).token
    with pytest.raises(Unauthenticated) as caught:
        tokens.verify(token)  # issued long ago
    assert caught.value.reason == "TOKEN_EXPIRED"


def test_a_remembered_token_still_expires_on_time() -> None:
    tokens = service(ttl_seconds=1, leeway_seconds=0)
    time.sleep(1 - time.time() % 1)  # just past a whole second: the token lives ~1 s, not less
    issued = tokens.issue(subject="u", role=Role.CUSTOMER, session_id="s", now=time.time())
    expires = issued.expire_time.replace(tzinfo=dt.UTC).timestamp()
    assert tokens.verify(issued.token).subject == "u"
    assert tokens.verify(issued.token).subject == "u"  # remembered: no second check
    while time.time() < expires:
        time.sleep(0.05)
    with pytest.raises(Unauthenticated) as caught:
        tokens.verify(issued.token)
    assert caught.value.reason == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl_seconds": 901}, {"ttl_seconds": 0}, {"leeway_seconds": 31}, {"leeway_seconds": -1}],
)
def test_limits_cannot_be_configured_away(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        service(**kwargs)


def test_jwks_lists_the_signing_key_first_then_rotation_keys() -> None:
    old = Ed25519PrivateKey.generate()
    tokens = TokenService(
        Keyring.of(Ed25519PrivateKey.generate(), (old.public_key(),)), issuer="i", audience="a"
    )
    jwks = tokens.jwks()
    assert jwks[0]["kid"] == tokens.keyring.signing_kid
    assert len(jwks) == 2
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and k["alg"] == "EdDSA" for k in jwks)
