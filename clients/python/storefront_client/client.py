"""StorefrontClient: one channel with sessions, deadlines and retries behind typed stubs."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import grpc
from storefront.v1 import (
    cart_service_pb2_grpc,
    catalog_service_pb2_grpc,
    checkout_service_pb2_grpc,
    currency_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    inventory_service_pb2_grpc,
    order_pb2,
    order_service_pb2,
    order_service_pb2_grpc,
    promotion_service_pb2_grpc,
    report_service_pb2_grpc,
    shipping_service_pb2_grpc,
    webhook_service_pb2_grpc,
)

from storefront_client.auth import (
    DEFAULT_REFRESH_BEFORE_SECONDS,
    AuthInterceptor,
    Session,
    SessionManager,
)
from storefront_client.channel import create_channel
from storefront_client.deadline import DEFAULT_TIMEOUT_SECONDS, DeadlineInterceptor
from storefront_client.retry import RetryInterceptor, RetryPolicy

StubT = TypeVar("StubT")
# How long one WatchOrder connection lasts before watch_order renews it.
WATCH_STREAM_SECONDS = 300.0
# Patient enough for a server restart: up to 10 tries, pauses growing to 5 s.
WATCH_RETRY = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=5.0)


class ServiceStub(Generic[StubT]):
    """Class attribute giving each client a cached stub of one service over its channel."""

    def __init__(self, stub_class: Callable[[Any], StubT]) -> None:
        """Declares the stub; `stub_class` is a generated `XxxServiceStub`."""
        self._stub_class = stub_class
        self._name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        """Remembers the attribute name the stub is cached under."""
        self._name = f"_stub_{name}"

    @overload
    def __get__(self, client: None, owner: type[Any]) -> ServiceStub[StubT]: ...
    @overload
    def __get__(self, client: StorefrontClient, owner: type[Any]) -> StubT: ...
    def __get__(
        self, client: StorefrontClient | None, owner: type[Any]
    ) -> StubT | ServiceStub[StubT]:
        """Returns the client's stub, created on first use."""
        if client is None:
            return self
        stub: StubT | None = client.__dict__.get(self._name)
        if stub is None:
            stub = self._stub_class(client.channel)
            client.__dict__[self._name] = stub
        return stub


