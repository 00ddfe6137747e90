"""Tax rates: strict validation listing every problem, rates per country, tax rounded once."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.config import DEFAULT_TAX_RATES_FILE
from server.domain import taxes
from server.domain.taxes import TaxRates, TaxRatesError


def document(**changes: Any) -> dict[str, Any]:
    """A valid rates document with `changes` applied."""
    base: dict[str, Any] = {
        "default_rate": "0.1",
        "shipping_taxable": True,
        "countries": {"DE": "0.19", "US": "0"},
    }
    return base | changes


def problems_of(raw: Any) -> str:
    with pytest.raises(TaxRatesError) as caught:
        taxes.parse_rates(raw)
    return str(caught.value)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate", ["0", "1", "0.19", "0.255", "0.000001", "1.0", "1.000000", "0.100000"]
)
def test_decimal_strings_from_zero_to_one_with_up_to_six_decimals_are_rates(rate: str) -> None:
    rates = taxes.parse_rates(document(countries={"FR": rate}))
    assert rates.by_country == {"FR": Decimal(rate)}


@pytest.mark.parametrize(
    "rate",
    [
        "1.5",
        "-0.1",
        "0.1234567",  # seven decimals
        "1.0000001",
        "abc",
        "",
        ".5",
        "0.",
        "01",
        " 0.1",
        "1e-1",
        "NaN",
        "2",
        0.19,
        1,
        None,
        True,
        ["0.19"],
    ],
)
def test_anything_else_is_refused_naming_the_country(rate: Any) -> None:
    message = problems_of(document(countries={"FR": rate}))
    assert message == 'countries.FR: must be a decimal string from "0" to "1" such as "0.19"'


@pytest.mark.parametrize("rate", ["1.5", 0.1, "abc"])
def test_a_bad_default_rate_is_refused(rate: Any) -> None:
    assert problems_of(document(default_rate=rate)).startswith("default_rate: must be a decimal")


@pytest.mark.parametrize("code", ["XX", "de", "DEU", "", "EU"])
def test_unknown_country_codes_are_refused(code: str) -> None:
    message = problems_of(document(countries={code: "0.2"}))
    assert message == f"countries.{code}: not an ISO 3166-1 alpha-2 country code"


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None])
def test_shipping_taxable_must_be_a_boolean(value: Any) -> None:
    assert problems_of(document(shipping_taxable=value)) == (
        "shipping_taxable: must be true or false"
    )


def test_every_problem_is_listed_at_once() -> None:
    raw = {
        "default_rate": "1.5",
        "shipping_taxable": "yes",
        "countries": {"DE": "-0.1", "XX": "0.2", "FR": "0.1234567", "IT": 0.22},
        "vat": True,
        "rounding": "up",
    }
    assert problems_of(raw).split("; ") == [
        "rounding: unknown field",
        "vat: unknown field",
        'default_rate: must be a decimal string from "0" to "1" such as "0.19"',
        "shipping_taxable: must be true or false",
        'countries.DE: must be a decimal string from "0" to "1" such as "0.19"',
        "countries.XX: not an ISO 3166-1 alpha-2 country code",
        'countries.FR: must be a decimal string from "0" to "1" such as "0.19"',
        'countries.IT: must be a decimal string from "0" to "1" such as "0.19"',
    ]


def test_missing_fields_are_required() -> None:
    assert problems_of({}).split("; ") == [
        "countries: is required",
        "default_rate: is required",
        "shipping_taxable: is required",
    ]


@pytest.mark.parametrize("raw", [[], "0.19", None, 3])
def test_the_document_must_be_an_object(raw: Any) -> None:
    assert problems_of(raw) == "the tax rates must be a JSON object"


@pytest.mark.parametrize("raw", [["DE", "0.19"], "DE=0.19", None])
def test_countries_must_be_an_object(raw: Any) -> None:
    assert problems_of(document(countries=raw)) == (
        "countries: must be an object of country code -> rate"
    )


def test_a_bad_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(document(countries={"DE": "19%"})))
    with pytest.raises(TaxRatesError, match=rf"^{path}: countries\.DE: must be a decimal"):
        taxes.load_rates(path)
    path.write_text("{not json")
    with pytest.raises(TaxRatesError, match=rf"^{path}: not valid JSON"):
        taxes.load_rates(path)
    with pytest.raises(TaxRatesError, match="cannot read"):
        taxes.load_rates(tmp_path / "missing.json")


def test_the_shipped_rates_are_valid() -> None:
    rates = taxes.load_rates(DEFAULT_TAX_RATES_FILE)
    assert rates.shipping_taxable is True
    assert rates.default_rate == Decimal(0)
    assert (rates.rate_for("DE"), rates.rate_for("FI"), rates.rate_for("US")) == (
        Decimal("0.19"),
        Decimal("0.255"),
        Decimal(0),
    )


# --- rates and tax ------------------------------------------------------------------------------


def test_a_country_without_a_rate_gets_the_default() -> None:
    rates = taxes.parse_rates(document())
    assert rates.rate_for("DE") == Decimal("0.19")
    assert rates.rate_for("US") == Decimal(0)  # listed as zero: not the default
    assert rates.rate_for("BR") == Decimal("0.1")


@pytest.mark.parametrize(
    ("shipping_taxable", "country", "subtotal", "shipping", "tax"),
    [
        (True, "DE", 10_000, 1_299, 2_147),  # 0.19 x 11,299 = 2,146.81
        (False, "DE", 10_000, 1_299, 1_900),  # shipping not taxed
        (True, "DE", 50, 0, 10),  # 9.5 -> 10 (half to even)
        (True, "DE", 150, 0, 28),  # 28.5 -> 28 (half to even)
        (False, "DE", 150, 999_999, 28),
        (True, "US", 10_000, 1_299, 0),
        (True, "BR", 1_000, 5, 100),  # default 0.1 x 1,005 = 100.5 -> 100
        (True, "BR", 1_000, 15, 102),  # 101.5 -> 102
        (True, "DE", 0, 0, 0),
    ],
)
def test_tax_is_the_rate_times_the_taxable_base_rounded_half_to_even_once(
    shipping_taxable: bool, country: str, subtotal: int, shipping: int, tax: int
) -> None:
    rates = taxes.parse_rates(document(shipping_taxable=shipping_taxable))
    assert rates.tax_minor(country, subtotal_minor=subtotal, shipping_minor=shipping) == tax


def test_tax_is_rounded_once_on_the_sum_not_per_part() -> None:
    # 0.19 x 50 = 9.5 and 0.19 x 50 = 9.5: rounded separately 10 + 10, once 19.
    rates = TaxRates(Decimal("0.19"), True, {})
    assert rates.tax_minor("DE", subtotal_minor=50, shipping_minor=50) == 19


def test_a_full_rate_is_the_whole_base() -> None:
    rates = TaxRates(Decimal("0"), True, {"DE": Decimal("1")})
    assert rates.tax_minor("DE", subtotal_minor=2**62, shipping_minor=7) == 2**62 + 7
