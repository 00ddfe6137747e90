"""Composition root: settings -> database -> interceptors -> servicers -> grpc.Server."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import peewee
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from storefront.v1 import (
    cart_service_pb2,
    cart_service_pb2_grpc,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    checkout_service_pb2,
    checkout_service_pb2_grpc,
    currency_service_pb2,
    currency_service_pb2_grpc,
    identity_service_pb2,
    identity_service_pb2_grpc,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    order_service_pb2,
    order_service_pb2_grpc,
    shipping_service_pb2,
    shipping_service_pb2_grpc,
)

from server import migrations
from server.config import ConfigError, Settings, payment_worst_case_seconds
from server.db import (
    close_database,
    close_idle_connections,
    database_reachable,
    init_database,
)
from server.domain import (
    checkout,
    exchange_rates,
    idempotency,
    key_files,
    passwords,
    payment_jobs,
    sessions,
    shipping,
    taxes,
    tokens,
)
from server.domain.passwords import PasswordHasher
from server.domain.product_cache import ProductCache
from server.domain.sessions import SessionPolicy
from server.interceptors.auth import AuthInterceptor, access_rules
from server.interceptors.db_scope import DatabaseScopeInterceptor
from server.interceptors.errors import ErrorInterceptor
from server.interceptors.metrics import MetricsInterceptor, ServerMetrics
from server.interceptors.request_log import RequestLogInterceptor
from server.payments import CircuitBreaker, HttpPaymentGateway, PaymentGateway, SandboxGateway
from server.payments.metrics import CommerceMetrics, MeasuredGateway
from server.services.cart_service import CartServicer
from server.services.catalog_service import CatalogServicer
from server.services.checkout_service import CheckoutServicer
from server.services.currency_service import CurrencyServicer
from server.services.health_service import HealthServicer
from server.services.identity_service import IdentityServicer
from server.services.inventory_service import InventoryServicer
from server.services.order_service import OrderServicer
from server.services.shipping_service import ShippingServicer

log = logging.getLogger("storefront")

MIN_PAGE_TOKEN_SECRET_BYTES = 32
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass
class App:
    """A built server and what its lifecycle needs; `server` and `port` are what callers use."""

    server: grpc.Server
    port: int
    settings: Settings
    db: peewee.Database
    health: HealthServicer
    service_names: list[str]
    metrics: ServerMetrics
    # The configured gateway (sandbox or http), unwrapped; servicers use a timed wrapper of it.
    payment_gateway: PaymentGateway
    gateway: PaymentGateway
    metrics_port: int | None = None
    _metrics_httpd: Any = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _reconciler: threading.Thread | None = None

    def start(self) -> None:
        """Starts serving metrics, RPCs and the database health watch."""
        if self.settings.metrics_address:
            host, _, port = self.settings.metrics_address.rpartition(":")
            try:
                self._metrics_httpd, _ = start_http_server(
                    int(port), host.strip("[]"), registry=self.metrics.registry
                )
            except OSError as exc:
                raise ConfigError(
                    f"STOREFRONT_METRICS_ADDRESS: cannot listen on "
                    f"{self.settings.metrics_address} ({exc.strerror})"
                ) from None
            self.metrics_port = self._metrics_httpd.server_port
        self.server.start()
        self._watcher = threading.Thread(target=self._watch_database, name="db-health", daemon=True)
        self._watcher.start()
        if self.settings.reconcile_interval_seconds > 0:
            self._reconciler = threading.Thread(
                target=self._reconcile_payments, name="payment-reconciler", daemon=True
            )
            self._reconciler.start()

    def stop(self, grace: float | None = None) -> None:
        """Drains and stops: health NOT_SERVING, drain period, stop(grace), close the pool."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        # Load balancers and clients watching health move away during the drain period, before
        # the server starts refusing new RPCs.
        if self.settings.drain_seconds:
            time.sleep(self.settings.drain_seconds)
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.server.stop(grace).wait()
        if self._watcher is not None:
            self._watcher.join(timeout=self.settings.health_check_seconds + 1)
        if self._reconciler is not None:
            # A pass in progress may be waiting on the provider; it is safe to abandon.
            self._reconciler.join(timeout=grace + 1)
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        close_database()

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self.server.wait_for_termination()

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING (or NOT_SERVING) for "" and every storefront service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def _watch_database(self) -> None:
        """Reports NOT_SERVING while the database is unreachable, SERVING when it is back."""
        serving = True
        while not self._stopping.wait(self.settings.health_check_seconds):
            healthy = database_reachable(self.db)
            if not healthy:
                # Idle pooled connections may be dead (or, on SQLite, still open on a file that
                # is gone): drop them so calls reconnect and fail or recover honestly.
                close_idle_connections(self.db)
            if healthy != serving and not self._stopping.is_set():
                log.warning("database %s", "reachable again" if healthy else "unreachable")
                self.set_serving(healthy)
                serving = healthy

    def reconcile_once(self) -> payment_jobs.Report:
        """Runs one reconciliation pass (see payment_jobs) with this app's settings."""
        with self.db.connection_context():
            return reconcile_payments(self.settings, self.gateway)

    def _reconcile_payments(self) -> None:
        """Settles pending payments, expired reservations and pending refunds periodically."""
        while not self._stopping.wait(self.settings.reconcile_interval_seconds):
            try:
                report = self.reconcile_once()
            except Exception:
                log.exception("payment reconciliation pass failed; retrying next interval")
                continue
            if report.paid or report.failed or report.expired or report.refunds_succeeded:
                log.info(
                    "reconciled payments: %d paid, %d failed, %d expired, %d refunds sent",
                    len(report.paid),
                    len(report.failed),
                    len(report.expired),
                    len(report.refunds_succeeded),
                )


