"""Money arithmetic: exact conversion between currencies and parsing of decimal rate strings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal

from server.domain import currencies

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
RATE_MAX_SIGNIFICANT_DIGITS = 12
RATE_MIN = Decimal("0.000001")
RATE_MAX = Decimal("1000000000")
RATE_MAX_LENGTH = 32
# Digits shown for a cross rate (ConvertMoneyResponse.rate); the conversion uses the exact one.
DISPLAY_RATE_DIGITS = 12

_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units of an ISO 4217 currency."""

    currency_code: str
    amount_minor: int


class RateError(ValueError):
    """A rate string is not a valid exchange rate; the message says why."""


def parse_rate(text: str) -> Decimal:
    """Returns the exchange rate a plain decimal string ("0.9213") states; raises RateError.

    Accepted: digits with an optional fractional part, no sign, exponent, spaces or separators;
    positive; at most 12 significant digits; between RATE_MIN and RATE_MAX.
    """
    if not text:
        raise RateError("is required")
    if len(text) > RATE_MAX_LENGTH or not _PLAIN_DECIMAL.fullmatch(text):
        raise RateError('must be a plain decimal number such as "0.9213"')
    value = Decimal(text)
    if value <= 0:
        raise RateError("must be positive")
    if significant_digits(value) > RATE_MAX_SIGNIFICANT_DIGITS:
        raise RateError(f"must have at most {RATE_MAX_SIGNIFICANT_DIGITS} significant digits")
    if not RATE_MIN <= value <= RATE_MAX:
        raise RateError(f"must be between {RATE_MIN} and {RATE_MAX}")
    return value


def significant_digits(value: Decimal) -> int:
    """Returns the number of significant digits of a nonzero finite decimal."""
    return len(value.normalize().as_tuple().digits)


def format_rate(value: Decimal) -> str:
    """Returns a rate as a plain decimal string without trailing zeros ("0.92", "150")."""
    return format(value.normalize(), "f")


def decimal_text(amount_minor: int, currency: str) -> str:
    """Writes minor units as the decimal amount they are: 12345 EUR -> "123.45", 5 JPY -> "5"."""
    places = currencies.exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**places)
    return f"{sign}{whole}.{fraction:0{places}d}" if places else f"{sign}{whole}"


def _round_half_even(numerator: int, denominator: int) -> int:
    """Returns numerator / denominator (denominator > 0) rounded to an integer, half to even."""
    quotient, remainder = divmod(numerator, denominator)  # floor division: 0 <= remainder < d
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def _as_fraction(value: Decimal) -> tuple[int, int]:
    """Returns (numerator, denominator) with denominator a power of ten, exactly `value`."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    numerator = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if exponent >= 0:
        return numerator * 10**exponent, 1
    return numerator, 10**-exponent


def convert_minor(
    amount_minor: int,
    *,
    from_exponent: int,
    to_exponent: int,
    from_rate: Decimal,
    to_rate: Decimal,
) -> int:
    """Returns amount_minor / 10^from_exponent * to_rate / from_rate * 10^to_exponent, computed
    exactly and rounded once, half to even, to an integer (no int64 bound is applied here)."""
    to_num, to_den = _as_fraction(to_rate)
    from_num, from_den = _as_fraction(from_rate)
    if from_num <= 0 or to_num <= 0:
        raise ValueError("rates must be positive")
    numerator = amount_minor * to_num * from_den
    denominator = to_den * from_num
    shift = to_exponent - from_exponent
    if shift >= 0:
        numerator *= 10**shift
    else:
        denominator *= 10**-shift
    return _round_half_even(numerator, denominator)


def convert(money: Money, to_currency: str, *, from_rate: Decimal, to_rate: Decimal) -> Money:
    """Converts `money` to `to_currency` given both currencies' rates against the base currency.

    A currency converted to itself is returned unchanged, whatever the rates say. Raises KeyError
    for a currency without an ISO 4217 exponent and OverflowError when the result is not an int64.
    """
    if money.currency_code == to_currency:
        return money
    amount = convert_minor(
        money.amount_minor,
        from_exponent=currencies.exponent(money.currency_code),
        to_exponent=currencies.exponent(to_currency),
        from_rate=from_rate,
        to_rate=to_rate,
    )
    if not INT64_MIN <= amount <= INT64_MAX:
        raise OverflowError("the converted amount does not fit in an int64")
    return Money(to_currency, amount)


def cross_rate(*, from_rate: Decimal, to_rate: Decimal) -> Decimal:
    """Returns to_rate / from_rate rounded half to even to DISPLAY_RATE_DIGITS significant
    digits, for display."""
    context = Context(prec=DISPLAY_RATE_DIGITS, rounding=ROUND_HALF_EVEN)
    return context.divide(to_rate, from_rate)


def apply_rate(amount_minor: int, rate: Decimal) -> int:
    """Returns amount_minor times `rate` (a non-negative fraction such as a tax rate), computed
    exactly and rounded once, half to even, to an integer number of minor units."""
    numerator, denominator = _as_fraction(rate)
    if numerator < 0:
        raise ValueError("the rate must not be negative")
    return _round_half_even(amount_minor * numerator, denominator)
