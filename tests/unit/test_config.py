"""Settings: defaults, and a one-line error naming the variable for every bad value."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from server.app import build_payment_gateway
from server.config import (
    DEFAULT_SHIPPING_RULES_FILE,
    DEFAULT_TAX_RATES_FILE,
    VARIABLES,
    ConfigError,
    Settings,
    markdown_table,
    payment_worst_case_seconds,
    variables_help,
)
from server.config_kinds import available_cpus


def test_defaults_serve_development_on_sqlite_in_var() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "development"
    assert settings.database_url == "sqlite:///var/storefront.db"
    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.metrics_address == "127.0.0.1:9464"
    assert settings.reflection is True
    assert settings.access_token_ttl_seconds == 900
    assert settings.jwt_signing_key_file == Path("var/jwt-signing-key.pem")
    assert not settings.tls_enabled
    assert settings.shipping_rules_file == DEFAULT_SHIPPING_RULES_FILE
    assert DEFAULT_SHIPPING_RULES_FILE.is_file()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STOREFRONT_ACCESS_TOKEN_TTL_SECONDS": "5000"}, "STOREFRONT_ACCESS_TOKEN_TTL_SECONDS"),
        ({"STOREFRONT_ACCESS_TOKEN_TTL_SECONDS": "soon"}, "STOREFRONT_ACCESS_TOKEN_TTL_SECONDS"),
        ({"STOREFRONT_TOKEN_LEEWAY_SECONDS": "31"}, "STOREFRONT_TOKEN_LEEWAY_SECONDS"),
        ({"STOREFRONT_GRPC_ADDRESS": "nonsense"}, "STOREFRONT_GRPC_ADDRESS"),
        ({"STOREFRONT_GRPC_ADDRESS": "127.0.0.1:99999"}, "STOREFRONT_GRPC_ADDRESS"),
        ({"STOREFRONT_REFLECTION": "maybe"}, "STOREFRONT_REFLECTION"),
        ({"STOREFRONT_LOG_LEVEL": "LOUD"}, "STOREFRONT_LOG_LEVEL"),
        ({"STOREFRONT_ENVIRONMENT": "staging"}, "STOREFRONT_ENVIRONMENT"),
        ({"STOREFRONT_DATABASE_URL": "mysql://x/y"}, "STOREFRONT_DATABASE_URL"),
        ({"STOREFRONT_WORKER_THREADS": "0"}, "STOREFRONT_WORKER_THREADS"),
        ({"STOREFRONT_ENVIRONMENT": "production"}, "STOREFRONT_JWT_SIGNING_KEY_FILE"),
        ({"STOREFRONT_TLS_CERT_FILE": "/tmp/cert.pem"}, "STOREFRONT_TLS_KEY_FILE"),
        ({"STOREFRONT_TLS_CLIENT_CA_FILE": "/tmp/ca.pem"}, "STOREFRONT_TLS_CLIENT_CA_FILE"),
        (
            {"STOREFRONT_JWT_VERIFY_KEY_FILES": "/nonexistent.pem"},
            "STOREFRONT_JWT_VERIFY_KEY_FILES",
        ),
        (
            {"STOREFRONT_SHIPPING_RULES_FILE": "/nonexistent/rules.json"},
            "STOREFRONT_SHIPPING_RULES_FILE",
        ),
        ({"STOREFRONT_TYPO": "1"}, "STOREFRONT_TYPO"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_production_needs_existing_key_files(tmp_path: Path) -> None:
    key = tmp_path / "jwt.pem"
    secret = tmp_path / "page.key"
    payment_secret = tmp_path / "payment.key"
    payment_secret.write_text("sk_live_x")
    env = {
        "STOREFRONT_ENVIRONMENT": "production",
        "STOREFRONT_JWT_SIGNING_KEY_FILE": str(key),
        "STOREFRONT_PAGE_TOKEN_SECRET_FILE": str(secret),
        "STOREFRONT_PAYMENT_GATEWAY": "http",
        "STOREFRONT_PAYMENT_BASE_URL": "https://payments.example.com",
        "STOREFRONT_PAYMENT_SECRET_KEY_FILE": str(payment_secret),
        "STOREFRONT_EMAIL_TRANSPORT": "smtp",
    }
    with pytest.raises(ConfigError, match="STOREFRONT_JWT_SIGNING_KEY_FILE: file not found"):
        Settings.from_env(env)
    key.write_text("x")
    secret.write_text("y" * 40)
    assert Settings.from_env(env).is_production
    with pytest.raises(ConfigError, match="STOREFRONT_PAYMENT_GATEWAY: sandbox moves no money"):
        Settings.from_env({**env, "STOREFRONT_PAYMENT_GATEWAY": "sandbox"})


def test_every_settings_field_is_read_from_one_variable() -> None:
    names = [v.name for v in VARIABLES]
    assert len(set(names)) == len(names) == len(fields(Settings))
    assert all(name.startswith("STOREFRONT_") for name in names)
    assert all(v.description.endswith(".") for v in VARIABLES)


def test_without_variables_every_field_has_its_declared_default() -> None:
    from_env = Settings.from_env({})
    derived = {
        "database_url": "sqlite:///var/storefront.db",
        "db_pool_size": 16 + 4,
        "jwt_signing_key_file": Path("var/jwt-signing-key.pem"),
        "page_token_secret_file": Path("var/page-token.key"),
    }
    for f in fields(Settings):
        assert getattr(from_env, f.name) == derived.get(f.name, f.default), f.name


def test_derived_defaults_follow_the_variables_they_depend_on(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"STOREFRONT_DATA_DIR": str(tmp_path), "STOREFRONT_WORKER_THREADS": "30"}
    )
    assert settings.db_pool_size == 34
    assert settings.database_url == f"sqlite:///{tmp_path}/storefront.db"
    assert settings.jwt_signing_key_file == tmp_path / "jwt-signing-key.pem"
    assert settings.page_token_secret_file == tmp_path / "page-token.key"
    explicit = Settings.from_env(
        {"STOREFRONT_WORKER_THREADS": "30", "STOREFRONT_DB_POOL_SIZE": "5"}
    )
    assert explicit.db_pool_size == 5


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        # An empty value means the default for most variables...
        ("STOREFRONT_WORKER_THREADS", "worker_threads", 16),
        ("STOREFRONT_LOG_LEVEL", "log_level", "INFO"),
        ("STOREFRONT_REFLECTION", "reflection", True),
        ("STOREFRONT_TLS_CERT_FILE", "tls_cert_file", None),
        # ...and itself where it means something: no metrics endpoint.
        ("STOREFRONT_METRICS_ADDRESS", "metrics_address", ""),
    ],
)
def test_an_empty_value(variable: str, field: str, value: object) -> None:
    assert getattr(Settings.from_env({variable: " "}), field) == value


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("STOREFRONT_GRPC_ADDRESS", "STOREFRONT_GRPC_ADDRESS: expected host:port, got ''"),
        ("STOREFRONT_JWT_ISSUER", "STOREFRONT_JWT_ISSUER: must not be empty"),
        (
            "STOREFRONT_DATABASE_URL",
            "STOREFRONT_DATABASE_URL: scheme must be sqlite:// or psycopg3+pool://",
        ),
    ],
)
def test_an_empty_value_is_refused_where_it_means_nothing(variable: str, message: str) -> None:
    assert config_error({variable: ""}) == message


def test_the_readme_table_is_the_table_in_config() -> None:
    readme = Path("README.md").read_text()
    section = readme[readme.index("\n## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == markdown_table(), (
        "README.md's configuration table differs from server/config.py; replace it with the "
        "output of: .venv/bin/python -c 'from server.config import markdown_table as t; print(t())'"
    )


def test_serve_help_lists_every_variable_with_its_default_and_bounds() -> None:
    lines = variables_help().splitlines()[1:]
    assert [line.split()[0] for line in lines] == [v.name for v in VARIABLES]
    [ttl] = [line for line in lines if "STOREFRONT_ACCESS_TOKEN_TTL_SECONDS" in line]
    assert ttl.endswith("Access token lifetime. (60..900) [900]")


# --- payment and reconciliation settings ---------------------------------------------------------


def http_gateway_env(tmp_path: Path, **changes: str) -> dict[str, str]:
    """An http gateway configuration that is valid unless `changes` break it."""
    secret = tmp_path / "payment.key"
    secret.write_text("sk_test_config")
    env = {
        "STOREFRONT_PAYMENT_GATEWAY": "http",
        "STOREFRONT_PAYMENT_BASE_URL": "https://payments.example.com",
        "STOREFRONT_PAYMENT_SECRET_KEY_FILE": str(secret),
    }
    return env | changes


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_payment_defaults_are_the_sandbox_and_the_documented_values() -> None:
    settings = Settings.from_env({})
    assert settings.payment_gateway == "sandbox"
    assert (settings.payment_base_url, settings.payment_secret_key_file) == ("", None)
    assert settings.payment_connect_timeout_seconds == 2.0
    assert settings.payment_read_timeout_seconds == 10.0
    assert settings.payment_max_retries == 2
    assert settings.payment_backoff_seconds == 0.25
    assert settings.payment_breaker_failures == 5
    assert settings.payment_breaker_reset_seconds == 30.0
    assert settings.reconcile_interval_seconds == 10.0
    assert settings.reconcile_after_seconds == 60.0
    assert settings.reservation_ttl_seconds == 900.0
    assert settings.tax_rates_file == DEFAULT_TAX_RATES_FILE
    assert DEFAULT_TAX_RATES_FILE.is_file()
    documented = {v.name: v.default for v in VARIABLES}
    assert documented["STOREFRONT_PAYMENT_GATEWAY"] == "sandbox"
    assert documented["STOREFRONT_RECONCILE_AFTER_SECONDS"] == "60"
    assert documented["STOREFRONT_RESERVATION_TTL_SECONDS"] == "900"


def test_the_default_http_settings_fit_together(tmp_path: Path) -> None:
    settings = Settings.from_env(http_gateway_env(tmp_path))
    assert settings.payment_gateway == "http"
    assert settings.payment_base_url == "https://payments.example.com"
    assert settings.payment_secret_key_file == tmp_path / "payment.key"
    # The default reconcile_after (60 s) exceeds the default worst case (36.75 s).
    assert settings.reconcile_after_seconds > payment_worst_case_seconds(
        connect_timeout=2.0, read_timeout=10.0, max_retries=2, backoff=0.25
    )


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("STOREFRONT_PAYMENT_BASE_URL", "STOREFRONT_PAYMENT_BASE_URL"),
        ("STOREFRONT_PAYMENT_SECRET_KEY_FILE", "STOREFRONT_PAYMENT_SECRET_KEY_FILE"),
    ],
)
def test_http_needs_a_base_url_and_a_secret_key_file(
    tmp_path: Path, missing: str, variable: str
) -> None:
    env = http_gateway_env(tmp_path)
    del env[missing]
    assert config_error(env) == f"{variable}: required when the gateway is http"
    assert config_error({**env, missing: "  "}).startswith(f"{variable}:")


def test_a_missing_secret_key_file_is_named(tmp_path: Path) -> None:
    env = http_gateway_env(
        tmp_path, STOREFRONT_PAYMENT_SECRET_KEY_FILE=str(tmp_path / "nowhere.key")
    )
    assert config_error(env).startswith("STOREFRONT_PAYMENT_SECRET_KEY_FILE: file not found")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOREFRONT_PAYMENT_GATEWAY", "stripe"),
        ("STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS", "0"),
        ("STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS", "-1"),
        ("STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS", "soon"),
        ("STOREFRONT_PAYMENT_MAX_RETRIES", "6"),
        ("STOREFRONT_PAYMENT_MAX_RETRIES", "-1"),
        ("STOREFRONT_PAYMENT_BACKOFF_SECONDS", "3"),
        ("STOREFRONT_PAYMENT_BREAKER_FAILURES", "0"),
        ("STOREFRONT_PAYMENT_BREAKER_RESET_SECONDS", "0"),
        ("STOREFRONT_RECONCILE_INTERVAL_SECONDS", "-1"),
        ("STOREFRONT_RECONCILE_AFTER_SECONDS", "-1"),
        ("STOREFRONT_RESERVATION_TTL_SECONDS", "0"),
    ],
)
def test_payment_values_out_of_range_name_the_variable(variable: str, value: str) -> None:
    assert config_error({variable: value}).startswith(f"{variable}:")


@pytest.mark.parametrize(
    ("overrides", "worst"),
    [
        ({}, 36.75),  # 3 x (2 + 10) + 0.25 + 0.5
        ({"STOREFRONT_PAYMENT_MAX_RETRIES": "0"}, 12.0),
        (
            {
                "STOREFRONT_PAYMENT_MAX_RETRIES": "5",
                "STOREFRONT_PAYMENT_BACKOFF_SECONDS": "1",
            },
            6 * 12 + 1 + 2 + 2 + 2 + 2,  # pauses capped at 2 s
        ),
        (
            {
                "STOREFRONT_PAYMENT_CONNECT_TIMEOUT_SECONDS": "0.5",
                "STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS": "1.5",
                "STOREFRONT_PAYMENT_BACKOFF_SECONDS": "0",
            },
            6.0,
        ),
    ],
)
def test_reconcile_after_must_exceed_the_payment_clients_worst_case(
    tmp_path: Path, overrides: dict[str, str], worst: float
) -> None:
    env = http_gateway_env(tmp_path, **overrides)
    at_worst = {**env, "STOREFRONT_RECONCILE_AFTER_SECONDS": repr(worst)}
    message = config_error(at_worst)
    assert message.startswith("STOREFRONT_RECONCILE_AFTER_SECONDS: must exceed")
    assert f"worst case of {worst:g} s" in message
    above = {**env, "STOREFRONT_RECONCILE_AFTER_SECONDS": repr(worst + 0.01)}
    assert Settings.from_env(above).reconcile_after_seconds == worst + 0.01


def test_the_sandbox_has_no_worst_case_to_wait_for() -> None:
    settings = Settings.from_env(
        {"STOREFRONT_RECONCILE_AFTER_SECONDS": "0", "STOREFRONT_RESERVATION_TTL_SECONDS": "1"}
    )
    assert (settings.reconcile_after_seconds, settings.reservation_ttl_seconds) == (0.0, 1.0)


def test_the_reservation_ttl_is_at_least_reconcile_after(tmp_path: Path) -> None:
    env = http_gateway_env(tmp_path, STOREFRONT_RECONCILE_AFTER_SECONDS="120")
    message = config_error({**env, "STOREFRONT_RESERVATION_TTL_SECONDS": "119"})
    assert message.startswith("STOREFRONT_RESERVATION_TTL_SECONDS: must be at least")
    assert "STOREFRONT_RECONCILE_AFTER_SECONDS" in message
    assert config_error(
        {"STOREFRONT_RECONCILE_AFTER_SECONDS": "61", "STOREFRONT_RESERVATION_TTL_SECONDS": "60"}
    ).startswith("STOREFRONT_RESERVATION_TTL_SECONDS:")
    equal = Settings.from_env({**env, "STOREFRONT_RESERVATION_TTL_SECONDS": "120"})
    assert equal.reservation_ttl_seconds == equal.reconcile_after_seconds == 120.0


def test_production_refuses_the_sandbox(tmp_path: Path) -> None:
    key, page = tmp_path / "jwt.pem", tmp_path / "page.key"
    key.write_text("x")
    page.write_text("y" * 40)
    production = {
        "STOREFRONT_ENVIRONMENT": "production",
        "STOREFRONT_JWT_SIGNING_KEY_FILE": str(key),
        "STOREFRONT_PAGE_TOKEN_SECRET_FILE": str(page),
        "STOREFRONT_EMAIL_TRANSPORT": "off",
    }
    for gateway in ({}, {"STOREFRONT_PAYMENT_GATEWAY": "sandbox"}):
        assert config_error(production | gateway).startswith("STOREFRONT_PAYMENT_GATEWAY:")
    assert Settings.from_env(production | http_gateway_env(tmp_path)).payment_gateway == "http"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"STOREFRONT_EMAIL_TRANSPORT": "file"},
            "STOREFRONT_EMAIL_TRANSPORT: file is for development",
        ),
        (
            {"STOREFRONT_WEBHOOK_ALLOW_HTTP": "true"},
            "STOREFRONT_WEBHOOK_ALLOW_HTTP: development only",
        ),
        (
            {"STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"},
            "STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES: development only",
        ),
    ],
)
def test_production_refuses_development_delivery_settings(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    key, page = tmp_path / "jwt.pem", tmp_path / "page.key"
    key.write_text("x")
    page.write_text("y" * 40)
    production = {
        "STOREFRONT_ENVIRONMENT": "production",
        "STOREFRONT_JWT_SIGNING_KEY_FILE": str(key),
        "STOREFRONT_PAGE_TOKEN_SECRET_FILE": str(page),
        "STOREFRONT_EMAIL_TRANSPORT": "smtp",
    } | http_gateway_env(tmp_path)
    assert Settings.from_env(production).email_transport == "smtp"
    assert config_error(production | changes).startswith(message)


def test_an_smtp_user_needs_a_password_file() -> None:
    assert config_error({"STOREFRONT_SMTP_USER": "shop"}).startswith(
        "STOREFRONT_SMTP_PASSWORD_FILE: required"
    )


def test_the_retry_schedule_is_a_list_of_pauses() -> None:
    schedule = {"STOREFRONT_DELIVERY_RETRY_SCHEDULE": "0.5, 30,600"}
    assert Settings.from_env(schedule).delivery_retry_schedule == (0.5, 30.0, 600.0)
    for bad in ("1,x", "0", "1,,2", ",".join(["1"] * 21)):
        message = config_error({"STOREFRONT_DELIVERY_RETRY_SCHEDULE": bad})
        assert message.startswith("STOREFRONT_DELIVERY_RETRY_SCHEDULE:"), message


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"STOREFRONT_PAYMENT_BASE_URL": "http://payments.example.com"}, "BASE_URL"),
        ({"STOREFRONT_PAYMENT_BASE_URL": "ftp://payments.example.com"}, "BASE_URL"),
        ({"STOREFRONT_PAYMENT_BASE_URL": "https://user:pw@payments.example.com"}, "BASE_URL"),
    ],
)
def test_an_unusable_base_url_is_refused_when_the_gateway_is_built(
    tmp_path: Path, changes: dict[str, str], variable: str
) -> None:
    settings = Settings.from_env(http_gateway_env(tmp_path, **changes))
    with pytest.raises(ConfigError) as caught:
        build_payment_gateway(settings)
    assert str(caught.value).startswith(f"STOREFRONT_PAYMENT_{variable}:")


def test_an_unusable_secret_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    settings = Settings.from_env(http_gateway_env(tmp_path))
    assert settings.payment_secret_key_file is not None
    settings.payment_secret_key_file.write_text("sk_live two words")
    with pytest.raises(ConfigError) as caught:
        build_payment_gateway(settings)
    message = str(caught.value)
    assert message.startswith("STOREFRONT_PAYMENT_SECRET_KEY_FILE:")
    assert "sk_live" not in message and "two words" not in message
    settings.payment_secret_key_file.write_text("sk_live_secret_value\n")
    gateway = build_payment_gateway(settings)
    assert "sk_live_secret_value" not in repr(gateway)


def test_a_payment_client_slower_than_a_checkouts_claim_is_refused(tmp_path: Path) -> None:
    # 3 attempts x (2 + 20 s) = 66 s: a retry would take over a checkout still waiting on it.
    settings = Settings.from_env(
        http_gateway_env(
            tmp_path,
            STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS="20",
            STOREFRONT_RECONCILE_AFTER_SECONDS="120",
        )
    )
    with pytest.raises(ConfigError, match=r"STOREFRONT_PAYMENT_READ_TIMEOUT_SECONDS: .* below 60"):
        build_payment_gateway(settings)


@pytest.mark.parametrize(
    ("value", "workers"), [("", 1), ("1", 1), ("4", 4), ("auto", min(available_cpus(), 256))]
)
def test_workers_are_one_process_by_default_and_auto_is_one_per_cpu(
    value: str, workers: int
) -> None:
    assert Settings.from_env({"STOREFRONT_WORKERS": value}).workers == workers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "STOREFRONT_WORKERS: must be between 1 and 256, got 0"),
        ("many", "STOREFRONT_WORKERS: expected an integer, got 'many'"),
    ],
)
def test_a_bad_worker_count_is_refused(value: str, message: str) -> None:
    assert config_error({"STOREFRONT_WORKERS": value}) == message
