"""Payment gateways: charge and refund opaque payment method tokens, exactly once per key.

`PaymentGateway` (gateway.py) is the contract checkout uses; `SandboxGateway` (sandbox.py) is the
in-process default with documented test tokens; `HttpPaymentGateway` (http_gateway.py) talks to a
card-payment API with timeouts, retries under one Idempotency-Key and a `CircuitBreaker`
(circuit_breaker.py). How a caller treats each outcome:

- a returned Charge: the money is captured; record the order PAID with `charge.id`.
- PaymentDeclined (FAILED_PRECONDITION, PAYMENT_DECLINED): nothing captured; release the stock.
- PaymentProviderUnavailable (UNAVAILABLE): nothing captured; release, or retry with the same key.
- PaymentOutcomeUnknown (UNAVAILABLE if it escapes): keep the order PENDING_PAYMENT with its stock
  reserved; reconcile with `find_charge(idempotency_key=...)` or by charging again with the same
  key and arguments.
- PaymentProviderError (INTERNAL): configuration or bug, e.g. a wrong secret key.

Card numbers and CVVs never reach this package: it takes a provider token only, and rejects a
token that looks like a card number. docs/payments.md describes the HTTP contract and test tokens.
"""

from server.payments.circuit_breaker import CircuitBreaker, CircuitState
from server.payments.gateway import (
    Charge,
    ChargeStatus,
    PaymentDeclined,
    PaymentGateway,
    PaymentOutcomeUnknown,
    PaymentProviderAuthError,
    PaymentProviderError,
    PaymentProviderUnavailable,
    Refund,
    RefundExceedsCharge,
)
from server.payments.http_gateway import HttpPaymentGateway
from server.payments.sandbox import TEST_TOKENS, SandboxGateway

__all__ = [
    "TEST_TOKENS",
    "Charge",
    "ChargeStatus",
    "CircuitBreaker",
    "CircuitState",
    "HttpPaymentGateway",
    "PaymentDeclined",
    "PaymentGateway",
    "PaymentOutcomeUnknown",
    "PaymentProviderAuthError",
    "PaymentProviderError",
    "PaymentProviderUnavailable",
    "Refund",
    "RefundExceedsCharge",
    "SandboxGateway",
]
