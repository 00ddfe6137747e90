"""Forged, broken and revoked access tokens are all UNAUTHENTICATED on a protected RPC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from storefront.v1 import identity_service_pb2 as pb

from server.domain.principal import Role
from tests.e2e.conftest import Running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Forge:
    """Signs tokens like the server does, from a real session's claims, with one thing changed."""

    def __init__(self, running: Running) -> None:
        client = running.login(Role.CUSTOMER)
        assert client.session is not None
        self.valid = client.session.access_token
        self.header = jwt.get_unverified_header(self.valid)
        self.claims = jwt.decode(self.valid, options={"verify_signature": False})
        path = running.app.settings.jwt_signing_key_file
        assert path is not None
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        self.key = key

    def sign(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: Any = None,
        algorithm: str = "EdDSA",
        kid: str | None = None,
    ) -> str:
        """Returns a token with `claims` (default: the real ones), signed with `key`."""
        headers = {"kid": self.header["kid"] if kid is None else kid}
        return jwt.encode(
            self.claims if claims is None else claims,
            key or self.key,
            algorithm=algorithm,
            headers=headers,
        )

    def with_claims(self, **changes: Any) -> str:
        """Returns a correctly signed token whose claims differ as given (None removes one)."""
        claims = {**self.claims, **changes}
        return self.sign({k: v for k, v in claims.items() if v is not None})


def _alg_none(f: Forge) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": f.header["kid"]}).encode())
    return f"{header}.{_b64(json.dumps(f.claims).encode())}."


def _hs256_with_public_key(f: Forge) -> str:
    # The classic key-confusion attack: HMAC keyed with the (public) verification key.
    public_pem = f.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": f.header["kid"]}).encode())
    payload = _b64(json.dumps(f.claims).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _tampered_payload(f: Forge) -> str:
    header, _, signature = f.valid.split(".")
    payload = _b64(json.dumps({**f.claims, "role": "ADMIN"}).encode())
    return f"{header}.{payload}.{signature}"


def _now() -> int:
    return int(time.time())


CASES: list[tuple[str, Callable[[Forge], str]]] = [
    ("alg none", _alg_none),
    ("HS256 signed with the public key", _hs256_with_public_key),
    ("unknown kid", lambda f: f.sign(key=Ed25519PrivateKey.generate(), kid="not-a-known-kid")),
    ("another key claiming our kid", lambda f: f.sign(key=Ed25519PrivateKey.generate())),
    ("expired", lambda f: f.with_claims(iat=_now() - 1000, nbf=_now() - 1000, exp=_now() - 100)),
    ("missing exp", lambda f: f.with_claims(exp=None)),
    ("missing iat", lambda f: f.with_claims(iat=None)),
    ("missing jti", lambda f: f.with_claims(jti=None)),
    ("missing sub", lambda f: f.with_claims(sub=None)),
    ("wrong aud", lambda f: f.with_claims(aud="someone-else")),
    ("wrong iss", lambda f: f.with_claims(iss="https://evil.example")),
    ("lifetime over 15 minutes", lambda f: f.with_claims(exp=f.claims["iat"] + 3600)),
    (
        "issued in the future",
        lambda f: f.with_claims(iat=_now() + 600, nbf=_now() + 600, exp=_now() + 1200),
    ),
    ("unknown role", lambda f: f.with_claims(role="ROOT")),
    (
        "session that does not exist",
        lambda f: f.with_claims(sid="00000000-0000-4000-8000-000000000000"),
    ),
    ("user token without session", lambda f: f.with_claims(sid=None)),
    ("tampered payload", _tampered_payload),
    ("not a JWT", lambda f: "not.a.jwt"),
    ("garbage", lambda f: "%%%"),
]


@pytest.mark.parametrize(("case", "make_token"), CASES, ids=[c[0] for c in CASES])
def test_bad_token_is_unauthenticated(
    running: Running, case: str, make_token: Callable[[Forge], str]
) -> None:
    forge = Forge(running)
    stub = running.client().identity
    # The genuine token works, so a failure below is the defect's doing.
    stub.GetCurrentUser(
        pb.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {forge.valid}"),)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCurrentUser(
            pb.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {make_token(forge)}"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, case


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token abc"])
def test_malformed_authorization_header_is_unauthenticated(running: Running, header: str) -> None:
    stub = running.client().identity
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=(("authorization", header),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_bad_token_is_refused_even_on_a_public_rpc(running: Running) -> None:
    stub = running.client().identity
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListSigningKeys(
            pb.ListSigningKeysRequest(), metadata=(("authorization", "Bearer not.a.jwt"),)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_from_a_rotated_out_key_stay_valid_while_listed(
    running: Running, server_factory: Callable[..., Running], tmp_path: Any
) -> None:
    """Rotation: a server signing with a new key still accepts tokens of the old one."""
    forge = Forge(running)
    old_public = tmp_path / "old-public.pem"
    old_public.write_bytes(
        forge.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    new_private = tmp_path / "new-private.pem"
    new_private.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rotated = server_factory(jwt_signing_key_file=new_private, jwt_verify_key_files=(old_public,))
    keys = rotated.client().identity.ListSigningKeys(pb.ListSigningKeysRequest()).keys
    assert len(keys) == 2 and forge.header["kid"] in {k.kid for k in keys[1:]}
    me = rotated.client().identity.GetCurrentUser(
        pb.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {forge.valid}"),)
    )
    assert me.user.id == forge.claims["sub"]
    new_token = rotated.login(Role.CUSTOMER).session
    assert new_token is not None
    assert jwt.get_unverified_header(new_token.access_token)["kid"] == keys[0].kid