def reconcile_payments(settings: Settings, gateway: PaymentGateway) -> payment_jobs.Report:
    """One reconciliation pass with the configured timings; call with a connection open."""
    return payment_jobs.reconcile(
        gateway,
        reconcile_after=dt.timedelta(seconds=settings.reconcile_after_seconds),
        reservation_ttl=dt.timedelta(seconds=settings.reservation_ttl_seconds),
    )


def load_page_token_secret(settings: Settings) -> bytes:
    """Returns the page-token HMAC secret, generating it in development."""
    assert settings.page_token_secret_file is not None
    if settings.is_production:
        secret = settings.page_token_secret_file.read_bytes().strip()
    else:
        secret = key_files.load_or_create(
            settings.page_token_secret_file, lambda: secrets.token_bytes(32)
        )
    if len(secret) < MIN_PAGE_TOKEN_SECRET_BYTES:
        raise ValueError(
            f"STOREFRONT_PAGE_TOKEN_SECRET_FILE: needs at least {MIN_PAGE_TOKEN_SECRET_BYTES} bytes"
        )
    return secret


def load_shipping_rules(settings: Settings, db: peewee.Database) -> shipping.Rules:
    """Returns the validated shipping rules; raises ConfigError naming the variable.

    The rules' currency must have an exchange rate, or no quote in another currency could be made.
    """
    name = "STOREFRONT_SHIPPING_RULES_FILE"
    try:
        rules = shipping.load_rules(settings.shipping_rules_file)
    except shipping.RulesError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    with db.connection_context():
        supported = exchange_rates.is_supported(rules.currency)
    if not supported:
        raise ConfigError(
            f"{name}: {settings.shipping_rules_file}: currency {rules.currency} has no exchange "
            "rate; use a supported currency (CurrencyService.ListCurrencies)"
        )
    return rules


def load_tax_rates(settings: Settings) -> taxes.TaxRates:
    """Returns the validated tax rates; raises ConfigError naming the variable."""
    try:
        return taxes.load_rates(settings.tax_rates_file)
    except taxes.TaxRatesError as exc:
        raise ConfigError(f"STOREFRONT_TAX_RATES_FILE: {exc}") from None


