"""Sales tax: configured rates per destination country, applied once per order.

The rates file (STOREFRONT_TAX_RATES_FILE, default data/tax_rates.json) is a JSON object:

    {"default_rate": "0", "shipping_taxable": true, "countries": {"DE": "0.19", ...}}

Rates are decimal fraction strings from 0 to 1 with at most 6 decimals. An order's tax is
rate x (subtotal + shipping if shipping_taxable, else subtotal), computed exactly and rounded
half to even once, in the order's currency.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from server.domain import countries, json_files, money

RATES_MAX_BYTES = 256 * 1024
_RATE = re.compile(r"(0(\.[0-9]{1,6})?|1(\.0{1,6})?)")
_KEYS = frozenset({"default_rate", "shipping_taxable", "countries"})


class TaxRatesError(ValueError):
    """The tax rates file is invalid; the message lists every problem."""


@dataclass(frozen=True)
class TaxRates:
    """Validated tax rates."""

    default_rate: Decimal
    shipping_taxable: bool
    by_country: Mapping[str, Decimal]

    def rate_for(self, country: str) -> Decimal:
        """Returns the rate for an ISO 3166-1 alpha-2 country code."""
        return self.by_country.get(country, self.default_rate)

    def tax_minor(self, country: str, *, subtotal_minor: int, shipping_minor: int) -> int:
        """Returns the tax on an order shipped to `country`, in minor units."""
        base = subtotal_minor + (shipping_minor if self.shipping_taxable else 0)
        return money.apply_rate(base, self.rate_for(country))


def _rate(problems: list[str], path: str, raw: Any) -> Decimal:
    if not isinstance(raw, str) or not _RATE.fullmatch(raw):
        problems.append(f'{path}: must be a decimal string from "0" to "1" such as "0.19"')
        return Decimal(0)
    return Decimal(raw)


def parse_rates(document: Any) -> TaxRates:
    """Validates a decoded rates document; raises TaxRatesError listing every problem."""
    if not isinstance(document, dict):
        raise TaxRatesError("the tax rates must be a JSON object")
    problems = [f"{key}: unknown field" for key in sorted(set(document) - _KEYS)]
    problems += [f"{key}: is required" for key in sorted(_KEYS - set(document))]
    default_rate = _rate(problems, "default_rate", document.get("default_rate", "0"))
    shipping_taxable = document.get("shipping_taxable", True)
    if not isinstance(shipping_taxable, bool):
        problems.append("shipping_taxable: must be true or false")
    raw_countries = document.get("countries", {})
    by_country: dict[str, Decimal] = {}
    if not isinstance(raw_countries, dict):
        problems.append("countries: must be an object of country code -> rate")
        raw_countries = {}
    for code, raw in raw_countries.items():
        if not countries.is_known(code):
            problems.append(f"countries.{code}: not an ISO 3166-1 alpha-2 country code")
            continue
        by_country[code] = _rate(problems, f"countries.{code}", raw)
    if problems:
        raise TaxRatesError("; ".join(problems))
    return TaxRates(default_rate, bool(shipping_taxable), by_country)


def load_rates(path: Path) -> TaxRates:
    """Reads and validates a rates file; raises TaxRatesError naming the file and the problem."""
    document = json_files.read_json(path, max_bytes=RATES_MAX_BYTES, error=TaxRatesError)
    try:
        return parse_rates(document)
    except TaxRatesError as exc:
        raise TaxRatesError(f"{path}: {exc}") from None
