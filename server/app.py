"""Composition root: settings -> database -> interceptors -> servicers -> grpc.Server.

`create_app` builds everything that needs no gRPC object (settings checked, database and schema,
keys, rules, the payment gateway, metrics, jobs); `App.build_server` builds the servicers,
the interceptor chain and the bound grpc.Server. server/runtime.py calls it when it starts
serving, so a process may fork between the two. Nothing here starts anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import peewee
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, disable_created_metrics

from server import migrations, notifications
from server.config import ConfigError, Settings, payment_worst_case_seconds
from server.db import init_database, utcnow
from server.domain import (
    account_recovery,
    checkout,
    dispatch,
    emails,
    exchange_rates,
    idempotency,
    key_files,
    order_watch,
    outbox,
    passwords,
    payment_jobs,
    product_cache,
    sessions,
    shipping,
    taxes,
    tokens,
    webhooks,
    work_leases,
)
from server.domain.page_tokens import PageTokenSigner
from server.domain.passwords import PasswordHasher
from server.domain.product_cache import ProductCache
from server.domain.sessions import SessionPolicy
from server.interceptors.auth import AccessRule, AuthInterceptor, access_rules
from server.interceptors.chain import InterceptorChain
from server.interceptors.client_address import parse_networks
from server.interceptors.concurrency import UnaryCapInterceptor
from server.interceptors.db_scope import DatabaseScopeInterceptor
from server.interceptors.errors import ErrorInterceptor
from server.interceptors.metrics import MetricsInterceptor, ServerMetrics
from server.interceptors.rate_limit import (
    MethodClass,
    RateLimiter,
    RateLimitInterceptor,
    RateLimitMetrics,
    method_classes,
)
from server.interceptors.request_decoding import RequestDecodingInterceptor
from server.interceptors.request_log import RequestLogInterceptor
from server.jobs import Job
from server.mail.transport import FileMailer, Mailer, SmtpMailer
from server.payments import CircuitBreaker, HttpPaymentGateway, PaymentGateway, SandboxGateway
from server.payments.metrics import CommerceMetrics, MeasuredGateway
from server.runtime import Runtime
from server.services import registry
from server.services.health_service import HealthServicer
from server.services.registry import Dependencies
from server.webhooks.metrics import WebhookMetrics
from server.webhooks.sender import AddressPolicy, Sender

log = logging.getLogger("storefront")

MIN_PAGE_TOKEN_SECRET_BYTES = 32
# A dispatcher woken by every commit passes at most this often (wake-ups in between make one pass).
DISPATCH_MIN_PAUSE_SECONDS = 0.05
# How often SQLite's outbox poller looks for other processes' commits (PostgreSQL notifies).
SQLITE_CHANGE_POLL_SECONDS = 0.25
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Expired keys and leases already count as unused (see domain/idempotency.py, work_leases.py):
# purging only keeps the tables small, so a pass every ten minutes is plenty.
PURGE_INTERVAL_SECONDS = 600.0
# How long `storefront reconcile` (no interval of its own) holds what it works on.
RECONCILE_COMMAND_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class BuiltServer:
    """What `App.build_server` returns: a grpc.Server bound to `port`, not started."""

    server: grpc.Server
    port: int
    health: HealthServicer


@dataclass
class App:
    """What `create_app` built, and `build_server` for the gRPC part.

    `runtime` (server/runtime.py) serves it. `start`, `stop`, `wait`, `port`, `metrics_port` and
    `health` are the runtime's, here as well so that one object serves the command line and tests.
    """

    settings: Settings
    db: peewee.Database
    metrics: ServerMetrics
    # The configured gateway (sandbox or http), unwrapped; servicers use a timed wrapper of it.
    payment_gateway: PaymentGateway
    gateway: PaymentGateway
    # What the servicers of registry.SERVICES are made with.
    dependencies: Dependencies
    access_rules: dict[str, AccessRule]
    token_service: tokens.TokenService
    rate_limit_metrics: RateLimitMetrics
    reconciler: Job[payment_jobs.Report]
    # The jobs the runtime runs while serving (each one off when its interval is 0).
    jobs: tuple[Job[Any], ...]
    # The in-process outbox consumers the runtime subscribes while serving, by name.
    consumers: dict[str, outbox.Consumer]
    # What makes other processes' commits wake the dispatcher and streams here.
    listener: notifications.Listener | notifications.Poller
    runtime: Runtime = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = Runtime(self)

    @property
    def service_names(self) -> list[str]:
        """The full names of the storefront services, as health and reflection report them."""
        return [service.name for service in registry.SERVICES]

    def build_server(self) -> BuiltServer:
        """Builds the servicers, the interceptor chain and the server, bound to its port.

        Raises ConfigError when the address cannot be listened on.
        """
        settings, db, metrics = self.settings, self.db, self.metrics
        rules, token_service = self.access_rules, self.token_service

        # Outermost first. A malformed body and a call over its rate limit are refused inside the
        # error scope (so they get the usual error shape) but before a database connection is
        # taken; the rate limiter verifies the token itself (no query) to count per principal. The
        # database scope wraps auth because auth checks, with one indexed query, that the token's
        # session is still live. Built here, after any fork: each process has its own limiter
        # (memory:// counts per process; redis:// shares the counts).
        limiter = RateLimiter(
            storage_url=settings.rate_limit_storage_url,
            key_prefix=settings.rate_limit_key_prefix,
            limits={
                MethodClass.SIGN_IN: settings.rate_limit_sign_in,
                MethodClass.READ: settings.rate_limit_read,
                MethodClass.WRITE: settings.rate_limit_write,
                MethodClass.CHECKOUT: settings.rate_limit_checkout,
            },
            metrics=self.rate_limit_metrics,
        )
        interceptors = [
            RequestLogInterceptor(parse_networks(settings.trusted_proxies)),
            MetricsInterceptor(metrics),
            ErrorInterceptor(),
            UnaryCapInterceptor(settings.max_concurrent_rpcs),
            RequestDecodingInterceptor(),
            RateLimitInterceptor(limiter, method_classes(rules), token_service),
            DatabaseScopeInterceptor(db),
            AuthInterceptor(rules, token_service, sessions.authorize),
        ]
        server = grpc.server(
            # A thread per stream slot on top of the unary workers: open streams (each holds
            # its thread while it waits) never take the capacity unary calls need.
            futures.ThreadPoolExecutor(
                max_workers=settings.worker_threads + settings.max_open_streams,
                thread_name_prefix="rpc",
            ),
            # One interceptor: each method's handler is composed once (chain.py).
            interceptors=[InterceptorChain(interceptors)],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs + settings.max_open_streams,
            options=[
                # Off in one process: a second server on the same port must fail, not silently
                # share it. Several workers (server/supervisor.py) share it on purpose.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                *_connection_age_options(settings),
            ],
        )
        for service in registry.SERVICES:
            service.add_to(server, self.dependencies)

        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [*self.service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
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
        return BuiltServer(server, port, health_servicer)

    def reconcile_once(self) -> payment_jobs.Report:
        """Runs one reconciliation pass (see payment_jobs) with this app's settings."""
        return self.reconciler.run_once()

    # --- lifecycle, the runtime's -------------------------------------------------------------

    def start(self) -> None:
        """Builds the server and starts serving (see Runtime.start)."""
        self.runtime.start()

    def stop(self, grace: float | None = None) -> None:
        """Drains and stops (see Runtime.stop)."""
        self.runtime.stop(grace)

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self.runtime.wait()

    @property
    def port(self) -> int:
        """The gRPC port, once started."""
        return self.runtime.port

    @property
    def metrics_port(self) -> int | None:
        """The /metrics port, once started; None without a metrics endpoint."""
        return self.runtime.metrics_port

    @property
    def health(self) -> HealthServicer:
        """The health servicer, once started."""
        return self.runtime.health


