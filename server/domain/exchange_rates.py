"""Exchange rates: the supported currencies, conversion with the current rates, rate updates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from server.db import database, utcnow
from server.domain import currencies, money
from server.domain.money import Money
from server.domain.principal import Principal
from server.errors import FieldViolation, InvalidArgument
from server.models import exchange_rate as rate_rows
from server.models.exchange_rate import ExchangeRate
from server.validation import Validator

# Every rate is the number of units of its currency that one unit of the base currency buys.
BASE_CURRENCY = "USD"
UPDATE_MAX_RATES = 200


@dataclass(frozen=True)
class Rate:
    """A supported currency's rate against the base currency, and when and by whom it was set."""

    currency_code: str
    rate: Decimal
    update_time: dt.datetime
    updated_by: str

    @property
    def exponent(self) -> int:
        """Returns the number of decimal places of the currency's minor unit."""
        return currencies.exponent(self.currency_code)

    @property
    def is_base(self) -> bool:
        """Whether this is the base currency's rate (always 1)."""
        return self.currency_code == BASE_CURRENCY


@dataclass(frozen=True)
class Conversion:
    """An amount converted with two rates against the base currency."""

    converted: Money
    source_rate: Rate
    target_rate: Rate

    @property
    def cross_rate(self) -> Decimal:
        """Returns units of the target currency per unit of the source, rounded for display."""
        if self.source_rate.currency_code == self.target_rate.currency_code:
            return Decimal(1)
        return money.cross_rate(from_rate=self.source_rate.rate, to_rate=self.target_rate.rate)

    @property
    def rate_update_time(self) -> dt.datetime:
        """Returns when the rate used was last set: the later of the two update times."""
        return max(self.source_rate.update_time, self.target_rate.update_time)


def _rate_of(row: ExchangeRate) -> Rate:
    return Rate(
        currency_code=row.currency_code,
        rate=Decimal(row.rate),
        update_time=row.update_time,
        updated_by=row.updated_by,
    )


def normalize_code(raw: str) -> str:
    """Returns a currency code as stored: stripped and upper-case."""
    return raw.strip().upper()


def list_() -> list[Rate]:
    """Returns the rate of every supported currency, by code."""
    return [_rate_of(row) for row in rate_rows.all_by_code()]


def rates(codes: Collection[str]) -> dict[str, Rate]:
    """Returns the rates of those of `codes` that are supported, by code."""
    return {code: _rate_of(row) for code, row in rate_rows.by_code(codes).items()}


def is_supported(code: str) -> bool:
    """Whether `code` has an exchange rate."""
    return bool(rate_rows.by_code([code]))


def check_code(v: Validator, path: str, raw: str) -> str:
    """Records a violation unless `raw` is an ISO 4217 code; returns it normalised."""
    code = normalize_code(raw)
    if not code:
        v.add(path, "is required")
    elif not currencies.is_known(code):
        v.add(path, "unknown currency; use an ISO 4217 code such as USD")
    return code


def supported_rates(v: Validator, codes_by_path: Mapping[str, str]) -> dict[str, Rate]:
    """Records a violation for each field whose (valid ISO 4217) code has no rate; returns the
    rates found, by code. Codes that are not ISO 4217 codes are not looked up: `check_code` has
    already recorded them, and a caller's arbitrary text never reaches a query."""
    known = {path: code for path, code in codes_by_path.items() if currencies.is_known(code)}
    found = rates(set(known.values()))
    for path, code in known.items():
        if code not in found:
            v.add(
                path,
                f"currency {code} is not supported; ListCurrencies lists the supported ones",
            )
    return found


def convert_with(found: Mapping[str, Rate], amount: Money, target_currency: str) -> Money:
    """Converts `amount` with rates already looked up; raises OverflowError beyond int64."""
    if amount.currency_code == target_currency:
        return amount
    return money.convert(
        amount,
        target_currency,
        from_rate=found[amount.currency_code].rate,
        to_rate=found[target_currency].rate,
    )


def convert(*, amount: Money, target_currency: str) -> Conversion:
    """Converts `amount` to `target_currency` with the current rates (see money.convert_minor)."""
    v = Validator()
    source = check_code(v, "money.currency_code", amount.currency_code)
    target = check_code(v, "target_currency_code", target_currency)
    v.raise_if_any()
    paths = {"money.currency_code": source}
    if target != source:
        paths["target_currency_code"] = target
    found = supported_rates(v, paths)
    v.raise_if_any()
    try:
        converted = convert_with(found, Money(source, amount.amount_minor), target)
    except OverflowError:
        raise InvalidArgument(
            "The converted amount is too large.",
            violations=[
                FieldViolation("money.amount_minor", "the converted amount does not fit in int64")
            ],
        ) from None
    return Conversion(converted=converted, source_rate=found[source], target_rate=found[target])


def update(entries: Sequence[tuple[str, str]], *, actor: Principal) -> list[Rate]:
    """Sets the given (currency code, decimal rate string) rates, all or none; returns them."""
    v = Validator()
    v.check(bool(entries), "rates", "at least one rate is required")
    v.check(len(entries) <= UPDATE_MAX_RATES, "rates", f"at most {UPDATE_MAX_RATES} rates at once")
    v.raise_if_any()
    parsed: list[tuple[str, Decimal]] = []
    seen: set[str] = set()
    for index, (raw_code, raw_rate) in enumerate(entries):
        path = f"rates[{index}]"
        code = check_code(v, f"{path}.currency_code", raw_code)
        if code == BASE_CURRENCY:
            v.add(f"{path}.currency_code", "the base currency's rate is fixed at 1")
        elif code and code in seen:
            v.add(f"{path}.currency_code", f"{code} is listed more than once")
        seen.add(code)
        try:
            parsed.append((code, money.parse_rate(raw_rate)))
        except money.RateError as exc:
            v.add(f"{path}.rate", str(exc))
    v.raise_if_any()

    now = utcnow()
    rows = [
        {
            "currency_code": code,
            "rate": money.format_rate(rate),
            "update_time": now,
            "updated_by": actor.subject,
        }
        for code, rate in parsed
    ]
    with database.atomic():
        (
            ExchangeRate.insert_many(rows)
            .on_conflict(
                conflict_target=[ExchangeRate.currency_code],
                preserve=[ExchangeRate.rate, ExchangeRate.update_time, ExchangeRate.updated_by],
            )
            .execute()
        )
    return [
        Rate(
            currency_code=code,
            rate=rate,
            update_time=now,
            updated_by=actor.subject,
        )
        for code, rate in parsed
    ]
