"""Authentication and authorisation: enforces each RPC's `storefront.v1.access` option."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from storefront.v1 import access_pb2

from server.domain.principal import Principal, Role
from server.domain.tokens import TokenService
from server.errors import PermissionDenied, Unauthenticated
from server.interceptors.base import Call, MethodInfo, ScopeInterceptor

# Infrastructure every operator tool calls without a token; listed here, in one visible place.
PUBLIC_INFRASTRUCTURE_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
MAX_AUTHORIZATION_LENGTH = 8192

_ROLES = {
    access_pb2.ROLE_CUSTOMER: Role.CUSTOMER,
    access_pb2.ROLE_STAFF: Role.STAFF,
    access_pb2.ROLE_ADMIN: Role.ADMIN,
    access_pb2.ROLE_SERVICE: Role.SERVICE,
}


class MissingAccessRule(Exception):
    """An RPC is served without a `storefront.v1.access` option; the server must not start."""


@dataclass(frozen=True)
class AccessRule:
    """Who may call one RPC, as its proto option declares."""

    public: bool
    roles: frozenset[Role]
    owner_only: bool

    def allows(self, principal: Principal | None) -> bool:
        """Whether `principal` (None for anonymous) may call the RPC."""
        return self.public or (principal is not None and principal.role in self.roles)


def access_rules(services: Iterable[ServiceDescriptor]) -> dict[str, AccessRule]:
    """Reads every method's access option; raises MissingAccessRule if one has none."""
    rules: dict[str, AccessRule] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(access_pb2.access):
                raise MissingAccessRule(
                    f"{service.full_name}.{method.name} has no (storefront.v1.access) option"
                )
            rule = options.Extensions[access_pb2.access]
            roles = frozenset(_ROLES[r] for r in rule.roles if r in _ROLES)
            if not rule.public and not roles:
                raise MissingAccessRule(
                    f"{service.full_name}.{method.name} is neither public nor open to any role"
                )
            rules[f"/{service.full_name}/{method.name}"] = AccessRule(
                rule.public, roles, rule.owner_only
            )
    return rules


def bearer_token(context: grpc.ServicerContext) -> str | None:
    """Returns the token of an `authorization: Bearer <token>` header, None if there is none."""
    for key, value in context.invocation_metadata() or ():
        if key != "authorization":
            continue
        if not isinstance(value, str) or len(value) > MAX_AUTHORIZATION_LENGTH:
            raise Unauthenticated("The authorization header is malformed.", reason="INVALID_TOKEN")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "The authorization header must be 'Bearer <token>'.", reason="INVALID_TOKEN"
            )
        return token.strip()
    return None


class AuthInterceptor(ScopeInterceptor):
    """Verifies the bearer token, checks its session is live, then the RPC's access rule.

    Deny by default: an RPC with no rule is refused, whatever the token.
    """

    def __init__(
        self,
        rules: Mapping[str, AccessRule],
        tokens: TokenService,
        authorize: Callable[[Principal], Principal],
    ) -> None:
        self.rules = rules
        self.tokens = tokens
        self.authorize = authorize

    def applies_to(self, method: MethodInfo) -> bool:
        return method.service not in PUBLIC_INFRASTRUCTURE_SERVICES

    def enter(self, call: Call) -> None:
        rule = self.rules.get(call.method.full_name)
        if rule is None:
            raise PermissionDenied("This method is not available.", reason="NO_ACCESS_RULE")
        token = bearer_token(call.context)
        principal: Principal | None = None
        if token is not None:
            principal = self.authorize(self.tokens.verify(token))
        elif not rule.public:
            raise Unauthenticated("This call needs an access token.", reason="MISSING_TOKEN")
        if not rule.allows(principal):
            raise PermissionDenied("Your role may not call this method.", reason="ROLE_NOT_ALLOWED")
        if call.info is not None:
            call.info.principal = principal