def payment_reconciler(
    settings: Settings, db: peewee.Database, gateway: PaymentGateway
) -> Job[payment_jobs.Report]:
    """The job settling pending payments, expired reservations and pending refunds."""

    def run_once() -> payment_jobs.Report:
        with db.connection_context():
            report = payment_jobs.reconcile(
                gateway,
                reconcile_after=dt.timedelta(seconds=settings.reconcile_after_seconds),
                reservation_ttl=dt.timedelta(seconds=settings.reservation_ttl_seconds),
                lease=reconcile_lease(settings),
            )
        if report.paid or report.failed or report.expired or report.refunds_succeeded:
            log.info(
                "reconciled payments: %d paid, %d failed, %d expired, %d refunds sent",
                len(report.paid),
                len(report.failed),
                len(report.expired),
                len(report.refunds_succeeded),
            )
        return report

    return Job("payment-reconciler", settings.reconcile_interval_seconds, run_once)


def outbox_dispatcher(
    settings: Settings,
    policy: AddressPolicy,
    metrics: WebhookMetrics,
    on_fanned_out: Callable[[], None],
    account_tokens: account_recovery.TokenKey,
) -> Job[int]:
    """The job that hands outbox events on to webhook endpoints and e-mail, in every worker."""
    timeout = settings.webhook_timeout_seconds
    # Longer than a request can take (connect + read), so a live sender keeps what it sends.
    lease = dt.timedelta(seconds=3 * timeout)
    sender = webhooks.WebhookSender(
        Sender(policy, connect_timeout=timeout, read_timeout=timeout),
        metrics,
        retry_schedule=settings.delivery_retry_schedule,
        lease=lease,
    )
    mailer = build_mailer(settings)
    mail = (
        None
        if mailer is None
        else emails.EmailSender(
            mailer,
            settings.email_from,
            settings.delivery_retry_schedule,
            lease=lease,
            expand=account_tokens.expand,
        )
    )
    dispatcher = dispatch.Dispatcher(sender, mail, on_fanned_out)
    return Job(
        "outbox-dispatcher",
        settings.dispatch_interval_seconds,
        dispatcher.run_once,
        # Woken by each commit: under load, wake-ups within this pause make one pass.
        min_pause=DISPATCH_MIN_PAUSE_SECONDS,
    )


