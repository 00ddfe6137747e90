"""Access tokens: Ed25519-signed JWTs with key ids, issued and verified without the database."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.domain import key_files
from server.domain.memo import BoundedMemo
from server.domain.principal import Principal, Role
from server.errors import Unauthenticated

ALGORITHM = "EdDSA"
MAX_ACCESS_TOKEN_TTL_SECONDS = 900
MAX_LEEWAY_SECONDS = 30
# Verified tokens remembered per process (see TokenService.verify): about 400 bytes each.
VERIFIED_TOKENS_KEPT = 10_000
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti")
# Every rejection reads the same: which check failed is for the server log, not the caller.
INVALID_TOKEN = "The access token is invalid or expired."  # noqa: S105


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class VerificationKey:
    """A public key that verifies tokens, with its RFC 7638 thumbprint as key id."""

    kid: str
    public_key: Ed25519PublicKey

    @classmethod
    def of(cls, public_key: Ed25519PublicKey) -> VerificationKey:
        """Wraps `public_key`, deriving its key id."""
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        canonical = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)},
            separators=(",", ":"),
            sort_keys=True,
        )
        return cls(_b64url(hashlib.sha256(canonical.encode()).digest()), public_key)

    def jwk(self) -> dict[str, str]:
        """Returns the key as a public JSON Web Key."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


@dataclass(frozen=True)
class Keyring:
    """The signing key and every key tokens are still accepted from (rotation)."""

    signing_key: Ed25519PrivateKey
    signing_kid: str
    verification_keys: dict[str, VerificationKey]

    @classmethod
    def of(
        cls, signing_key: Ed25519PrivateKey, extra_public_keys: tuple[Ed25519PublicKey, ...] = ()
    ) -> Keyring:
        """Builds a keyring signing with `signing_key` and also accepting `extra_public_keys`."""
        own = VerificationKey.of(signing_key.public_key())
        keys = {own.kid: own}
        for public in extra_public_keys:
            key = VerificationKey.of(public)
            keys[key.kid] = key
        return cls(signing_key, own.kid, keys)


def generate_private_key_pem() -> bytes:
    """Returns a new Ed25519 private key as unencrypted PKCS#8 PEM."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_keyring(
    signing_key_file: Path, verify_key_files: tuple[Path, ...] = (), *, generate_if_missing: bool
) -> Keyring:
    """Loads the signing key (generating it in development) and the extra verification keys."""
    if generate_if_missing:
        pem = key_files.load_or_create(signing_key_file, generate_private_key_pem)
    else:
        pem = signing_key_file.read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"{signing_key_file} is not an Ed25519 private key")
    extras: list[Ed25519PublicKey] = []
    for path in verify_key_files:
        public = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        extras.append(public)
    return Keyring.of(private, tuple(extras))


@dataclass(frozen=True)
class IssuedToken:
    """A signed access token and when it expires."""

    token: str
    expire_time: dt.datetime


class TokenService:
    """Issues and verifies access tokens for one issuer and audience."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int = MAX_ACCESS_TOKEN_TTL_SECONDS,
        leeway_seconds: int = 10,
    ) -> None:
        if not 0 < ttl_seconds <= MAX_ACCESS_TOKEN_TTL_SECONDS:
            raise ValueError(f"access token TTL must be 1..{MAX_ACCESS_TOKEN_TTL_SECONDS} s")
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"token leeway must be 0..{MAX_LEEWAY_SECONDS} s")
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self.leeway_seconds = leeway_seconds
        # token -> (its principal, the time.time() until which jwt.decode would accept it)
        self._verified: BoundedMemo[str, tuple[Principal, float]] = BoundedMemo(
            VERIFIED_TOKENS_KEPT
        )

    def issue(
        self, *, subject: str, role: Role, session_id: str | None = None, now: float | None = None
    ) -> IssuedToken:
        """Returns a new signed access token for the subject."""
        issued_at = int(time.time() if now is None else now)
        expires = issued_at + self.ttl_seconds
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires,
            "jti": str(uuid.uuid4()),
            "role": role.value,
        }
        if session_id is not None:
            claims["sid"] = session_id
        token = jwt.encode(
            claims,
            self.keyring.signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self.keyring.signing_kid, "typ": "at+jwt"},
        )
        return IssuedToken(token, dt.datetime.fromtimestamp(expires, dt.UTC).replace(tzinfo=None))

    def verify(self, token: str) -> Principal:
        """Returns the principal the token names; raises Unauthenticated for any defect.

        A token that verified once is remembered until it expires (the last VERIFIED_TOKENS_KEPT
        of them): a client sends the same token on every call for its lifetime, and checking
        its signature and claims again gives the same answer until then. Only the token's own
        contents are remembered; whether its session is still live is checked on every call
        (sessions.authorize), so revocation still takes effect at once.
        """
        known = self._verified.get(token)
        if known is not None and time.time() < known[1]:
            return known[0]
        principal, expires = self._verified_principal(token)
        self._verified.put(token, (principal, expires + self.leeway_seconds))
        return principal

    def _verified_principal(self, token: str) -> tuple[Principal, int]:
        """Checks the token in full; returns its principal and expiry (`exp`)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN") from None
        # The algorithm allow-list is one entry long: "none", HS256 and every other alg fail here,
        # before any key is chosen.
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN")
        key = self.keyring.verification_keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN")
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(INVALID_TOKEN, reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN") from None
        return self._principal(claims), claims["exp"]

    def _principal(self, claims: dict[str, Any]) -> Principal:
        exp, iat = claims.get("exp"), claims.get("iat")
        # A token living longer than our maximum was not minted by us, whatever its signature.
        if (
            not isinstance(exp, int)
            or not isinstance(iat, int)
            or exp - iat > MAX_ACCESS_TOKEN_TTL_SECONDS
        ):
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN")
        try:
            role = Role(str(claims.get("role")))
        except ValueError:
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN") from None
        session_id = claims.get("sid")
        if (
            (role is Role.SERVICE) != (session_id is None)
            or not isinstance(claims["sub"], str)
            or not isinstance(claims["jti"], str)
        ):
            raise Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN")
        return Principal(
            subject=claims["sub"], role=role, token_id=claims["jti"], session_id=session_id
        )

    def jwks(self) -> list[dict[str, str]]:
        """Returns every accepted public key as a JWK, the signing key first."""
        keys = self.keyring.verification_keys
        ordered = [keys[self.keyring.signing_kid]] + [
            k for kid, k in keys.items() if kid != self.keyring.signing_kid
        ]
        return [k.jwk() for k in ordered]
