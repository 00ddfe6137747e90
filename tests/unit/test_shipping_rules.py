"""Shipping rules: the file format and its validation, zones, per-kg cost, free threshold."""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.config import DEFAULT_SHIPPING_RULES_FILE
from server.domain import shipping
from server.domain.exchange_rates import Rate
from server.domain.money import Money
from server.domain.shipping import Quote, Rules, RulesError
from server.errors import InvalidArgument

NOW = dt.datetime(2026, 1, 1)
RATES = {
    code: Rate(code, Decimal(rate), NOW, "test")
    for code, rate in {"USD": "1", "EUR": "0.9213", "JPY": "151.37", "UYW": "1000000000"}.items()
}

DOCUMENT: dict[str, Any] = {
    "currency": "USD",
    "zones": [
        {
            "id": "home",
            "countries": ["US"],
            "service_level": "Standard",
            "min_delivery_days": 2,
            "max_delivery_days": 4,
            "base_cost_minor": 500,
            "per_kg_cost_minor": 100,
            "free_shipping_threshold_minor": 5000,
        },
        {
            "id": "eu",
            "countries": ["DE", "FR"],
            "service_level": "International",
            "min_delivery_days": 5,
            "max_delivery_days": 9,
            "base_cost_minor": 1000,
            "per_kg_cost_minor": 250,
            "free_shipping_threshold_minor": 10000,
        },
    ],
    "default_zone": {
        "id": "world",
        "service_level": "Economy",
        "min_delivery_days": 10,
        "max_delivery_days": 20,
        "base_cost_minor": 2000,
        "per_kg_cost_minor": 800,
    },
}
RULES = shipping.parse_rules(DOCUMENT)


def price(country: str, weight_grams: int, subtotal: Money, rules: Rules = RULES) -> Quote:
    return shipping.price(
        rules, country=country, weight_grams=weight_grams, subtotal=subtotal, rates=RATES
    )


def changed(path: str, value: Any) -> dict[str, Any]:
    """Returns DOCUMENT with the value at a dotted path ("zones.0.id") replaced or, for
    DELETE, removed."""
    document = copy.deepcopy(DOCUMENT)
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return document


DELETE = object()


# --- the shipped file ----------------------------------------------------------------------------


def test_the_shipped_rules_are_valid_and_cover_every_country() -> None:
    rules = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE)
    assert rules.currency == "USD"
    assert rules.zone_for("US").id == "us"
    assert rules.zone_for("DE").id == "eu"
    assert rules.zone_for("GB").id == "europe-other"
    assert rules.zone_for("JP").id == "asia-pacific"
    assert rules.zone_for("BR").id == rules.default_zone.id == "rest-of-world"
    assert rules.default_zone.free_shipping_threshold_minor is None


def test_the_version_is_the_content_not_the_formatting(tmp_path: Path) -> None:
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(DOCUMENT, separators=(",", ":")))
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(DOCUMENT, indent=4, sort_keys=True))
    versions = {shipping.load_rules(compact).version, shipping.load_rules(pretty).version}
    assert len(versions) == 1
    assert len(versions.pop()) == 16
    assert shipping.parse_rules(changed("zones.0.base_cost_minor", 501)).version != RULES.version


# --- bad rule files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "must be a JSON object"),
        (changed("currency", DELETE), "currency: is required"),
        (changed("currency", "usd"), "currency: 'usd' is not an upper-case ISO 4217"),
        (changed("currency", "XYZ"), "currency: 'XYZ' is not"),
        (changed("extra", 1), "extra: unknown field"),
        (changed("zones", {}), "zones: must be a list"),
        (changed("zones.0", "home"), "zones[0]: must be an object"),
        (changed("zones.0.colour", "red"), "zones[0].colour: unknown field"),
        (changed("zones.0.base_cost_minor", DELETE), "zones[0].base_cost_minor: is required"),
        (changed("zones.0.id", "Home Zone"), "zones[0].id: must be 1 to 40 characters"),
        (changed("zones.1.id", "home"), "zone id 'home' is used twice"),
        (changed("zones.0.countries", []), "zones[0].countries: must be a non-empty list"),
        (changed("zones.0.countries", ["XX"]), "zones[0].countries[0]: 'XX' is not"),
        (changed("zones.0.countries", ["us"]), "zones[0].countries[0]: 'us' is not"),
        (changed("zones.0.countries", ["US", "US"]), "zones[0].countries[1]: US is listed twice"),
        (changed("zones.1.countries", ["DE", "US"]), "country US is in zones 'home' and 'eu'"),
        (changed("zones.0.service_level", " "), "zones[0].service_level: must be 1 to 50"),
        (changed("zones.0.base_cost_minor", -1), "zones[0].base_cost_minor: must be between 0"),
        (changed("zones.0.per_kg_cost_minor", 1.5), "zones[0].per_kg_cost_minor: must be an int"),
        (changed("zones.0.per_kg_cost_minor", "100"), "per_kg_cost_minor: must be an integer"),
        (changed("zones.0.base_cost_minor", True), "base_cost_minor: must be an integer"),
        (changed("zones.0.max_delivery_days", 1), "max_delivery_days: must be at least min"),
        (changed("zones.0.min_delivery_days", 366), "min_delivery_days: must be between 0 and"),
        (
            changed("zones.0.free_shipping_threshold_minor", -5),
            "free_shipping_threshold_minor: must be between 0",
        ),
        (changed("default_zone", DELETE), "default_zone: is required"),
        (changed("default_zone.countries", ["BR"]), "default_zone.countries: unknown field"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(document: Any, problem: str) -> None:
    with pytest.raises(RulesError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        shipping.parse_rules(document)


def test_every_problem_is_reported_at_once() -> None:
    document = changed("zones.0.base_cost_minor", -1)
    document["zones"][1]["countries"] = ["ZZ"]
    with pytest.raises(RulesError) as caught:
        shipping.parse_rules(document)
    assert "zones[0].base_cost_minor" in str(caught.value)
    assert "zones[1].countries[0]" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON: Expecting property name enclosed in double quotes at line"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b'{"currency": "USD"}', "zones: is required"),
        (b" " * (shipping.RULES_MAX_BYTES + 1), "larger than"),
    ],
    ids=["syntax", "encoding", "incomplete", "too-large"],
)
def test_a_bad_file_is_refused_naming_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(content)
    with pytest.raises(RulesError) as caught:
        shipping.load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        shipping.load_rules(tmp_path / "nope.json")