def notified(wakeups: order_watch.Wakeups, dispatcher: Job[int]) -> Callable[[str], None]:
    """What a notification from a commit anywhere wakes in this process."""

    def on_topic(topic: str) -> None:
        if topic == notifications.EVERYTHING:
            wakeups.wake_everyone()
            dispatcher.wake()
        elif topic == dispatch.POSITIONS_TOPIC:
            wakeups.wake(order_watch.ALL_ORDERS)
        else:
            _, _, aggregate_id = topic.partition(":")
            wakeups.wake(aggregate_id)
            dispatcher.wake()

    return on_topic


def build_mailer(settings: Settings) -> Mailer | None:
    """The configured e-mail transport, or None when e-mail is off."""
    if settings.email_transport == "off":
        return None
    if settings.email_transport == "file":
        return FileMailer(settings.data_dir / "mail")
    password = ""
    if settings.smtp_password_file is not None:
        password = settings.smtp_password_file.read_text().strip()
    return SmtpMailer(
        settings.smtp_host,
        settings.smtp_port,
        security=settings.smtp_security,
        user=settings.smtp_user,
        password=password,
        timeout=settings.webhook_timeout_seconds,
    )


def reconcile_lease(settings: Settings) -> dt.timedelta:
    """How long one process holds an order or a refund it reconciles: one pass interval."""
    seconds = settings.reconcile_interval_seconds or RECONCILE_COMMAND_LEASE_SECONDS
    return dt.timedelta(seconds=seconds)


