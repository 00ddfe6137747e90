"""IdentityServicer methods that need no database or interceptor, with grpc_testing."""

from __future__ import annotations

import datetime as dt

import grpc
import grpc_testing
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from storefront.v1 import identity_service_pb2 as pb

from server.domain import account_recovery
from server.domain.page_tokens import PageTokenSigner
from server.domain.passwords import PasswordHasher
from server.domain.principal import Role
from server.domain.sessions import SessionPolicy
from server.domain.tokens import Keyring, TokenService
from server.services.identity_service import IdentityServicer

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"]


def test_list_signing_keys_publishes_keys_that_verify_issued_tokens() -> None:
    old = Ed25519PrivateKey.generate()
    tokens = TokenService(
        Keyring.of(Ed25519PrivateKey.generate(), (old.public_key(),)),
        issuer="storefront",
        audience="shop",
    )
    servicer = IdentityServicer(
        SessionPolicy(tokens=tokens, passwords=PasswordHasher(), refresh_ttl=dt.timedelta(1)),
        pages=PageTokenSigner(b"s" * 32),
        account_tokens=account_recovery.TokenKey(b"s" * 32),
    )
    server = grpc_testing.server_from_dictionary(
        {SERVICE: servicer}, grpc_testing.strict_real_time()
    )
    call = server.invoke_unary_unary(
        SERVICE.methods_by_name["ListSigningKeys"], (), pb.ListSigningKeysRequest(), None
    )
    response, _, code, _ = call.termination()
    assert code == grpc.StatusCode.OK
    assert (response.issuer, response.audience) == ("storefront", "shop")
    assert len(response.keys) == 2

    token = tokens.issue(subject="u", role=Role.CUSTOMER, session_id="s").token
    signing = response.keys[0]
    assert jwt.get_unverified_header(token)["kid"] == signing.kid
    key = jwt.PyJWK({"kty": signing.kty, "crv": signing.crv, "x": signing.x}).key
    assert jwt.decode(token, key, algorithms=[signing.alg], audience="shop")["sub"] == "u"