class StorefrontClient:
    """A storefront connection: sign-in, token refresh, default deadlines and retries."""

    # One line per service; every stub goes through the client's interceptors.
    identity = ServiceStub(identity_service_pb2_grpc.IdentityServiceStub)
    catalog = ServiceStub(catalog_service_pb2_grpc.CatalogServiceStub)
    inventory = ServiceStub(inventory_service_pb2_grpc.InventoryServiceStub)
    currency = ServiceStub(currency_service_pb2_grpc.CurrencyServiceStub)
    shipping = ServiceStub(shipping_service_pb2_grpc.ShippingServiceStub)
    cart = ServiceStub(cart_service_pb2_grpc.CartServiceStub)
    checkout = ServiceStub(checkout_service_pb2_grpc.CheckoutServiceStub)
    orders = ServiceStub(order_service_pb2_grpc.OrderServiceStub)
    webhooks = ServiceStub(webhook_service_pb2_grpc.WebhookServiceStub)
    promotions = ServiceStub(promotion_service_pb2_grpc.PromotionServiceStub)
    reports = ServiceStub(report_service_pb2_grpc.ReportServiceStub)

    def __init__(
        self,
        channel: grpc.Channel | str,
        *,
        default_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = None,
        refresh_before: float = DEFAULT_REFRESH_BEFORE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Wraps a grpc.Channel (owned from now on) or a plaintext "host:port" target."""
        self._raw_channel = create_channel(channel) if isinstance(channel, str) else channel
        deadline = DeadlineInterceptor(default_timeout)
        retrier = RetryInterceptor(retry)
        # Sign-in and token renewal use a channel that sends no token, so renewal never recurses.
        self._public_identity = identity_service_pb2_grpc.IdentityServiceStub(
            grpc.intercept_channel(self._raw_channel, deadline, retrier)
        )
        self._sessions = SessionManager(
            self._public_identity, clock=clock, refresh_before=refresh_before
        )
        # Outermost first: the deadline covers every attempt; one token serves all attempts.
        self._channel = grpc.intercept_channel(
            self._raw_channel, deadline, AuthInterceptor(self._sessions.access_token), retrier
        )

    @property
    def channel(self) -> grpc.Channel:
        """Returns the grpc.Channel with the client's interceptors, for stubs and raw calls."""
        return self._channel

    @property
    def session(self) -> Session | None:
        """Returns the current session, or None when signed out."""
        return self._sessions.session

    def register(
        self, email: str, password: str, display_name: str = ""
    ) -> identity_service_pb2.User:
        """Registers a customer account and returns it; does not sign in."""
        response: identity_service_pb2.RegisterUserResponse = self._public_identity.RegisterUser(
            identity_service_pb2.RegisterUserRequest(
                email=email, password=password, display_name=display_name
            )
        )
        return response.user

    def login(self, email: str, password: str) -> identity_service_pb2.User:
        """Signs in, keeps the session for later calls and returns the user."""
        response: identity_service_pb2.LoginResponse = self._public_identity.Login(
            identity_service_pb2.LoginRequest(email=email, password=password)
        )
        self._sessions.start(response.session)
        return response.user

    def use_service_credentials(self, client_id: str, client_secret: str) -> None:
        """Authenticates as a service account, re-issuing its token before each expiry."""
        self._sessions.start_service(client_id, client_secret)

    def logout(self, *, all_sessions: bool = False) -> int:
        """Ends the user session on the server, forgets it and returns the ended session count."""
        session = self.session
        try:
            if session is None or not session.refresh_token:
                return 0  # service tokens have no server-side session to end
            response: identity_service_pb2.LogoutResponse = self.identity.Logout(
                identity_service_pb2.LogoutRequest(all_sessions=all_sessions)
            )
            return response.ended_session_count
        finally:
            self._sessions.clear()

    def watch_order(
        self,
        order_id: str,
        *,
        after_sequence: int = 0,
        retry: RetryPolicy | None = None,
        stream_timeout: float = WATCH_STREAM_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Generator[order_service_pb2.WatchOrderResponse, None, None]:
        """Yields an order's updates for as long as the caller iterates: the order as it is
        (unless resuming after `after_sequence`), then each event in sequence order.

        A stream that ends (a server shutting down or restarting, a lost connection, the
        `stream_timeout` that renews long connections) is reopened after the last sequence
        seen, so nothing is missed or repeated; UNAVAILABLE and CANCELLED are retried with the
        policy's backoff, any other error is raised.
        """
        last = after_sequence

        def open_stream(timeout: float) -> Any:
            return self.orders.WatchOrder(
                order_service_pb2.WatchOrderRequest(order_id=order_id, after_sequence=last),
                timeout=timeout,
                wait_for_ready=True,
            )

        for update in _resumed(open_stream, retry or WATCH_RETRY, stream_timeout, sleep):
            last = update.sequence
            yield update

    def watch_orders(
        self,
        *states: order_pb2.OrderState.ValueType,
        after_position: int = 0,
        retry: RetryPolicy | None = None,
        stream_timeout: float = WATCH_STREAM_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Generator[order_service_pb2.WatchOrdersResponse, None, None]:
        """Yields every order's events that leave it in one of `states` (all when none are
        given), shop-wide (staff only), for as long as the caller iterates; resumes after the
        last position seen like `watch_order`. The first message of each stream, which only
        says where it starts, is not yielded."""
        last = after_position

        def open_stream(timeout: float) -> Any:
            return self.orders.WatchOrders(
                order_service_pb2.WatchOrdersRequest(states=states, after_position=last),
                timeout=timeout,
                wait_for_ready=True,
            )

        for message in _resumed(open_stream, retry or WATCH_RETRY, stream_timeout, sleep):
            last = message.position
            if message.HasField("update"):
                yield message

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._sessions.clear()
        self._raw_channel.close()

    def __enter__(self) -> StorefrontClient:
        """Returns the client itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes the client."""
        self.close()


def _resumed(
    open_stream: Callable[[float], Any],
    policy: RetryPolicy,
    stream_timeout: float,
    sleep: Callable[[float], None],
) -> Generator[Any, None, None]:
    """Yields the messages of `open_stream(timeout)`, reopening it (the caller's request picks
    up where the last message left off) when it ends for a reason worth retrying."""
    failures = 0
    while True:
        # wait_for_ready in the caller's request: a server that is restarting is waited for
        # (within the stream's time) rather than failed at once while the channel backs off.
        call = open_stream(stream_timeout)
        try:
            for message in call:
                failures = 0
                yield message
        except grpc.RpcError as err:
            code = err.code()
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                continue  # the connection's time is up: renew it at once
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            failures += 1
            if failures >= policy.max_attempts:
                raise
            sleep(policy.backoff(failures, random.random()))
        finally:
            call.cancel()