def expired_rows_purge(db: peewee.Database) -> Job[int]:
    """The job deleting expired idempotency keys and work leases (one process per interval)."""
    name = "expired-rows-purge"

    def run_once() -> int:
        now = utcnow()
        with db.connection_context():
            lease = dt.timedelta(seconds=PURGE_INTERVAL_SECONDS / 2)
            if not work_leases.claim_pass(name, lease=lease, now=now):
                return 0
            return idempotency.purge_expired(now) + work_leases.purge_expired(now)

    return Job(name, PURGE_INTERVAL_SECONDS, run_once)


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


def _connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """Returns the connection-age options: none in one process, which keeps connections for good.

    With several workers an aged connection gets GOAWAY, so a long-lived client reconnects and
    the kernel spreads it over the workers again.
    """
    if settings.workers == 1 or not settings.max_connection_age_seconds:
        return []
    return [
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)),
        (
            "grpc.max_connection_age_grace_ms",
            round(settings.max_connection_age_grace_seconds * 1000),
        ),
    ]


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
    """Builds everything but the gRPC objects for `settings`; starts nothing.

    Refuses to build on an out-of-date schema, if any RPC lacks an access rule, or (ConfigError)
    on invalid shipping rules, tax rates or payment settings.
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
    page_secret = load_page_token_secret(settings)
    pages = PageTokenSigner(page_secret)
    # Derived from the same deployment secret (every replica shares it): the dispatcher of any
    # process writes in the tokens of account e-mails that another stored.
    account_tokens = account_recovery.TokenKey(page_secret)
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
    )

    webhook_policy = AddressPolicy(
        allow_http=settings.webhook_allow_http,
        allow_private_addresses=settings.webhook_allow_private_addresses,
    )
    reconciler = payment_reconciler(settings, db, gateway)
    wakeups = order_watch.Wakeups()
    order_streams = order_watch.OrderStreams(
        order_watch.StreamSlots(settings.max_open_streams),
        wakeups,
        poll_seconds=settings.watch_poll_seconds,
    )
    dispatcher = outbox_dispatcher(
        settings,
        webhook_policy,
        WebhookMetrics(metrics.registry),
        lambda: wakeups.wake(order_watch.ALL_ORDERS),
        account_tokens,
    )
    consumers: dict[str, outbox.Consumer] = {
        "order-watchers": wakeups.on_committed,
        "dispatcher": lambda event: dispatcher.wake(),
        "product-cache": product_cache.on_committed,
        "refunds": payment_jobs.refund_sender(gateway, lease=reconcile_lease(settings)),
        "order-metrics": lambda event: commerce_metrics.observe_order_event(
            event.type, event.payload
        ),
    }
    return App(
        settings=settings,
        db=db,
        metrics=metrics,
        payment_gateway=payment_gateway,
        gateway=gateway,
        dependencies=Dependencies(
            sessions=policy,
            pages=pages,
            product_cache=ProductCache(metrics.registry),
            shipping_rules=shipping_rules,
            checkout=checkout_config,
            webhook_registration=webhooks.Registration(webhook_policy),
            order_streams=order_streams,
            account_tokens=account_tokens,
        ),
        access_rules=access_rules(registry.DESCRIPTORS),
        token_service=token_service,
        rate_limit_metrics=RateLimitMetrics(metrics.registry),
        reconciler=reconciler,
        jobs=(
            reconciler,
            expired_rows_purge(db),
            dispatcher,
        ),
        consumers=consumers,
        listener=notifications.Poller(
            db,
            notified(wakeups, dispatcher),
            interval=SQLITE_CHANGE_POLL_SECONDS,
            positions_topic=dispatch.POSITIONS_TOPIC,
        )
        if isinstance(db, peewee.SqliteDatabase)
        else notifications.Listener(db, notified(wakeups, dispatcher)),
    )
