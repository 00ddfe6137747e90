"""Settings: every STOREFRONT_* variable declared once, as a field of `Settings`.

Each field names its variable, how the text is read (kind and bounds), its default and its help
line. `Settings.from_env` reads them in that order, `storefront serve --help` and the README's
configuration table (tests/unit/test_config.py keeps it equal) are rendered from them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from server import config_rules
from server.config_kinds import (
    VARIABLE_METADATA,
    Address,
    Boolean,
    Choice,
    ConfigError,
    DatabaseUrl,
    Derived,
    Directory,
    File,
    Files,
    Integer,
    Networks,
    Number,
    Pauses,
    Processes,
    RateLimit,
    RateLimitStorage,
    Text,
    Variable,
    variable,
)
from server.config_rules import payment_worst_case_seconds

# Re-exported: their users read them from here.
__all__ = ["ConfigError", "Variable", "payment_worst_case_seconds"]

# Files shipped with storefront (the default shipping rules, the demo catalog).
SHIPPED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_SHIPPING_RULES_FILE = SHIPPED_DATA_DIR / "shipping_rules.json"
DEFAULT_TAX_RATES_FILE = SHIPPED_DATA_DIR / "tax_rates.json"


# --- the declaration ---------------------------------------------------------------------------


def _shown(default: object) -> str:
    """Returns a default as the help and the README show it."""
    if default is None:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, Path) and default.is_relative_to(SHIPPED_DATA_DIR.parent):
        return f"{default.relative_to(SHIPPED_DATA_DIR.parent)} (shipped)"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _in_data_dir(name: str) -> Derived:
    return Derived(f"<data dir>/{name}", lambda values: values["data_dir"] / name)


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment, validated."""

    environment: str = field(
        default="development",
        metadata=variable(
            "STOREFRONT_ENVIRONMENT",
            Choice(("development", "production")),
            "Development generates missing keys; production requires them and the http gateway.",
        ),
    )
    data_dir: Path = field(
        default=Path("var"),
        metadata=variable(
            "STOREFRONT_DATA_DIR",
            Directory(),
            "Directory for the SQLite database and development keys.",
            shown="./var",
        ),
    )
    database_url: str = field(
        default="",
        metadata=variable(
            "STOREFRONT_DATABASE_URL",
            DatabaseUrl(),
            "sqlite:///path or psycopg3+pool://user:pass@host:port/db.",
            derived=Derived(
                "sqlite:///<data dir>/storefront.db",
                lambda values: f"sqlite:///{values['data_dir'] / 'storefront.db'}",
            ),
        ),
    )
    db_pool_size: int = field(
        default=20,
        metadata=variable(
            "STOREFRONT_DB_POOL_SIZE",
            Integer(1, 1000),
            "Maximum PostgreSQL connections per process.",
            derived=Derived("<worker threads + 4>", lambda values: values["worker_threads"] + 4),
        ),
    )
    grpc_address: str = field(
        default="127.0.0.1:50051",
        metadata=variable(
            "STOREFRONT_GRPC_ADDRESS", Address(), "host:port the gRPC server listens on."
        ),
    )
    metrics_address: str = field(
        default="127.0.0.1:9464",
        metadata=variable(
            "STOREFRONT_METRICS_ADDRESS",
            Address(optional=True),
            "host:port of the Prometheus /metrics endpoint; empty disables it.",
        ),
    )
    reflection: bool = field(
        default=True,
        metadata=variable(
            "STOREFRONT_REFLECTION", Boolean(), "Serve gRPC server reflection (v1alpha)."
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=variable(
            "STOREFRONT_LOG_LEVEL",
            Choice(("DEBUG", "INFO", "WARNING", "ERROR"), upper=True),
            "Least severe level logged.",
        ),
    )
    worker_threads: int = field(
        default=16,
        metadata=variable(
            "STOREFRONT_WORKER_THREADS", Integer(1, 512), "Threads serving RPCs in each process."
        ),
    )
    workers: int = field(
        default=1,
        metadata=variable(
            "STOREFRONT_WORKERS",
            Processes(256),
            "Processes serving the gRPC port under a supervisor (SO_REUSEPORT); auto is one per "
            "CPU; 1 serves in this one process; `serve --workers` overrides it.",
        ),
    )
    max_connection_age_seconds: float = field(
        default=30.0,
        metadata=variable(
            "STOREFRONT_MAX_CONNECTION_AGE_SECONDS",
            Number(0.0, 86400.0),
            "With several workers, age at which a client connection is asked to reconnect "
            "(GOAWAY), so long-lived clients spread over the workers; 0 never.",
        ),
    )
    max_connection_age_grace_seconds: float = field(
        default=60.0,
        metadata=variable(
            "STOREFRONT_MAX_CONNECTION_AGE_GRACE_SECONDS",
            Number(0.0, 3600.0),
            "With several workers, seconds the calls in progress on an aged connection get to "
            "finish (a checkout may wait on the payment provider) before it is closed.",
        ),
    )
    max_concurrent_rpcs: int = field(
        default=64,
        metadata=variable(
            "STOREFRONT_MAX_CONCURRENT_RPCS",
            Integer(1, 100_000),
            "Unary RPCs in progress per process before new ones get RESOURCE_EXHAUSTED (streams "
            "have their own cap, STOREFRONT_MAX_OPEN_STREAMS).",
        ),
    )
    max_open_streams: int = field(
        default=100,
        metadata=variable(
            "STOREFRONT_MAX_OPEN_STREAMS",
            Integer(0, 10_000),
            "Server streams (WatchOrder, WatchOrders) open at once per process, each with a "
            "worker thread of its own beyond the unary ones; more get RESOURCE_EXHAUSTED. 0 "
            "refuses every stream.",
        ),
    )
    watch_poll_seconds: float = field(
        default=5.0,
        metadata=variable(
            "STOREFRONT_WATCH_POLL_SECONDS",
            Number(0.05, 60.0),
            "How often an open stream re-reads on its own, a net for a missed wake-up: commits "
            "wake streams at once (PostgreSQL's notifications; on SQLite a poller per process "
            "that reads the outbox every 0.25 s).",
        ),
    )
    max_message_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=variable(
            "STOREFRONT_MAX_MESSAGE_BYTES",
            Integer(1024, 64 * 1024 * 1024),
            "Largest request or response message; larger is RESOURCE_EXHAUSTED.",
        ),
    )
    drain_seconds: float = field(
        default=0.0,
        metadata=variable(
            "STOREFRONT_DRAIN_SECONDS",
            Number(0.0, 300.0),
            "On SIGTERM, seconds health reports NOT_SERVING before the server stops accepting.",
        ),
    )
    shutdown_grace_seconds: float = field(
        default=10.0,
        metadata=variable(
            "STOREFRONT_SHUTDOWN_GRACE_SECONDS",
            Number(0.0, 600.0),
            "On SIGTERM, seconds in-flight RPCs get to finish.",
        ),
    )
    health_check_seconds: float = field(
        default=5.0,
        metadata=variable(
            "STOREFRONT_HEALTH_CHECK_SECONDS",
            Number(0.05, 300.0),
            "How often the database is pinged; health is NOT_SERVING while it is unreachable.",
        ),
    )
    jwt_issuer: str = field(
        default="storefront",
        metadata=variable(
            "STOREFRONT_JWT_ISSUER", Text(required=True), "iss claim of access tokens."
        ),
    )
    jwt_audience: str = field(
        default="storefront",
        metadata=variable(
            "STOREFRONT_JWT_AUDIENCE", Text(required=True), "aud claim of access tokens."
        ),
    )
    jwt_signing_key_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_JWT_SIGNING_KEY_FILE",
            File(generated_in_development=True),
            "Ed25519 private key (PEM) signing access tokens; generated in development only.",
            derived=_in_data_dir("jwt-signing-key.pem"),
        ),
    )
    jwt_verify_key_files: tuple[Path, ...] = field(
        default=(),
        metadata=variable(
            "STOREFRONT_JWT_VERIFY_KEY_FILES",
            Files(),
            "Comma-separated Ed25519 public keys (PEM) still accepted during a key rotation.",
        ),
    )
    access_token_ttl_seconds: int = field(
        default=900,
        metadata=variable(
            "STOREFRONT_ACCESS_TOKEN_TTL_SECONDS", Integer(60, 900), "Access token lifetime."
        ),
    )
    refresh_token_ttl_seconds: int = field(
        default=30 * 24 * 3600,
        metadata=variable(
            "STOREFRONT_REFRESH_TOKEN_TTL_SECONDS",
            Integer(3600, 90 * 24 * 3600),
            "Refresh token (session) lifetime.",
        ),
    )
    token_leeway_seconds: int = field(
        default=10,
        metadata=variable(
            "STOREFRONT_TOKEN_LEEWAY_SECONDS", Integer(0, 30), "Clock skew allowed on exp/iat."
        ),
    )
    page_token_secret_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_PAGE_TOKEN_SECRET_FILE",
            File(generated_in_development=True),
            "Secret (32+ bytes) signing page tokens; generated in development only.",
            derived=_in_data_dir("page-token.key"),
        ),
    )
    password_hash_concurrency: int = field(
        default=2,
        metadata=variable(
            "STOREFRONT_PASSWORD_HASH_CONCURRENCY",
            Integer(1, 64),
            "Password hashes computed at once per process (argon2id uses 19 MiB each).",
        ),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=variable(
            "STOREFRONT_TRUSTED_PROXIES",
            Networks(),
            "Comma-separated proxy addresses or CIDR ranges whose x-forwarded-for is believed; "
            "from any other peer the connection's own address is the client's.",
        ),
    )
    rate_limit_storage_url: str = field(
        default="memory://",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_STORAGE_URL",
            RateLimitStorage(),
            "Where rate-limit counters live: memory:// (one process) or redis://host:port/db "
            "(shared by every process); an unreachable Redis lets calls through (fail open).",
        ),
    )
    rate_limit_key_prefix: str = field(
        default="storefront",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_KEY_PREFIX",
            Text(required=True),
            "Prefix of the rate-limit keys in the storage; deployments sharing a Redis differ.",
        ),
    )
    rate_limit_sign_in: str = field(
        default="60/minute",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_SIGN_IN",
            RateLimit(),
            "Sign-in calls (Login, RegisterUser, RefreshSession, IssueServiceToken, "
            "ChangePassword) per caller.",
        ),
    )
    rate_limit_read: str = field(
        default="1200/minute",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_READ",
            RateLimit(),
            "Read calls (Get*, List*, Search*, BatchGet*, quotes and conversions) per caller.",
        ),
    )
    rate_limit_write: str = field(
        default="300/minute",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_WRITE",
            RateLimit(),
            "Other calls that change state per caller.",
        ),
    )
    rate_limit_checkout: str = field(
        default="30/minute",
        metadata=variable(
            "STOREFRONT_RATE_LIMIT_CHECKOUT",
            RateLimit(),
            "CheckoutService calls (PlaceOrder) per caller.",
        ),
    )
    shipping_rules_file: Path = field(
        default=DEFAULT_SHIPPING_RULES_FILE,
        metadata=variable(
            "STOREFRONT_SHIPPING_RULES_FILE",
            File(),
            "Shipping rules (JSON: zones, costs, free-shipping thresholds); checked at start-up.",
        ),
    )
    tax_rates_file: Path = field(
        default=DEFAULT_TAX_RATES_FILE,
        metadata=variable(
            "STOREFRONT_TAX_RATES_FILE",
            File(),
            "Tax rates per destination country (JSON); checked at start-up.",
        ),
    )
    payment_gateway: str = field(
        default="sandbox",
        metadata=variable(
            "STOREFRONT_PAYMENT_GATEWAY",
            Choice(("sandbox", "http")),
            "sandbox (in-process test tokens, no money) or http (a card-payment API); "
            "production refuses sandbox.",
        ),
    )
    payment_base_url: str = field(
        default="",
        metadata=variable(
            "STOREFRONT_PAYMENT_BASE_URL",
            Text(),
            "Payment provider base URL, required for http; https unless the host is loopback.",
        ),
    )
    payment_secret_key_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_PAYMENT_SECRET_KEY_FILE",
            File(),
            "File holding the payment provider's secret key, required for http.",
        ),
    )
    payment_connect_timeout_seconds: float = field(
        default=2.0,
        metadata=variable(
            "STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS",
            Number(0.05, 60.0),
            "Connect (and TLS handshake) timeout per payment provider attempt.",
        ),
    )
    payment_read_timeout_seconds: float = field(
        default=10.0,
        metadata=variable(
            "STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS",
            Number(0.05, 120.0),
            "Longest wait for each read of the payment provider's answer.",
        ),
    )
    payment_max_retries: int = field(
        default=2,
        metadata=variable(
            "STOREFRONT_PAYMENT_MAX_RETRIES",
            Integer(0, 5),
            "Payment provider retries after the first attempt (same Idempotency-Key).",
        ),
    )
    payment_backoff_seconds: float = field(
        default=0.25,
        metadata=variable(
            "STOREFRONT_PAYMENT_BACKOFF_SECONDS",
            Number(0.0, 2.0),
            "First retry pause ceiling (jittered); doubles per retry, capped at 2 s.",
        ),
    )
    payment_breaker_failures: int = field(
        default=5,
        metadata=variable(
            "STOREFRONT_PAYMENT_BREAKER_FAILURES",
            Integer(1, 1000),
            "Consecutive failed payment provider attempts that open the circuit breaker.",
        ),
    )
    payment_breaker_reset_seconds: float = field(
        default=30.0,
        metadata=variable(
            "STOREFRONT_PAYMENT_BREAKER_RESET_SECONDS",
            Number(0.1, 3600.0),
            "Seconds the circuit stays open before one trial call is let through.",
        ),
    )
    reconcile_interval_seconds: float = field(
        default=10.0,
        metadata=variable(
            "STOREFRONT_RECONCILE_INTERVAL_SECONDS",
            Number(0.0, 3600.0),
            "How often pending payments, expired reservations and pending refunds are handled; "
            "0 turns the in-process job off (run `storefront reconcile` instead).",
        ),
    )
    reconcile_after_seconds: float = field(
        default=60.0,
        metadata=variable(
            "STOREFRONT_RECONCILE_AFTER_SECONDS",
            Number(0.0, 86400.0),
            "Age of a charge attempt before the provider is asked for its outcome; must exceed the "
            "payment client's worst case.",
        ),
    )
    reservation_ttl_seconds: float = field(
        default=900.0,
        metadata=variable(
            "STOREFRONT_RESERVATION_TTL_SECONDS",
            Number(1.0, 7 * 86400.0),
            "Age at which an order still PENDING_PAYMENT releases its stock (PAYMENT_FAILED).",
        ),
    )
    dispatch_interval_seconds: float = field(
        default=1.0,
        metadata=variable(
            "STOREFRONT_DISPATCH_INTERVAL_SECONDS",
            Number(0.0, 3600.0),
            "How often outbox events are handed on (webhooks, e-mails) when nothing is due "
            "sooner; 0 turns the dispatcher off in this process.",
        ),
    )
    delivery_retry_schedule: tuple[float, ...] = field(
        default=(5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        metadata=variable(
            "STOREFRONT_DELIVERY_RETRY_SCHEDULE",
            Pauses(0.01, 86400.0, 20),
            "Pauses after each failed webhook or e-mail attempt. A webhook is parked after the "
            "last; an e-mail keeps retrying at the last pause (an SMTP outage never loses one).",
            shown="5,300,1800,7200,18000,36000,36000",
        ),
    )
    email_transport: str = field(
        default="file",
        metadata=variable(
            "STOREFRONT_EMAIL_TRANSPORT",
            Choice(("file", "smtp", "off")),
            "Order e-mails to customers: file writes .eml files under <data dir>/mail "
            "(development; refused in production), smtp sends them, off sends none.",
        ),
    )
    email_from: str = field(
        default="storefront <no-reply@storefront.local>",
        metadata=variable(
            "STOREFRONT_EMAIL_FROM", Text(required=True), "The From of order e-mails."
        ),
    )
    smtp_host: str = field(
        default="127.0.0.1",
        metadata=variable("STOREFRONT_SMTP_HOST", Text(required=True), "SMTP server host."),
    )
    smtp_port: int = field(
        default=587,
        metadata=variable("STOREFRONT_SMTP_PORT", Integer(1, 65535), "SMTP server port."),
    )
    smtp_security: str = field(
        default="starttls",
        metadata=variable(
            "STOREFRONT_SMTP_SECURITY",
            Choice(("starttls", "tls", "none")),
            "starttls (upgrade after connecting), tls (TLS from the start, port 465) or none "
            "(loopback tests only).",
        ),
    )
    smtp_user: str = field(
        default="",
        metadata=variable(
            "STOREFRONT_SMTP_USER", Text(), "SMTP user name; empty sends without logging in."
        ),
    )
    smtp_password_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_SMTP_PASSWORD_FILE", File(), "File holding the SMTP password."
        ),
    )
    webhook_timeout_seconds: float = field(
        default=10.0,
        metadata=variable(
            "STOREFRONT_WEBHOOK_TIMEOUT_SECONDS",
            Number(0.1, 60.0),
            "Connect and read timeout of each webhook request.",
        ),
    )
    webhook_allow_http: bool = field(
        default=False,
        metadata=variable(
            "STOREFRONT_WEBHOOK_ALLOW_HTTP",
            Boolean(),
            "Development only: allow plain http:// webhook URLs (refused in production).",
        ),
    )
    webhook_allow_private_addresses: bool = field(
        default=False,
        metadata=variable(
            "STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
            Boolean(),
            "Tests and development only: allow webhooks to private, loopback and link-local "
            "addresses (refused in production).",
        ),
    )
    tls_cert_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_TLS_CERT_FILE",
            File(),
            "Server certificate (PEM); enables TLS with the key.",
        ),
    )
    tls_key_file: Path | None = field(
        default=None,
        metadata=variable("STOREFRONT_TLS_KEY_FILE", File(), "Server private key (PEM)."),
    )
    tls_client_ca_file: Path | None = field(
        default=None,
        metadata=variable(
            "STOREFRONT_TLS_CLIENT_CA_FILE",
            File(),
            "CA bundle (PEM); when set, clients must present a certificate it signed (mTLS).",
        ),
    )

    @property
    def is_production(self) -> bool:
        """Whether development conveniences (generated keys) are off."""
        return self.environment == "production"

    @property
    def tls_enabled(self) -> bool:
        """Whether the gRPC port serves TLS."""
        return self.tls_cert_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates settings; raises ConfigError naming the first bad variable.

        Each variable is read and bounded in the table's order; then the rules that tie several
        together are checked, then that the files named exist.
        """
        env = os.environ if env is None else env
        unknown = sorted(
            k
            for k in env
            if k.startswith("STOREFRONT_")
            and k not in _BY_NAME
            and not k.startswith("STOREFRONT_TEST_")
        )
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (see `storefront serve --help`)")
        values: dict[str, Any] = {}
        given: set[str] = set()
        for name, spec in _FIELDS:
            raw = env.get(spec.name)
            text = None if raw is None else raw.strip()
            if text is None or (not text and spec.kind.empty_is_default):
                continue
            given.add(spec.name)
            try:
                values[name] = spec.kind.parse(text)
            except ValueError as exc:
                raise ConfigError(f"{spec.name}: {exc}") from None
        for name, spec in _FIELDS:
            if name not in values and spec.derived is not None:
                values[name] = spec.derived.compute(_with_defaults(values))
        settings = cls(**values)
        config_rules.check_together(settings, given, _FIELDS)
        config_rules.check_files_exist(settings, given, _FIELDS)
        return settings


def _declared() -> tuple[tuple[str, Variable], ...]:
    """Returns each field's name and variable, its shown default taken from the field's."""
    declared = []
    for f in fields(Settings):
        spec: Variable = f.metadata[VARIABLE_METADATA]
        if not spec.default:
            spec = replace(spec, default=_shown(f.default))
        declared.append((f.name, spec))
    return tuple(declared)


# Field name and variable, in the order of the table.
_FIELDS = _declared()
_BY_NAME = {variable.name: name for name, variable in _FIELDS}
# The variables in the order `storefront serve --help` and the README list them.
VARIABLES: tuple[Variable, ...] = tuple(variable for _, variable in _FIELDS)


def _with_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """Returns every field's value: the one read, else the field's own default."""
    return {f.name: values.get(f.name, f.default) for f in fields(Settings)}


# --- the table, rendered -----------------------------------------------------------------------


def variables_help(names: Sequence[str] | None = None) -> str:
    """Returns the variables (all, or those named) as a command's --help lists them."""
    shown = [v for v in VARIABLES if names is None or v.name in names]
    if names is not None and len(shown) != len(names):
        raise ValueError(f"unknown variables: {set(names) - {v.name for v in shown}}")
    width = max(len(v.name) for v in shown)
    lines = ["environment variables (allowed values in parentheses, default in brackets):"]
    for v in shown:
        allowed = f" ({v.kind.allowed})" if v.kind.allowed else ""
        default = f" [{v.default}]" if v.default else ""
        lines.append(f"  {v.name:<{width}}  {v.description}{allowed}{default}")
    return "\n".join(lines)


def markdown_table() -> str:
    """Returns the variables as the README's configuration table."""
    lines = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default else "(unset)"
        allowed = f"`{v.kind.allowed}`" if v.kind.allowed else ""
        lines.append(f"| `{v.name}` | {default} | {allowed} | {v.description} |")
    return "\n".join(lines)
