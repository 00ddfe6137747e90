"""The PaymentGateway contract: what checkout may ask a payment provider and what can go wrong."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Protocol

from server.errors import FailedPrecondition, Unavailable

# The caller's idempotency key, e.g. "order:<uuid>" or "refund:<uuid>:2": printable and short
# enough to be sent as an HTTP header with a prefix (providers cap keys at 255 characters).
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
DESCRIPTION_MAX_LENGTH = 500
_CARD_NUMBER_PATTERN = re.compile(r"[0-9]{12,19}")
_CARD_NUMBER_SEPARATORS = str.maketrans("", "", " -_.")
_DECLINE_CODE_PATTERN = re.compile(r"[a-z0-9_]{1,64}")
# Messages safe to show a customer; the provider's own wording is not passed on.
_DECLINE_MESSAGES = {
    "card_declined": "The card was declined.",
    "insufficient_funds": "The card has insufficient funds.",
    "expired_card": "The card has expired.",
    "invalid_payment_method": "The payment method is not valid.",
}


class ChargeStatus(enum.Enum):
    """Where a charge ended at the provider."""

    SUCCEEDED = "succeeded"
    DECLINED = "declined"


@dataclass(frozen=True)
class Charge:
    """A charge as the provider recorded it; `decline_code` is set only when DECLINED."""

    id: str
    idempotency_key: str
    status: ChargeStatus
    amount_minor: int
    currency: str
    decline_code: str | None = None


@dataclass(frozen=True)
class Refund:
    """A refund of part or all of a succeeded charge."""

    id: str
    idempotency_key: str
    charge_id: str
    amount_minor: int


@dataclass
class PaymentDeclined(FailedPrecondition):
    """The provider refused the payment method; `code` says why (card_declined...). Never retry."""

    reason: str = "PAYMENT_DECLINED"
    code: str = "card_declined"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.metadata.setdefault("decline_code", self.code)


@dataclass
class RefundExceedsCharge(FailedPrecondition):
    """The refund would take the total refunded above what the charge captured."""

    reason: str = "REFUND_EXCEEDS_CHARGE"


@dataclass
class PaymentOutcomeUnknown(Unavailable):
    """The request may have reached the provider but no answer came back.

    The money may or may not have moved. Keep the order PENDING_PAYMENT with its stock reserved
    and reconcile later with `find_charge(idempotency_key=...)`, or repeat the call with the
    same key (the provider replays the first outcome instead of charging twice).
    """

    reason: str = "PAYMENT_OUTCOME_UNKNOWN"
    idempotency_key: str = ""


@dataclass
class PaymentProviderUnavailable(Unavailable):
    """The provider could not be reached, kept failing, or the circuit is open.

    Nothing was charged, or (at worst) a retry with the same idempotency key returns the charge
    that was made: it is safe to release the order's reservations or to retry later.
    """

    reason: str = "PAYMENT_PROVIDER_UNAVAILABLE"


class PaymentProviderError(Exception):
    """The provider refused the request itself (bad secret key, malformed request, reused key).

    A configuration error or a bug, not the customer's fault: the error interceptor reports it as
    INTERNAL and logs this message, which never contains the secret key.
    """


class PaymentProviderAuthError(PaymentProviderError):
    """The provider rejected storefront's secret key: nothing about the request itself, so a
    refund still owed is sent again once the key is mended."""


class PaymentGateway(Protocol):
    """Charges and refunds payment method tokens; implementations are thread-safe.

    Every mutation takes the caller's idempotency key: the same key with the same arguments
    returns (or raises) the first outcome and never moves money twice; the same key with other
    arguments raises PaymentProviderError.
    """

    def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        description: str,
    ) -> Charge:
        """Returns the succeeded charge; raises PaymentDeclined, PaymentOutcomeUnknown or
        PaymentProviderUnavailable."""
        ...

    def refund(self, *, idempotency_key: str, charge_id: str, amount_minor: int) -> Refund:
        """Returns the refund; raises RefundExceedsCharge, PaymentOutcomeUnknown or
        PaymentProviderUnavailable."""
        ...

    def find_charge(self, *, idempotency_key: str) -> Charge | None:
        """Returns the charge made under `idempotency_key` (succeeded or declined), or None."""
        ...


def clean_decline_code(raw: object) -> str:
    """Returns the provider's decline code if it is a plain code (lower-case letters, digits and
    '_', at most 64), else "card_declined": it is stored, logged and shown to the customer."""
    if isinstance(raw, str) and _DECLINE_CODE_PATTERN.fullmatch(raw):
        return raw
    return "card_declined"


def payment_declined(code: str) -> PaymentDeclined:
    """Returns the error for a decline with the provider's `code`."""
    code = clean_decline_code(code)
    return PaymentDeclined(_DECLINE_MESSAGES.get(code, "The card was declined."), code=code)


def refund_exceeds_charge(
    *, charge_id: str, captured_minor: int, refunded_minor: int, requested_minor: int
) -> RefundExceedsCharge:
    """Returns the error for a refund above what is left of a charge."""
    return RefundExceedsCharge(
        f"Cannot refund {requested_minor}: the charge captured {captured_minor} and "
        f"{refunded_minor} is already refunded.",
        metadata={
            "charge_id": charge_id,
            "captured_minor": str(captured_minor),
            "refunded_minor": str(refunded_minor),
            "requested_minor": str(requested_minor),
        },
    )


def check_charge_arguments(
    *,
    idempotency_key: str,
    amount_minor: int,
    currency: str,
    payment_method_token: str,
    description: str,
) -> None:
    """Raises ValueError for arguments no provider would accept; the domain validates first."""
    check_idempotency_key(idempotency_key)
    if amount_minor <= 0:
        raise ValueError(f"amount_minor must be positive, got {amount_minor}")
    if not CURRENCY_PATTERN.fullmatch(currency):
        raise ValueError(f"currency must be an upper-case ISO 4217 code, got {currency!r}")
    if not payment_method_token or not payment_method_token.isprintable():
        raise ValueError("payment_method_token must be a non-empty printable token")
    if looks_like_card_number(payment_method_token):
        # The value is not echoed: it may be a real card number.
        raise ValueError("payment_method_token looks like a card number; send a token instead")
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise ValueError(f"description must be at most {DESCRIPTION_MAX_LENGTH} characters")


def check_refund_arguments(*, idempotency_key: str, charge_id: str, amount_minor: int) -> None:
    """Raises ValueError for a refund no provider would accept."""
    check_idempotency_key(idempotency_key)
    if not charge_id:
        raise ValueError("charge_id must not be empty")
    if amount_minor <= 0:
        raise ValueError(f"amount_minor must be positive, got {amount_minor}")


def looks_like_card_number(value: str) -> bool:
    """Tells whether `value` is 12-19 digits, possibly grouped by spaces, dashes, underscores or
    dots (a PAN)."""
    return _CARD_NUMBER_PATTERN.fullmatch(value.translate(_CARD_NUMBER_SEPARATORS)) is not None


def check_idempotency_key(key: str) -> None:
    """Raises ValueError unless `key` matches IDEMPOTENCY_KEY_PATTERN."""
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise ValueError(
            "idempotency_key must be 1-200 characters of letters, digits and _.:- "
            f"starting with a letter or digit, got {key!r}"
        )
