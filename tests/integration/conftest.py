"""Fixtures shared by the integration tests."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.domain.passwords import PasswordHasher
from server.domain.sessions import SessionPolicy
from server.domain.tokens import Keyring, TokenService


@pytest.fixture(scope="module")
def policy() -> SessionPolicy:
    """Sign-in rules with a fresh key and cheap argon2 parameters (the tests are about the
    rules, not the hash strength)."""
    tokens = TokenService(Keyring.of(Ed25519PrivateKey.generate()), issuer="i", audience="a")
    return SessionPolicy(
        tokens=tokens,
        passwords=PasswordHasher(concurrency=8, memory_cost_kib=1024, time_cost=1),
        refresh_ttl=dt.timedelta(days=1),
    )