def build_payment_gateway(settings: Settings) -> PaymentGateway:
    """Returns the configured payment gateway; raises ConfigError naming the variable."""
    if settings.payment_gateway == "sandbox":
        return SandboxGateway()
    worst = payment_worst_case_seconds(
        connect_timeout=settings.payment_connect_timeout_seconds,
        read_timeout=settings.payment_read_timeout_seconds,
        max_retries=settings.payment_max_retries,
        backoff=settings.payment_backoff_seconds,
    )
    # A checkout still waiting on the provider when its request_id's claim goes stale would be
    # taken over by a retry and answered ABORTED although it went through. Half the claim's
    # life leaves room for what the arithmetic does not bound (DNS, slow trickling answers,
    # the checkout's own database waits).
    limit = idempotency.STALE_CLAIM_AFTER.total_seconds() / 2
    if worst > limit:
        raise ConfigError(
            f"STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS: the payment client's worst case of "
            f"{worst:g} s (attempts x (connect + read timeout) + pauses) must stay below "
            f"{limit:g} s"
        )
    assert settings.payment_secret_key_file is not None
    secret = settings.payment_secret_key_file.read_text(encoding="utf-8").strip()
    try:
        return HttpPaymentGateway(
            base_url=settings.payment_base_url,
            secret_key=secret,
            connect_timeout=settings.payment_connect_timeout_seconds,
            read_timeout=settings.payment_read_timeout_seconds,
            max_retries=settings.payment_max_retries,
            backoff_seconds=settings.payment_backoff_seconds,
            breaker=CircuitBreaker(
                failure_threshold=settings.payment_breaker_failures,
                reset_seconds=settings.payment_breaker_reset_seconds,
            ),
        )
    except ValueError as exc:
        variable = "SECRET_KEY_FILE" if "secret" in str(exc) else "BASE_URL"
        raise ConfigError(f"STOREFRONT_PAYMENT_{variable}: {exc}") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_enabled:
        return None
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def create_app(settings: Settings) -> App:
    """Builds the server for `settings`, bound to its port but not started.

    Refuses to build on an out-of-date schema, if any RPC lacks an access rule, or (ConfigError)
    on invalid shipping rules.
    """
    db = init_database(settings.database_url, pool_size=settings.db_pool_size)
    migrations.check_schema(db)
    # Process-wide: password hashes on many worker threads would otherwise keep ~19 MiB each.
    passwords.return_hash_memory_to_the_os()

    assert settings.jwt_signing_key_file is not None
    keyring = tokens.load_keyring(
        settings.jwt_signing_key_file,
        settings.jwt_verify_key_files,
        generate_if_missing=not settings.is_production,
    )
    token_service = tokens.TokenService(
        keyring,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
        leeway_seconds=settings.token_leeway_seconds,
    )
    policy = SessionPolicy(
        tokens=token_service,
        passwords=PasswordHasher(concurrency=settings.password_hash_concurrency),
        refresh_ttl=dt.timedelta(seconds=settings.refresh_token_ttl_seconds),
    )
    page_token_secret = load_page_token_secret(settings)
    shipping_rules = load_shipping_rules(settings, db)
    tax_rates = load_tax_rates(settings)
    payment_gateway = build_payment_gateway(settings)

    # The *_created series have no counterpart in go-grpc-middleware's metrics.
    disable_created_metrics()
    metrics = ServerMetrics(CollectorRegistry())
    commerce_metrics = CommerceMetrics(metrics.registry)
    gateway = MeasuredGateway(payment_gateway, commerce_metrics)
    checkout_config = checkout.Checkout(
        gateway=gateway,
        shipping_rules=shipping_rules,
        tax_rates=tax_rates,
        on_failure=lambda reason: commerce_metrics.checkout_failures.labels(reason).inc(),
        on_placed=lambda order: commerce_metrics.orders_placed.labels(order.currency).inc(),
    )

    # Each entry: the service descriptor (its access rules), and how to register the servicer.
    services: list[tuple[ServiceDescriptor, Callable[[grpc.Server], None]]] = [
        (
            identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
            lambda server: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
                IdentityServicer(policy, page_token_secret), server
            ),
        ),
        (
            catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"],
            lambda server: catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
                CatalogServicer(page_token_secret, ProductCache(metrics.registry)), server
            ),
        ),
        (
            inventory_service_pb2.DESCRIPTOR.services_by_name["InventoryService"],
            lambda server: inventory_service_pb2_grpc.add_InventoryServiceServicer_to_server(
                InventoryServicer(page_token_secret), server
            ),
        ),
        (
            currency_service_pb2.DESCRIPTOR.services_by_name["CurrencyService"],
            lambda server: currency_service_pb2_grpc.add_CurrencyServiceServicer_to_server(
                CurrencyServicer(), server
            ),
        ),
        (
            shipping_service_pb2.DESCRIPTOR.services_by_name["ShippingService"],
            lambda server: shipping_service_pb2_grpc.add_ShippingServiceServicer_to_server(
                ShippingServicer(shipping_rules), server
            ),
        ),
        (
            cart_service_pb2.DESCRIPTOR.services_by_name["CartService"],
            lambda server: cart_service_pb2_grpc.add_CartServiceServicer_to_server(
                CartServicer(), server
            ),
        ),
        (
            checkout_service_pb2.DESCRIPTOR.services_by_name["CheckoutService"],
            lambda server: checkout_service_pb2_grpc.add_CheckoutServiceServicer_to_server(
                CheckoutServicer(checkout_config), server
            ),
        ),
        (
            order_service_pb2.DESCRIPTOR.services_by_name["OrderService"],
            lambda server: order_service_pb2_grpc.add_OrderServiceServicer_to_server(
                OrderServicer(page_token_secret, gateway), server
            ),
        ),
    ]
    rules = access_rules(descriptor for descriptor, _ in services)

    # Outermost first. The database scope wraps auth because auth checks, with one indexed
    # query, that the token's session is still live.
    interceptors = [
        RequestLogInterceptor(),
        MetricsInterceptor(metrics),
        ErrorInterceptor(),
        DatabaseScopeInterceptor(db),
        AuthInterceptor(rules, token_service, sessions.authorize),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            # Off: a second server on the same port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ],
    )
    for _, register in services:
        register(server)

    service_names = [descriptor.full_name for descriptor, _ in services]
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            [*service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
        )

    credentials = _server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.grpc_address)
        else:
            port = server.add_secure_port(settings.grpc_address, credentials)
    except RuntimeError:
        raise ConfigError(
            f"STOREFRONT_GRPC_ADDRESS: cannot listen on {settings.grpc_address} "
            "(in use by another process?)"
        ) from None

    app = App(
        server=server,
        port=port,
        settings=settings,
        db=db,
        health=health_servicer,
        service_names=service_names,
        metrics=metrics,
        payment_gateway=payment_gateway,
        gateway=gateway,
    )
    app.set_serving(True)
    return app