# --- quotes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "zone", "service_level", "days"),
    [
        ("US", "home", "Standard", (2, 4)),
        ("FR", "eu", "International", (5, 9)),
        ("BR", "world", "Economy", (10, 20)),
        ("AQ", "world", "Economy", (10, 20)),
    ],
)
def test_the_zone_listing_the_country_prices_it_else_the_default(
    country: str, zone: str, service_level: str, days: tuple[int, int]
) -> None:
    quote = price(country, 0, Money("USD", 0))
    assert quote.zone_id == zone
    assert quote.service_level == service_level
    assert (quote.min_delivery_days, quote.max_delivery_days) == days
    assert quote.rules_version == RULES.version


@pytest.mark.parametrize(
    ("weight_grams", "cost"),
    [(0, 500), (1, 600), (999, 600), (1000, 600), (1001, 700), (2500, 800), (20_000, 2500)],
)
def test_every_started_kilogram_costs_the_per_kg_price(weight_grams: int, cost: int) -> None:
    quote = price("US", weight_grams, Money("USD", 1000))
    assert quote.cost == Money("USD", cost)
    assert not quote.free_shipping


@pytest.mark.parametrize(
    ("subtotal", "free", "cost"),
    [(0, False, 600), (4999, False, 600), (5000, True, 0), (1_000_000, True, 0)],
)
def test_shipping_is_free_from_the_zone_threshold(subtotal: int, free: bool, cost: int) -> None:
    quote = price("US", 800, Money("USD", subtotal))
    assert quote.free_shipping is free
    assert quote.cost == Money("USD", cost)
    assert quote.free_shipping_threshold == Money("USD", 5000)


def test_a_zone_without_a_threshold_never_ships_free() -> None:
    quote = price("BR", 0, Money("USD", 10**15))
    assert not quote.free_shipping
    assert quote.free_shipping_threshold is None
    assert quote.cost == Money("USD", 2000)


def test_cost_and_threshold_are_converted_to_the_subtotal_currency() -> None:
    # 1000 + 2 * 250 = 1500 US cents = 1381.95 euro cents -> 1382; 10000 -> 9213.
    quote = price("DE", 1500, Money("EUR", 9212))
    assert quote.cost == Money("EUR", 1382)
    assert quote.free_shipping_threshold == Money("EUR", 9213)
    assert not quote.free_shipping
    assert price("DE", 1500, Money("EUR", 9213)).free_shipping


def test_a_currency_without_minor_units_gets_whole_units() -> None:
    # 500 + 100 = 600 US cents = 908.22 yen -> 908; 5000 cents -> 7568.5 -> 7568 (half to even).
    quote = price("US", 1000, Money("JPY", 100))
    assert quote.cost == Money("JPY", 908)
    assert quote.free_shipping_threshold == Money("JPY", 7568)


def test_a_cost_beyond_int64_in_the_subtotal_currency_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        price("BR", shipping.MAX_WEIGHT_GRAMS, Money("UYW", 0))
    assert [v.field for v in caught.value.violations] == ["subtotal.currency_code"]


def test_the_same_request_gets_the_same_quote_id_and_a_different_one_another() -> None:
    base = price("US", 1200, Money("USD", 1000))
    assert price("US", 1200, Money("USD", 1000)) == base
    assert base.quote_id.startswith("sq_")
    others = {
        price("US", 2200, Money("USD", 1000)).quote_id,
        price("US", 1200, Money("USD", 1001)).quote_id,
        price("US", 1200, Money("EUR", 1000)).quote_id,
        price("FR", 1200, Money("USD", 1000)).quote_id,
        price(
            "US",
            1200,
            Money("USD", 1000),
            rules=shipping.parse_rules(changed("zones.0.service_level", "Ground")),
        ).quote_id,
    }
    assert base.quote_id not in others
    assert len(others) == 5


@given(
    light=st.integers(min_value=0, max_value=shipping.MAX_WEIGHT_GRAMS),
    extra=st.integers(min_value=0, max_value=10**8),
    country=st.sampled_from(["US", "DE", "BR"]),
    currency=st.sampled_from(["USD", "EUR", "JPY"]),
)
def test_a_heavier_parcel_never_costs_less(
    light: int, extra: int, country: str, currency: str
) -> None:
    heavy = min(light + extra, shipping.MAX_WEIGHT_GRAMS)
    subtotal = Money(currency, 0)
    assert (
        price(country, light, subtotal).cost.amount_minor
        <= price(country, heavy, subtotal).cost.amount_minor
    )


@given(
    weight=st.integers(min_value=0, max_value=100_000),
    low=st.integers(min_value=0, max_value=10**9),
    more=st.integers(min_value=0, max_value=10**9),
)
def test_a_bigger_subtotal_never_pays_more_for_shipping(weight: int, low: int, more: int) -> None:
    cheap = price("DE", weight, Money("EUR", low))
    dear = price("DE", weight, Money("EUR", low + more))
    assert dear.cost.amount_minor <= cheap.cost.amount_minor
