"""The settings rules that tie several variables together, and the check that the files named
exist: `Settings.from_env` runs them once every variable has been read on its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.config_kinds import ConfigError, File, Files, Variable

if TYPE_CHECKING:
    from server.config import Settings

# Each Settings field's name and its variable, in the table's order.
Declared = Sequence[tuple[str, Variable]]


def payment_worst_case_seconds(
    *, connect_timeout: float, read_timeout: float, max_retries: int, backoff: float
) -> float:
    """Returns the longest a payment provider call can take: every attempt timing out, plus
    the retry pauses (each capped at 2 s)."""
    pauses = sum(min(backoff * 2.0**n, 2.0) for n in range(max_retries))
    return (1 + max_retries) * (connect_timeout + read_timeout) + pauses


def check_together(settings: Settings, given: set[str], declared: Declared) -> None:
    """Checks the rules that tie several variables together."""
    if settings.is_production:
        for _, variable in declared:
            kind = variable.kind
            if (
                isinstance(kind, File)
                and kind.generated_in_development
                and variable.name not in given
            ):
                raise ConfigError(f"{variable.name}: required in production")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError(
            "STOREFRONT_TLS_KEY_FILE: set both STOREFRONT_TLS_CERT_FILE and "
            "STOREFRONT_TLS_KEY_FILE, or neither"
        )
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError(
            "STOREFRONT_TLS_CLIENT_CA_FILE: mutual TLS needs "
            "STOREFRONT_TLS_CERT_FILE and STOREFRONT_TLS_KEY_FILE"
        )
    if settings.is_production and settings.email_transport == "file":
        raise ConfigError(
            "STOREFRONT_EMAIL_TRANSPORT: file is for development; production needs smtp or off"
        )
    if settings.smtp_user and settings.smtp_password_file is None:
        raise ConfigError("STOREFRONT_SMTP_PASSWORD_FILE: required with STOREFRONT_SMTP_USER")
    if settings.is_production:
        for name, value in (
            ("STOREFRONT_WEBHOOK_ALLOW_HTTP", settings.webhook_allow_http),
            (
                "STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
                settings.webhook_allow_private_addresses,
            ),
        ):
            if value:
                raise ConfigError(f"{name}: development only; refused in production")
    http = settings.payment_gateway == "http"
    if not http and settings.is_production:
        raise ConfigError(
            "STOREFRONT_PAYMENT_GATEWAY: sandbox moves no money; production needs http"
        )
    if http and not settings.payment_base_url:
        raise ConfigError("STOREFRONT_PAYMENT_BASE_URL: required when the gateway is http")
    if http and settings.payment_secret_key_file is None:
        raise ConfigError("STOREFRONT_PAYMENT_SECRET_KEY_FILE: required when the gateway is http")
    if http:
        worst = payment_worst_case_seconds(
            connect_timeout=settings.payment_connect_timeout_seconds,
            read_timeout=settings.payment_read_timeout_seconds,
            max_retries=settings.payment_max_retries,
            backoff=settings.payment_backoff_seconds,
        )
        # Asked earlier, the provider may not know yet of a charge still being sent, and the
        # order would be failed while its charge goes through.
        if settings.reconcile_after_seconds <= worst:
            raise ConfigError(
                f"STOREFRONT_RECONCILE_AFTER_SECONDS: must exceed the payment client's worst "
                f"case of {worst:g} s (attempts x (connect + read timeout) + pauses)"
            )
    if settings.reservation_ttl_seconds < settings.reconcile_after_seconds:
        raise ConfigError(
            "STOREFRONT_RESERVATION_TTL_SECONDS: must be at least "
            "STOREFRONT_RECONCILE_AFTER_SECONDS"
        )


def check_files_exist(settings: Settings, given: set[str], declared: Declared) -> None:
    """Checks that every file named exists (development keys are created when missing)."""
    for name, variable in declared:
        kind = variable.kind
        if variable.name not in given:
            continue
        if isinstance(kind, File) and (settings.is_production or not kind.generated_in_development):
            paths: tuple[Path, ...] = (getattr(settings, name),)
        elif isinstance(kind, Files):
            paths = getattr(settings, name)
        else:
            continue
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"{variable.name}: file not found: {path}")
