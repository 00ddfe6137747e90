"""A PaymentGateway over a card-payment HTTP API (charges, refunds, lookup by idempotency key)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.payments.circuit_breaker import CircuitBreaker
from server.payments.gateway import (
    Charge,
    ChargeStatus,
    PaymentOutcomeUnknown,
    PaymentProviderAuthError,
    PaymentProviderError,
    PaymentProviderUnavailable,
    Refund,
    RefundExceedsCharge,
    check_charge_arguments,
    check_idempotency_key,
    check_refund_arguments,
    clean_decline_code,
    payment_declined,
)

log = logging.getLogger("storefront.payments")

# How one attempt ends, and what the gateway does next (docs/payments.md has the contract):
# - Connection refused, connect timeout, TLS handshake failure, 408, 429, 503: the provider did
#   not process the request. Retry; when retries run out -> PaymentProviderUnavailable.
# - Read timeout or connection lost after the request was sent, 409 (same key in flight), 500,
#   502, 504 and other 5xx: the provider may have processed it. Retry with the same
#   Idempotency-Key (it replays the first outcome); when retries run out -> PaymentOutcomeUnknown.
#   Once one attempt may have been processed, only a definite answer clears that.
# - 2xx, 402 and other 4xx: a definite answer, never retried. 401/403 and unexpected 4xx are
#   PaymentProviderError (configuration or bug), 402 is PaymentDeclined.
# Every attempt passes through the circuit breaker: failures of the first two kinds count; an
# open breaker ends the call at once with no network traffic.

_NOT_PROCESSED_STATUSES = frozenset({408, 429, 503})
_MAYBE_PROCESSED_STATUSES = frozenset({409})
_MAX_RESPONSE_BYTES = 1024 * 1024
_LOOPBACK_NAMES = frozenset({"localhost"})


class _NotSent(Exception):
    """The attempt failed before the request could have reached the provider."""


class _MaybeSent(Exception):
    """The attempt failed after the request may have reached the provider."""


@dataclass(frozen=True)
class _Response:
    status: int
    body: Mapping[str, Any] | None  # None when the body is not a JSON object


class HttpPaymentGateway:
    """Talks to the provider at `base_url` with bounded timeouts, retries and a circuit breaker."""

    def __init__(
        self,
        *,
        base_url: str,
        secret_key: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_retries: int = 2,
        backoff_seconds: float = 0.25,
        backoff_cap_seconds: float = 2.0,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"payment base URL must be http(s)://host[:port], got {base_url!r}")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("payment base URL must use https unless the host is loopback")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("payment base URL must not carry a query, fragment or credentials")
        if not secret_key or not secret_key.isprintable() or any(c.isspace() for c in secret_key):
            raise ValueError("payment secret key must be non-empty, printable, without spaces")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("payment timeouts must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path_prefix = parts.path.rstrip("/")
        self.__secret_key = secret_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.backoff_cap_seconds = backoff_cap_seconds
        self.breaker = breaker or CircuitBreaker()
        self._sleep = sleep
        self._jitter = jitter
        self._ssl_context = ssl_context
        if self._https and ssl_context is None:
            self._ssl_context = ssl.create_default_context()

    def __repr__(self) -> str:
        return f"HttpPaymentGateway(base_url={self.base_url!r})"

    def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        description: str,
    ) -> Charge:
        """Creates a charge; retries reuse one Idempotency-Key so money moves at most once."""
        check_charge_arguments(
            idempotency_key=idempotency_key,
            amount_minor=amount_minor,
            currency=currency,
            payment_method_token=payment_method_token,
            description=description,
        )
        response = self._call(
            "POST",
            "/v1/charges",
            form={
                "amount": str(amount_minor),
                "currency": currency.lower(),
                "source": payment_method_token,
                "description": description,
            },
            idempotency_header=charge_idempotency_header(idempotency_key),
            caller_key=idempotency_key,
        )
        if response.status == 402:
            raise payment_declined(_error_field(response, "decline_code", "code"))
        self._raise_for_refusal(response, "charge")
        charge = _parse_charge(response.body, idempotency_key)
        if charge is None:
            raise self._unreadable_success("charge", idempotency_key)
        if charge.status is ChargeStatus.DECLINED:
            raise payment_declined(charge.decline_code or "card_declined")
        return charge

    def refund(self, *, idempotency_key: str, charge_id: str, amount_minor: int) -> Refund:
        """Refunds part or all of a charge; the provider refuses to exceed what it captured."""
        check_refund_arguments(
            idempotency_key=idempotency_key, charge_id=charge_id, amount_minor=amount_minor
        )
        response = self._call(
            "POST",
            "/v1/refunds",
            form={"charge": charge_id, "amount": str(amount_minor)},
            idempotency_header=refund_idempotency_header(idempotency_key),
            caller_key=idempotency_key,
        )
        if response.status == 400 and _error_field(response, "code") in (
            "amount_too_large",
            "charge_already_refunded",
        ):
            raise RefundExceedsCharge(
                f"Cannot refund {amount_minor}: it exceeds what is left of the charge.",
                metadata={"charge_id": charge_id, "requested_minor": str(amount_minor)},
            )
        self._raise_for_refusal(response, "refund")
        body = response.body or {}
        refund_id, refunded = body.get("id"), body.get("amount")
        if not isinstance(refund_id, str) or not isinstance(refunded, int):
            raise self._unreadable_success("refund", idempotency_key)
        return Refund(
            id=refund_id,
            idempotency_key=idempotency_key,
            charge_id=charge_id,
            amount_minor=refunded,
        )

    def find_charge(self, *, idempotency_key: str) -> Charge | None:
        """Returns the charge the provider holds under `idempotency_key`, or None."""
        check_idempotency_key(idempotency_key)
        query = urllib.parse.urlencode(
            {"idempotency_key": charge_idempotency_header(idempotency_key)}
        )
        response = self._call(
            "GET", f"/v1/charges?{query}", form=None, idempotency_header=None, caller_key=None
        )
        self._raise_for_refusal(response, "charge lookup")
        data = (response.body or {}).get("data")
        if not isinstance(data, list) or len(data) > 1:
            raise PaymentProviderError("payment provider: unexpected charge lookup response")
        if not data:
            return None
        charge = _parse_charge(data[0], idempotency_key)
        if charge is None:
            raise PaymentProviderError("payment provider: unexpected charge in lookup response")
        return charge

    def _call(
        self,
        method: str,
        path: str,
        *,
        form: Mapping[str, str] | None,
        idempotency_header: str | None,
        caller_key: str | None,
    ) -> _Response:
        """Sends one request with retries; returns the first definite answer."""
        operation = f"{method} {path.partition('?')[0]}"
        headers = {
            "Authorization": f"Bearer {self.__secret_key}",
            "Accept": "application/json",
        }
        body: bytes | None = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        # Only a request that can move money (a POST under a key) has an unknown outcome.
        mutates = idempotency_header is not None and caller_key is not None
        if idempotency_header is not None:
            headers["Idempotency-Key"] = idempotency_header
        maybe_processed = False
        problem = ""
        for attempt in range(1, self.max_retries + 2):
            if attempt > 1:
                self._sleep(self._backoff(attempt - 1))
            if not self.breaker.allow():
                problem = "circuit breaker open"
                break
            try:
                response = self._attempt(method, path, body, headers)
            except _NotSent as exc:
                problem = str(exc)
            except _MaybeSent as exc:
                problem = str(exc)
                maybe_processed = True
            except BaseException:
                self.breaker.record_failure()
                raise
            else:
                if response.status in _NOT_PROCESSED_STATUSES:
                    problem = f"HTTP {response.status}"
                elif response.status >= 500 or response.status in _MAYBE_PROCESSED_STATUSES:
                    problem = f"HTTP {response.status}"
                    maybe_processed = True
                else:
                    self.breaker.record_success()
                    return response
            self.breaker.record_failure()
            log.warning(
                "payment provider attempt failed",
                extra={
                    "payment.operation": operation,
                    "payment.attempt": attempt,
                    "payment.idempotency_key": caller_key,
                    "error": problem,
                },
            )
        log.warning(
            "payment provider call gave up",
            extra={
                "payment.operation": operation,
                "payment.idempotency_key": caller_key,
                "payment.outcome": "unknown" if maybe_processed and mutates else "not_processed",
                "error": problem,
            },
        )
        if maybe_processed and mutates and caller_key is not None:
            raise PaymentOutcomeUnknown(
                "The payment provider did not confirm the outcome; it will be reconciled.",
                idempotency_key=caller_key,
            )
        raise PaymentProviderUnavailable("The payment provider is unavailable; retry later.")

    def _attempt(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> _Response:
        """Makes one HTTP exchange on a fresh connection; raises _NotSent or _MaybeSent."""
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout, context=self._ssl_context
            )
        else:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self.connect_timeout
            )
        try:
            try:
                connection.connect()
            except OSError as exc:
                raise _NotSent(f"connect: {_describe(exc)}") from None
            assert connection.sock is not None
            connection.sock.settimeout(self.read_timeout)
            try:
                connection.request(method, self._path_prefix + path, body=body, headers=headers)
                raw = connection.getresponse()
                data = raw.read(_MAX_RESPONSE_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise _MaybeSent(f"exchange: {_describe(exc)}") from None
        finally:
            connection.close()
        return _Response(raw.status, _json_object(data))

    def _backoff(self, retry: int) -> float:
        """Returns the pause before retry number `retry` (1, 2...): exponential, half jittered."""
        ceiling: float = min(self.backoff_cap_seconds, self.backoff_seconds * 2.0 ** (retry - 1))
        return ceiling / 2 + self._jitter() * ceiling / 2

    def _raise_for_refusal(self, response: _Response, what: str) -> None:
        """Raises PaymentProviderError for any definite answer that is not a 2xx."""
        if 200 <= response.status < 300:
            return
        if response.status in (401, 403):
            raise PaymentProviderAuthError(
                f"payment provider rejected the secret key (HTTP {response.status}); "
                "check STOREFRONT_PAYMENT_SECRET_KEY_FILE"
            )
        error_type = _error_field(response, "type") or "unknown"
        code = _error_field(response, "code") or "unknown"
        raise PaymentProviderError(
            f"payment provider refused the {what}: HTTP {response.status}, "
            f"type {error_type}, code {code}"
        )

    def _unreadable_success(self, what: str, key: str) -> PaymentOutcomeUnknown:
        """Returns the error for a 2xx whose body cannot be read: the money may have moved."""
        log.error(
            "payment provider sent an unreadable success",
            extra={"payment.operation": what, "payment.idempotency_key": key},
        )
        return PaymentOutcomeUnknown(
            "The payment provider did not confirm the outcome; it will be reconciled.",
            idempotency_key=key,
        )


def charge_idempotency_header(key: str) -> str:
    """Returns the Idempotency-Key header sent for a charge under the caller's `key`."""
    return f"charge:{key}"


