"""Settings, read from STOREFRONT_* environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Files shipped with storefront (the default shipping rules, the demo catalog).
SHIPPED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_SHIPPING_RULES_FILE = SHIPPED_DATA_DIR / "shipping_rules.json"
DEFAULT_TAX_RATES_FILE = SHIPPED_DATA_DIR / "tax_rates.json"


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


@dataclass(frozen=True)
class Variable:
    """One documented environment variable."""

    name: str
    default: str
    description: str


# The documented variables, in the order `storefront serve --help` and the README list them.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "STOREFRONT_ENVIRONMENT",
        "development",
        "development or production; production requires explicit keys and secrets.",
    ),
    Variable(
        "STOREFRONT_DATA_DIR", "./var", "Directory for the SQLite database and development keys."
    ),
    Variable(
        "STOREFRONT_DATABASE_URL",
        "sqlite:///<data dir>/storefront.db",
        "sqlite:///path or psycopg3+pool://user:pass@host:port/db.",
    ),
    Variable(
        "STOREFRONT_DB_POOL_SIZE",
        "<worker threads + 4>",
        "Maximum PostgreSQL connections per process.",
    ),
    Variable("STOREFRONT_GRPC_ADDRESS", "127.0.0.1:50051", "host:port the gRPC server listens on."),
    Variable(
        "STOREFRONT_METRICS_ADDRESS",
        "127.0.0.1:9464",
        "host:port of the Prometheus /metrics endpoint; empty disables it.",
    ),
    Variable("STOREFRONT_REFLECTION", "true", "Serve gRPC server reflection (v1alpha)."),
    Variable("STOREFRONT_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Variable("STOREFRONT_WORKER_THREADS", "16", "Threads serving RPCs in each process."),
    Variable(
        "STOREFRONT_MAX_CONCURRENT_RPCS",
        "64",
        "RPCs in progress per process before new ones get RESOURCE_EXHAUSTED.",
    ),
    Variable(
        "STOREFRONT_MAX_MESSAGE_BYTES",
        "4194304",
        "Largest request or response message; larger is RESOURCE_EXHAUSTED.",
    ),
    Variable(
        "STOREFRONT_DRAIN_SECONDS",
        "0",
        "On SIGTERM, seconds health reports NOT_SERVING before the server stops accepting.",
    ),
    Variable(
        "STOREFRONT_SHUTDOWN_GRACE_SECONDS",
        "10",
        "On SIGTERM, seconds in-flight RPCs get to finish.",
    ),
    Variable(
        "STOREFRONT_HEALTH_CHECK_SECONDS",
        "5",
        "How often the database is pinged; health is NOT_SERVING while it is unreachable.",
    ),
    Variable("STOREFRONT_JWT_ISSUER", "storefront", "iss claim of access tokens."),
    Variable("STOREFRONT_JWT_AUDIENCE", "storefront", "aud claim of access tokens."),
    Variable(
        "STOREFRONT_JWT_SIGNING_KEY_FILE",
        "<data dir>/jwt-signing-key.pem",
        "Ed25519 private key (PEM) signing access tokens; generated in development only.",
    ),
    Variable(
        "STOREFRONT_JWT_VERIFY_KEY_FILES",
        "",
        "Comma-separated Ed25519 public keys (PEM) still accepted during a key rotation.",
    ),
    Variable("STOREFRONT_ACCESS_TOKEN_TTL_SECONDS", "900", "Access token lifetime, 60..900."),
    Variable(
        "STOREFRONT_REFRESH_TOKEN_TTL_SECONDS",
        "2592000",
        "Refresh token (session) lifetime, 3600..7776000.",
    ),
    Variable("STOREFRONT_TOKEN_LEEWAY_SECONDS", "10", "Clock skew allowed on exp/iat, 0..30."),
    Variable(
        "STOREFRONT_PAGE_TOKEN_SECRET_FILE",
        "<data dir>/page-token.key",
        "Secret (32+ bytes) signing page tokens; generated in development only.",
    ),
    Variable(
        "STOREFRONT_PASSWORD_HASH_CONCURRENCY",
        "2",
        "Password hashes computed at once per process (argon2id uses 19 MiB each).",
    ),
    Variable(
        "STOREFRONT_SHIPPING_RULES_FILE",
        "data/shipping_rules.json (shipped)",
        "Shipping rules (JSON: zones, costs, free-shipping thresholds); checked at start-up.",
    ),
    Variable(
        "STOREFRONT_TAX_RATES_FILE",
        "data/tax_rates.json (shipped)",
        "Tax rates per destination country (JSON); checked at start-up.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_GATEWAY",
        "sandbox",
        "sandbox (in-process test tokens, no money) or http (a card-payment API); "
        "production refuses sandbox.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_BASE_URL",
        "",
        "Payment provider base URL, required for http; https unless the host is loopback.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_SECRET_KEY_FILE",
        "",
        "File holding the payment provider's secret key, required for http.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS",
        "2",
        "Connect (and TLS handshake) timeout per payment provider attempt.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS",
        "10",
        "Longest wait for each read of the payment provider's answer.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_MAX_RETRIES",
        "2",
        "Payment provider retries after the first attempt (same Idempotency-Key), 0..5.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_BACKOFF_SECONDS",
        "0.25",
        "First retry pause ceiling (jittered); doubles per retry, capped at 2 s.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_BREAKER_FAILURES",
        "5",
        "Consecutive failed payment provider attempts that open the circuit breaker.",
    ),
    Variable(
        "STOREFRONT_PAYMENT_BREAKER_RESET_SECONDS",
        "30",
        "Seconds the circuit stays open before one trial call is let through.",
    ),
    Variable(
        "STOREFRONT_RECONCILE_INTERVAL_SECONDS",
        "10",
        "How often pending payments, expired reservations and pending refunds are handled; "
        "0 turns the in-process job off (run `storefront reconcile` instead).",
    ),
    Variable(
        "STOREFRONT_RECONCILE_AFTER_SECONDS",
        "60",
        "Age of a charge attempt before the provider is asked for its outcome; must exceed the "
        "payment client's worst case.",
    ),
    Variable(
        "STOREFRONT_RESERVATION_TTL_SECONDS",
        "900",
        "Age at which an order still PENDING_PAYMENT releases its stock (PAYMENT_FAILED).",
    ),
    Variable("STOREFRONT_TLS_CERT_FILE", "", "Server certificate (PEM); enables TLS with the key."),
    Variable("STOREFRONT_TLS_KEY_FILE", "", "Server private key (PEM)."),
    Variable(
        "STOREFRONT_TLS_CLIENT_CA_FILE",
        "",
        "CA bundle (PEM); when set, clients must present a certificate it signed (mTLS).",
    ),
)

_KNOWN_NAMES = frozenset(v.name for v in VARIABLES)


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment, validated."""

    environment: str = "development"
    data_dir: Path = Path("var")
    database_url: str = ""
    db_pool_size: int = 20
    grpc_address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9464"
    reflection: bool = True
    log_level: str = "INFO"
    worker_threads: int = 16
    max_concurrent_rpcs: int = 64
    max_message_bytes: int = 4 * 1024 * 1024
    drain_seconds: float = 0.0
    shutdown_grace_seconds: float = 10.0
    health_check_seconds: float = 5.0
    jwt_issuer: str = "storefront"
    jwt_audience: str = "storefront"
    jwt_signing_key_file: Path | None = None
    jwt_verify_key_files: tuple[Path, ...] = ()
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    token_leeway_seconds: int = 10
    page_token_secret_file: Path | None = None
    password_hash_concurrency: int = 2
    shipping_rules_file: Path = DEFAULT_SHIPPING_RULES_FILE
    tax_rates_file: Path = DEFAULT_TAX_RATES_FILE
    payment_gateway: str = "sandbox"
    payment_base_url: str = ""
    payment_secret_key_file: Path | None = None
    payment_connect_timeout_seconds: float = 2.0
    payment_read_timeout_seconds: float = 10.0
    payment_max_retries: int = 2
    payment_backoff_seconds: float = 0.25
    payment_breaker_failures: int = 5
    payment_breaker_reset_seconds: float = 30.0
    reconcile_interval_seconds: float = 10.0
    reconcile_after_seconds: float = 60.0
    reservation_ttl_seconds: float = 900.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

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
        """Reads and validates settings; raises ConfigError naming the first bad variable."""
        env = os.environ if env is None else env
        unknown = sorted(
            k
            for k in env
            if k.startswith("STOREFRONT_")
            and k not in _KNOWN_NAMES
            and not k.startswith("STOREFRONT_TEST_")
        )
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting (see `storefront serve --help`)")
        r = _Reader(env)
        environment = r.choice(
            "STOREFRONT_ENVIRONMENT", "development", ("development", "production")
        )
        data_dir = Path(r.text("STOREFRONT_DATA_DIR", "./var"))
        worker_threads = r.integer("STOREFRONT_WORKER_THREADS", 16, 1, 512)
        database_url = r.text("STOREFRONT_DATABASE_URL", f"sqlite:///{data_dir / 'storefront.db'}")
        if not database_url.startswith(
            ("sqlite:", "psycopg3+pool:", "psycopg3:", "postgresql:", "postgres:")
        ):
            raise ConfigError(
                "STOREFRONT_DATABASE_URL: scheme must be sqlite:// or psycopg3+pool://"
            )
        production = environment == "production"
        signing_key = r.path("STOREFRONT_JWT_SIGNING_KEY_FILE")
        if signing_key is None and production:
            raise ConfigError("STOREFRONT_JWT_SIGNING_KEY_FILE: required in production")
        page_secret = r.path("STOREFRONT_PAGE_TOKEN_SECRET_FILE")
        if page_secret is None and production:
            raise ConfigError("STOREFRONT_PAGE_TOKEN_SECRET_FILE: required in production")
        tls_cert = r.path("STOREFRONT_TLS_CERT_FILE")
        tls_key = r.path("STOREFRONT_TLS_KEY_FILE")
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError(
                "STOREFRONT_TLS_KEY_FILE: set both STOREFRONT_TLS_CERT_FILE and "
                "STOREFRONT_TLS_KEY_FILE, or neither"
            )
        client_ca = r.path("STOREFRONT_TLS_CLIENT_CA_FILE")
        if client_ca is not None and tls_cert is None:
            raise ConfigError(
                "STOREFRONT_TLS_CLIENT_CA_FILE: mutual TLS needs "
                "STOREFRONT_TLS_CERT_FILE and STOREFRONT_TLS_KEY_FILE"
            )
        shipping_rules = r.path("STOREFRONT_SHIPPING_RULES_FILE")
        tax_rates = r.path("STOREFRONT_TAX_RATES_FILE")
        payment = _payment_settings(r, production)
        for name, path in (
            ("STOREFRONT_SHIPPING_RULES_FILE", shipping_rules),
            ("STOREFRONT_TAX_RATES_FILE", tax_rates),
            ("STOREFRONT_PAYMENT_SECRET_KEY_FILE", payment["payment_secret_key_file"]),
            ("STOREFRONT_TLS_CERT_FILE", tls_cert),
            ("STOREFRONT_TLS_KEY_FILE", tls_key),
            ("STOREFRONT_TLS_CLIENT_CA_FILE", client_ca),
            ("STOREFRONT_JWT_SIGNING_KEY_FILE", signing_key if production else None),
            ("STOREFRONT_PAGE_TOKEN_SECRET_FILE", page_secret if production else None),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: file not found: {path}")
        verify_files = tuple(
            Path(p.strip())
            for p in r.text("STOREFRONT_JWT_VERIFY_KEY_FILES", "").split(",")
            if p.strip()
        )
        for path in verify_files:
            if not path.is_file():
                raise ConfigError(f"STOREFRONT_JWT_VERIFY_KEY_FILES: file not found: {path}")
        return cls(
            environment=environment,
            data_dir=data_dir,
            database_url=database_url,
            db_pool_size=r.integer("STOREFRONT_DB_POOL_SIZE", worker_threads + 4, 1, 1000),
            grpc_address=r.address("STOREFRONT_GRPC_ADDRESS", "127.0.0.1:50051"),
            metrics_address=r.address(
                "STOREFRONT_METRICS_ADDRESS", "127.0.0.1:9464", allow_empty=True
            ),
            reflection=r.boolean("STOREFRONT_REFLECTION", True),
            log_level=r.choice(
                "STOREFRONT_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True
            ),
            worker_threads=worker_threads,
            max_concurrent_rpcs=r.integer("STOREFRONT_MAX_CONCURRENT_RPCS", 64, 1, 100_000),
            max_message_bytes=r.integer(
                "STOREFRONT_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, 1024, 64 * 1024 * 1024
            ),
            drain_seconds=r.number("STOREFRONT_DRAIN_SECONDS", 0.0, 0.0, 300.0),
            shutdown_grace_seconds=r.number("STOREFRONT_SHUTDOWN_GRACE_SECONDS", 10.0, 0.0, 600.0),
            health_check_seconds=r.number("STOREFRONT_HEALTH_CHECK_SECONDS", 5.0, 0.05, 300.0),
            jwt_issuer=r.text("STOREFRONT_JWT_ISSUER", "storefront", required=True),
            jwt_audience=r.text("STOREFRONT_JWT_AUDIENCE", "storefront", required=True),
            jwt_signing_key_file=signing_key or data_dir / "jwt-signing-key.pem",
            jwt_verify_key_files=verify_files,
            access_token_ttl_seconds=r.integer("STOREFRONT_ACCESS_TOKEN_TTL_SECONDS", 900, 60, 900),
            refresh_token_ttl_seconds=r.integer(
                "STOREFRONT_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600, 3600, 90 * 24 * 3600
            ),
            token_leeway_seconds=r.integer("STOREFRONT_TOKEN_LEEWAY_SECONDS", 10, 0, 30),
            page_token_secret_file=page_secret or data_dir / "page-token.key",
            password_hash_concurrency=r.integer("STOREFRONT_PASSWORD_HASH_CONCURRENCY", 2, 1, 64),
            shipping_rules_file=shipping_rules or DEFAULT_SHIPPING_RULES_FILE,
            tax_rates_file=tax_rates or DEFAULT_TAX_RATES_FILE,
            **payment,
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            tls_client_ca_file=client_ca,
        )


def payment_worst_case_seconds(
    *, connect_timeout: float, read_timeout: float, max_retries: int, backoff: float
) -> float:
    """Returns the longest a payment provider call can take: every attempt timing out, plus
    the retry pauses (each capped at 2 s)."""
    pauses = sum(min(backoff * 2.0**n, 2.0) for n in range(max_retries))
    return (1 + max_retries) * (connect_timeout + read_timeout) + pauses


def _payment_settings(r: _Reader, production: bool) -> dict[str, Any]:
    """Reads the payment gateway and reconciliation variables; checks they fit together."""
    gateway = r.choice("STOREFRONT_PAYMENT_GATEWAY", "sandbox", ("sandbox", "http"))
    if gateway == "sandbox" and production:
        raise ConfigError(
            "STOREFRONT_PAYMENT_GATEWAY: sandbox moves no money; production needs http"
        )
    base_url = r.text("STOREFRONT_PAYMENT_BASE_URL", "")
    secret_file = r.path("STOREFRONT_PAYMENT_SECRET_KEY_FILE")
    if gateway == "http" and not base_url:
        raise ConfigError("STOREFRONT_PAYMENT_BASE_URL: required when the gateway is http")
    if gateway == "http" and secret_file is None:
        raise ConfigError("STOREFRONT_PAYMENT_SECRET_KEY_FILE: required when the gateway is http")
    values: dict[str, Any] = {
        "payment_gateway": gateway,
        "payment_base_url": base_url,
        "payment_secret_key_file": secret_file,
        "payment_connect_timeout_seconds": r.number(
            "STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS", 2.0, 0.05, 60.0
        ),
        "payment_read_timeout_seconds": r.number(
            "STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS", 10.0, 0.05, 120.0
        ),
        "payment_max_retries": r.integer("STOREFRONT_PAYMENT_MAX_RETRIES", 2, 0, 5),
        "payment_backoff_seconds": r.number("STOREFRONT_PAYMENT_BACKOFF_SECONDS", 0.25, 0.0, 2.0),
        "payment_breaker_failures": r.integer("STOREFRONT_PAYMENT_BREAKER_FAILURES", 5, 1, 1000),
        "payment_breaker_reset_seconds": r.number(
            "STOREFRONT_PAYMENT_BREAKER_RESET_SECONDS", 30.0, 0.1, 3600.0
        ),
        "reconcile_interval_seconds": r.number(
            "STOREFRONT_RECONCILE_INTERVAL_SECONDS", 10.0, 0.0, 3600.0
        ),
        "reconcile_after_seconds": r.number(
            "STOREFRONT_RECONCILE_AFTER_SECONDS", 60.0, 0.0, 86400.0
        ),
        "reservation_ttl_seconds": r.number(
            "STOREFRONT_RESERVATION_TTL_SECONDS", 900.0, 1.0, 7 * 86400.0
        ),
    }
    if gateway == "http":
        worst = payment_worst_case_seconds(
            connect_timeout=values["payment_connect_timeout_seconds"],
            read_timeout=values["payment_read_timeout_seconds"],
            max_retries=values["payment_max_retries"],
            backoff=values["payment_backoff_seconds"],
        )
        # Asked earlier, the provider may not know yet of a charge still being sent, and the
        # order would be failed while its charge goes through.
        if values["reconcile_after_seconds"] <= worst:
            raise ConfigError(
                f"STOREFRONT_RECONCILE_AFTER_SECONDS: must exceed the payment client's worst "
                f"case of {worst:g} s (attempts x (connect + read timeout) + pauses)"
            )
    if values["reservation_ttl_seconds"] < values["reconcile_after_seconds"]:
        raise ConfigError(
            "STOREFRONT_RESERVATION_TTL_SECONDS: must be at least "
            "STOREFRONT_RECONCILE_AFTER_SECONDS"
        )
    return values


class _Reader:
    """Parses typed values out of the environment with one-line errors."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str, *, required: bool = False) -> str:
        value = self.env.get(name, default).strip()
        if required and not value:
            raise ConfigError(f"{name}: must not be empty")
        return value

    def path(self, name: str) -> Path | None:
        value = self.env.get(name, "").strip()
        return Path(value) if value else None

    def _parse(self, name: str, default: Any, parse: Callable[[str], Any], expected: str) -> Any:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {expected}, got {raw!r}") from None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value: int = self._parse(name, default, int, "an integer")
        if not low <= value <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value: float = self._parse(name, default, float, "a number")
        if not low <= value <= high:
            raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)

        result: bool = self._parse(name, default, parse, "true or false")
        return result

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False
    ) -> str:
        value = self.env.get(name, "").strip() or default
        if upper:
            value = value.upper()
        if value not in allowed:
            raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def address(self, name: str, default: str, *, allow_empty: bool = False) -> str:
        value = self.env.get(name, default).strip()
        if not value and allow_empty:
            return ""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{name}: expected host:port, got {value!r}")
        return value
