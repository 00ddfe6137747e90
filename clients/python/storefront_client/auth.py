"""Keeps the current session fresh and attaches its access token to every call."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import grpc
from storefront.v1 import identity_service_pb2

from storefront_client._call_details import CallDetails, CallDetailsInterceptor

DEFAULT_REFRESH_BEFORE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Session:
    """The tokens in use, with times in seconds on the client's clock (Unix time by default)."""

    access_token: str
    expires_at: float | None
    refresh_at: float | None
    refresh_token: str = ""

    @classmethod
    def from_proto(
        cls, session: identity_service_pb2.Session, *, now: float, refresh_before: float
    ) -> Session:
        """Returns the session, due for renewal `refresh_before` s (at most half its life) early."""
        if not session.HasField("access_token_expire_time"):
            return cls(session.access_token, None, None, session.refresh_token)
        expires_at = session.access_token_expire_time.ToNanoseconds() / 1e9
        lead = min(refresh_before, max(expires_at - now, 0.0) / 2)
        return cls(session.access_token, expires_at, expires_at - lead, session.refresh_token)

    def due(self, now: float) -> bool:
        """Returns whether the access token should be renewed before the next call."""
        return self.refresh_at is not None and now >= self.refresh_at

    def expired(self, now: float) -> bool:
        """Returns whether the access token has expired."""
        return self.expires_at is not None and now >= self.expires_at


@dataclasses.dataclass(frozen=True)
class _ServiceCredentials:
    client_id: str
    client_secret: str = dataclasses.field(repr=False)


class SessionManager:
    """Holds the current session and renews it, one renewal at a time across threads."""

    def __init__(
        self,
        identity: Any,
        *,
        clock: Callable[[], float],
        refresh_before: float = DEFAULT_REFRESH_BEFORE_SECONDS,
    ) -> None:
        """Creates an empty manager; `identity` is an IdentityServiceStub that sends no token."""
        if refresh_before < 0:
            raise ValueError("refresh_before must not be negative")
        self._identity = identity
        self._clock = clock
        self._refresh_before = refresh_before
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._credentials: _ServiceCredentials | None = None

    @property
    def session(self) -> Session | None:
        """Returns the current session, or None when signed out."""
        return self._session

    def start(self, session: identity_service_pb2.Session) -> None:
        """Replaces the current session with a user session."""
        with self._lock:
            self._session = self._wrap(session)
            self._credentials = None

    def start_service(self, client_id: str, client_secret: str) -> None:
        """Issues a service token now and re-issues it whenever it is due."""
        credentials = _ServiceCredentials(client_id, client_secret)
        with self._lock:
            self._session = self._issue(credentials)
            self._credentials = credentials

    def clear(self) -> Session | None:
        """Forgets the session and any service credentials; returns the forgotten session."""
        with self._lock:
            session, self._session, self._credentials = self._session, None, None
            return session

    def access_token(self) -> str | None:
        """Returns a valid access token, renewing the session first if it is due."""
        session = self._session
        if session is None or not session.due(self._clock()):
            return session.access_token if session else None
        with self._lock:
            session = self._session  # another thread may have renewed it while we waited
            if session is None or not session.due(self._clock()):
                return session.access_token if session else None
            self._session = self._renew(session)
            return self._session.access_token

    def _renew(self, session: Session) -> Session:
        try:
            if self._credentials is not None:
                return self._issue(self._credentials)
            if not session.refresh_token:
                return session  # nothing to renew with; the server will say when it expires
            response: identity_service_pb2.RefreshSessionResponse = self._identity.RefreshSession(
                identity_service_pb2.RefreshSessionRequest(refresh_token=session.refresh_token)
            )
            return self._wrap(response.session)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.UNAUTHENTICATED:
                self._credentials = None
                self._session = None
                raise  # the session is over: signed out
            if session.expired(self._clock()):
                raise
            return session  # keep the still-valid token; the next call tries again

    def _issue(self, credentials: _ServiceCredentials) -> Session:
        response: identity_service_pb2.IssueServiceTokenResponse = self._identity.IssueServiceToken(
            identity_service_pb2.IssueServiceTokenRequest(
                client_id=credentials.client_id, client_secret=credentials.client_secret
            )
        )
        return self._wrap(response.session)

    def _wrap(self, session: identity_service_pb2.Session) -> Session:
        return Session.from_proto(session, now=self._clock(), refresh_before=self._refresh_before)


class AuthInterceptor(CallDetailsInterceptor):
    """Adds `authorization: Bearer <token>` to calls that do not carry their own."""

    def __init__(self, access_token: Callable[[], str | None]) -> None:
        """Creates the interceptor around a function returning the token to send, if any."""
        self._access_token = access_token

    def rewrite(self, details: CallDetails) -> CallDetails:
        """Returns the details with the bearer token added."""
        metadata = list(details.metadata or ())
        if any(key == "authorization" for key, _ in metadata):
            return details
        token = self._access_token()
        if token is None:
            return details
        metadata.append(("authorization", f"Bearer {token}"))
        return details.replace(metadata=tuple(metadata))