def refund_idempotency_header(key: str) -> str:
    """Returns the Idempotency-Key header sent for a refund under the caller's `key`."""
    return f"refund:{key}"


def _parse_charge(body: object, key: str) -> Charge | None:
    """Returns the Charge in a provider charge object, or None if it is malformed."""
    if not isinstance(body, Mapping):
        return None
    charge_id, amount, currency, status = (
        body.get("id"),
        body.get("amount"),
        body.get("currency"),
        body.get("status"),
    )
    if not (
        isinstance(charge_id, str)
        and isinstance(amount, int)
        and isinstance(currency, str)
        and status in ("succeeded", "failed")
    ):
        return None
    failure_code = body.get("failure_code")
    decline_code = clean_decline_code(failure_code) if status == "failed" else None
    return Charge(
        id=charge_id,
        idempotency_key=key,
        status=ChargeStatus.SUCCEEDED if status == "succeeded" else ChargeStatus.DECLINED,
        amount_minor=amount,
        currency=currency.upper(),
        decline_code=decline_code,
    )


def _error_field(response: _Response, *names: str) -> str:
    """Returns the first non-empty string among error.<name> in the response body, or ""."""
    error = (response.body or {}).get("error")
    if isinstance(error, Mapping):
        for name in names:
            value = error.get(name)
            if isinstance(value, str) and value:
                return value
    return ""


def _json_object(data: bytes) -> Mapping[str, Any] | None:
    if len(data) > _MAX_RESPONSE_BYTES:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
