"""In-process payment gateway for development and tests, driven by documented test tokens."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Generic, TypeVar

from server.payments.gateway import (
    Charge,
    ChargeStatus,
    PaymentOutcomeUnknown,
    PaymentProviderError,
    PaymentProviderUnavailable,
    Refund,
    check_charge_arguments,
    check_idempotency_key,
    check_refund_arguments,
    payment_declined,
    refund_exceeds_charge,
)


@dataclass(frozen=True)
class SandboxToken:
    """What the sandbox does when charged with one test token."""

    description: str
    status: ChargeStatus | None  # what is recorded; None: nothing is recorded
    decline_code: str | None = None
    raises_unknown: bool = False
    raises_unavailable: bool = False


# The documented test tokens (docs/payments.md lists the same table). Any other token
# is declined with `invalid_payment_method`.
TEST_TOKENS: dict[str, SandboxToken] = {
    "tok_visa": SandboxToken("succeeds", ChargeStatus.SUCCEEDED),
    "tok_mastercard": SandboxToken("succeeds", ChargeStatus.SUCCEEDED),
    "tok_declined": SandboxToken(
        "is declined with card_declined", ChargeStatus.DECLINED, "card_declined"
    ),
    "tok_insufficient_funds": SandboxToken(
        "is declined with insufficient_funds", ChargeStatus.DECLINED, "insufficient_funds"
    ),
    "tok_timeout": SandboxToken(
        "raises PaymentOutcomeUnknown on every call, but the charge succeeded: "
        "find_charge returns it as SUCCEEDED",
        ChargeStatus.SUCCEEDED,
        raises_unknown=True,
    ),
    "tok_timeout_declined": SandboxToken(
        "raises PaymentOutcomeUnknown on every call; find_charge returns it as DECLINED",
        ChargeStatus.DECLINED,
        "card_declined",
        raises_unknown=True,
    ),
    "tok_provider_down": SandboxToken(
        "raises PaymentProviderUnavailable and records nothing", None, raises_unavailable=True
    ),
}
_INVALID_TOKEN = SandboxToken(
    "is declined with invalid_payment_method", ChargeStatus.DECLINED, "invalid_payment_method"
)


T = TypeVar("T")


@dataclass(frozen=True)
class _Stored(Generic[T]):
    """A recorded outcome and the arguments that produced it (to detect a reused key)."""

    arguments: tuple[object, ...]
    result: T


class SandboxGateway:
    """A PaymentGateway that moves no money; state lives in this process only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._charges: dict[str, _Stored[Charge]] = {}
        self._charges_by_id: dict[str, Charge] = {}
        self._refunds: dict[str, _Stored[Refund]] = {}
        self._refunded_minor: dict[str, int] = {}

    def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        description: str,
    ) -> Charge:
        """Charges a test token; the same key and arguments give the same outcome."""
        check_charge_arguments(
            idempotency_key=idempotency_key,
            amount_minor=amount_minor,
            currency=currency,
            payment_method_token=payment_method_token,
            description=description,
        )
        token = TEST_TOKENS.get(payment_method_token, _INVALID_TOKEN)
        if token.raises_unavailable:
            raise PaymentProviderUnavailable("The payment provider is unavailable; retry later.")
        arguments = (amount_minor, currency, payment_method_token, description)
        with self._lock:
            stored = self._charges.get(idempotency_key)
            if stored is None:
                assert token.status is not None
                charge = Charge(
                    id=f"ch_sandbox_{uuid.uuid4().hex}",
                    idempotency_key=idempotency_key,
                    status=token.status,
                    amount_minor=amount_minor,
                    currency=currency,
                    decline_code=token.decline_code,
                )
                self._charges[idempotency_key] = _Stored(arguments, charge)
                self._charges_by_id[charge.id] = charge
            elif stored.arguments != arguments:
                raise PaymentProviderError(_reused_key_message("charge", idempotency_key))
            else:
                charge = stored.result
        if token.raises_unknown:
            raise PaymentOutcomeUnknown(
                "The payment outcome is not known yet.", idempotency_key=idempotency_key
            )
        if charge.status is ChargeStatus.DECLINED:
            raise payment_declined(charge.decline_code or "card_declined")
        return charge

    def refund(self, *, idempotency_key: str, charge_id: str, amount_minor: int) -> Refund:
        """Refunds part of a succeeded charge; the total never exceeds what it captured."""
        check_refund_arguments(
            idempotency_key=idempotency_key, charge_id=charge_id, amount_minor=amount_minor
        )
        arguments = (charge_id, amount_minor)
        with self._lock:
            stored = self._refunds.get(idempotency_key)
            if stored is not None:
                if stored.arguments != arguments:
                    raise PaymentProviderError(_reused_key_message("refund", idempotency_key))
                return stored.result
            charge = self._charges_by_id.get(charge_id)
            if charge is None:
                raise PaymentProviderError(f"the sandbox has no charge {charge_id!r} to refund")
            captured = charge.amount_minor if charge.status is ChargeStatus.SUCCEEDED else 0
            refunded = self._refunded_minor.get(charge_id, 0)
            if refunded + amount_minor > captured:
                raise refund_exceeds_charge(
                    charge_id=charge_id,
                    captured_minor=captured,
                    refunded_minor=refunded,
                    requested_minor=amount_minor,
                )
            refund = Refund(
                id=f"re_sandbox_{uuid.uuid4().hex}",
                idempotency_key=idempotency_key,
                charge_id=charge_id,
                amount_minor=amount_minor,
            )
            self._refunds[idempotency_key] = _Stored(arguments, refund)
            self._refunded_minor[charge_id] = refunded + amount_minor
            return refund

    def find_charge(self, *, idempotency_key: str) -> Charge | None:
        """Returns the charge recorded under `idempotency_key`, or None."""
        check_idempotency_key(idempotency_key)
        with self._lock:
            stored = self._charges.get(idempotency_key)
        return None if stored is None else stored.result

    def list_charges(self) -> list[Charge]:
        """Returns every recorded charge (succeeded and declined), oldest first."""
        with self._lock:
            return [stored.result for stored in self._charges.values()]

    def refunded_minor(self, charge_id: str) -> int:
        """Returns the total refunded so far on `charge_id`."""
        with self._lock:
            return self._refunded_minor.get(charge_id, 0)


def _reused_key_message(operation: str, key: str) -> str:
    return f"idempotency key {key!r} was already used for a {operation} with other arguments"
