"""Settings: defaults, and a one-line error naming the variable for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import DEFAULT_SHIPPING_RULES_FILE, VARIABLES, ConfigError, Settings


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
    }
    with pytest.raises(ConfigError, match="STOREFRONT_JWT_SIGNING_KEY_FILE: file not found"):
        Settings.from_env(env)
    key.write_text("x")
    secret.write_text("y" * 40)
    assert Settings.from_env(env).is_production
    with pytest.raises(ConfigError, match="STOREFRONT_PAYMENT_GATEWAY: sandbox moves no money"):
        Settings.from_env({**env, "STOREFRONT_PAYMENT_GATEWAY": "sandbox"})


def test_every_setting_field_read_from_the_environment_is_documented() -> None:
    names = {v.name for v in VARIABLES}
    assert len(names) == len(VARIABLES)
    source = Path("server/config.py").read_text()
    read = {word.strip('"') for word in source.split() if word.startswith('"STOREFRONT_')}
    assert {r.rstrip('",):') for r in read} <= names


def test_the_readme_documents_every_variable() -> None:
    readme = Path("README.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme]
    assert not missing
