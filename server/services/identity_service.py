"""IdentityService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import identity_service_pb2, identity_service_pb2_grpc

from server import call_context
from server.domain import account_recovery, service_accounts, sessions, users
from server.domain.page_tokens import PageTokenSigner
from server.domain.principal import Role
from server.domain.sessions import SessionPolicy, SessionTokens
from server.domain.tokens import IssuedToken
from server.models.service_account import ServiceAccount
from server.models.user import User
from server.services.converters import ROLE_FROM_PROTO, ROLE_TO_PROTO, page_request, timestamp

pb = identity_service_pb2


def user_to_proto(user: User) -> identity_service_pb2.User:
    """Converts a user row to its message."""
    return pb.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=ROLE_TO_PROTO[Role(user.role)],
        disabled=user.disabled,
        email_verified=user.email_verified,
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
        etag=users.etag(user),
    )


def session_to_proto(tokens: SessionTokens) -> identity_service_pb2.Session:
    """Converts session tokens to their message."""
    return pb.Session(
        access_token=tokens.access.token,
        access_token_expire_time=timestamp(tokens.access.expire_time),
        refresh_token=tokens.refresh_token,
        refresh_token_expire_time=timestamp(tokens.refresh_expire_time),
    )


def service_session_to_proto(token: IssuedToken) -> identity_service_pb2.Session:
    """Converts a service access token to a session message without refresh token."""
    return pb.Session(
        access_token=token.token, access_token_expire_time=timestamp(token.expire_time)
    )


def service_account_to_proto(account: ServiceAccount) -> identity_service_pb2.ServiceAccount:
    """Converts a service account row to its message."""
    return pb.ServiceAccount(
        id=account.id,
        client_id=account.client_id,
        display_name=account.display_name,
        create_time=timestamp(account.create_time),
    )


class IdentityServicer(identity_service_pb2_grpc.IdentityServiceServicer):
    """Implements storefront.v1.IdentityService."""

    def __init__(
        self,
        policy: SessionPolicy,
        pages: PageTokenSigner,
        account_tokens: account_recovery.TokenKey,
    ) -> None:
        self.policy = policy
        self.pages = pages
        self.account_tokens = account_tokens

    def RegisterUser(
        self, request: pb.RegisterUserRequest, context: grpc.ServicerContext
    ) -> pb.RegisterUserResponse:
        user = users.register(
            email=request.email,
            password=request.password,
            display_name=request.display_name,
            passwords=self.policy.passwords,
        )
        return pb.RegisterUserResponse(user=user_to_proto(user))

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.LoginResponse:
        user, tokens = sessions.login(
            email=request.email,
            password=request.password,
            policy=self.policy,
            client_address=call_context.client_address(),
        )
        return pb.LoginResponse(session=session_to_proto(tokens), user=user_to_proto(user))

    def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: grpc.ServicerContext
    ) -> pb.RefreshSessionResponse:
        tokens = sessions.refresh(refresh_token=request.refresh_token, policy=self.policy)
        return pb.RefreshSessionResponse(session=session_to_proto(tokens))

    def Logout(self, request: pb.LogoutRequest, context: grpc.ServicerContext) -> pb.LogoutResponse:
        ended = sessions.logout(
            principal=call_context.principal(), all_sessions=request.all_sessions
        )
        return pb.LogoutResponse(ended_session_count=ended)

    def GetCurrentUser(
        self, request: pb.GetCurrentUserRequest, context: grpc.ServicerContext
    ) -> pb.GetCurrentUserResponse:
        user = users.get_or_raise(call_context.principal().subject)
        return pb.GetCurrentUserResponse(user=user_to_proto(user))

    def UpdateCurrentUser(
        self, request: pb.UpdateCurrentUserRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCurrentUserResponse:
        user = users.update_current(
            principal=call_context.principal(),
            paths=list(request.update_mask.paths),
            display_name=request.user.display_name,
            expected_etag=request.etag,
        )
        return pb.UpdateCurrentUserResponse(user=user_to_proto(user))

    def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: grpc.ServicerContext
    ) -> pb.ChangePasswordResponse:
        tokens = sessions.change_password(
            principal=call_context.principal(),
            current_password=request.current_password,
            new_password=request.new_password,
            policy=self.policy,
            client_address=call_context.client_address(),
        )
        return pb.ChangePasswordResponse(session=session_to_proto(tokens))

    def ListUsers(
        self, request: pb.ListUsersRequest, context: grpc.ServicerContext
    ) -> pb.ListUsersResponse:
        page = users.list_(page_request(request, self.pages))
        return pb.ListUsersResponse(
            users=[user_to_proto(u) for u in page.items], next_page_token=page.next_page_token
        )

    def UpdateUserRole(
        self, request: pb.UpdateUserRoleRequest, context: grpc.ServicerContext
    ) -> pb.UpdateUserRoleResponse:
        user = users.set_role(
            actor=call_context.principal(),
            user_id=request.user_id,
            role=ROLE_FROM_PROTO.get(request.role),
        )
        return pb.UpdateUserRoleResponse(user=user_to_proto(user))

    def DisableUser(
        self, request: pb.DisableUserRequest, context: grpc.ServicerContext
    ) -> pb.DisableUserResponse:
        user = users.disable(actor=call_context.principal(), user_id=request.user_id)
        return pb.DisableUserResponse(user=user_to_proto(user))

    def EnableUser(
        self, request: pb.EnableUserRequest, context: grpc.ServicerContext
    ) -> pb.EnableUserResponse:
        return pb.EnableUserResponse(user=user_to_proto(users.enable(user_id=request.user_id)))

    def RequestPasswordReset(
        self, request: pb.RequestPasswordResetRequest, context: grpc.ServicerContext
    ) -> pb.RequestPasswordResetResponse:
        account_recovery.request_password_reset(email=request.email, key=self.account_tokens)
        return pb.RequestPasswordResetResponse()

    def ResetPassword(
        self, request: pb.ResetPasswordRequest, context: grpc.ServicerContext
    ) -> pb.ResetPasswordResponse:
        account_recovery.reset_password(
            token=request.token,
            new_password=request.new_password,
            passwords=self.policy.passwords,
        )
        return pb.ResetPasswordResponse()

    def SendVerificationEmail(
        self, request: pb.SendVerificationEmailRequest, context: grpc.ServicerContext
    ) -> pb.SendVerificationEmailResponse:
        account_recovery.send_verification_email(
            principal=call_context.principal(), key=self.account_tokens
        )
        return pb.SendVerificationEmailResponse()

    def VerifyEmail(
        self, request: pb.VerifyEmailRequest, context: grpc.ServicerContext
    ) -> pb.VerifyEmailResponse:
        user = account_recovery.verify_email(token=request.token)
        return pb.VerifyEmailResponse(user=user_to_proto(user))

    def ClearSignInThrottle(
        self, request: pb.ClearSignInThrottleRequest, context: grpc.ServicerContext
    ) -> pb.ClearSignInThrottleResponse:
        cleared = sessions.clear_sign_in_throttle(email=request.email)
        return pb.ClearSignInThrottleResponse(cleared_failure_count=cleared)

    def CreateServiceAccount(
        self, request: pb.CreateServiceAccountRequest, context: grpc.ServicerContext
    ) -> pb.CreateServiceAccountResponse:
        account, secret = service_accounts.create(
            actor=call_context.principal(), display_name=request.display_name
        )
        return pb.CreateServiceAccountResponse(
            service_account=service_account_to_proto(account), client_secret=secret
        )

    def IssueServiceToken(
        self, request: pb.IssueServiceTokenRequest, context: grpc.ServicerContext
    ) -> pb.IssueServiceTokenResponse:
        token = service_accounts.issue_token(
            client_id=request.client_id,
            client_secret=request.client_secret,
            tokens=self.policy.tokens,
        )
        return pb.IssueServiceTokenResponse(session=service_session_to_proto(token))

    def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListSigningKeysResponse:
        tokens = self.policy.tokens
        return pb.ListSigningKeysResponse(
            keys=[pb.JsonWebKey(**jwk) for jwk in tokens.jwks()],
            issuer=tokens.issuer,
            audience=tokens.audience,
        )
