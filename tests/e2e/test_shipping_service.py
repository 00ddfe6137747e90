"""ShippingService through the client SDK: quotes from the shipped rules, every status code, and
start-up refusing bad rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from storefront.v1 import common_pb2
from storefront.v1 import currency_service_pb2 as currency_pb
from storefront.v1 import shipping_service_pb2 as pb

from server.config import DEFAULT_SHIPPING_RULES_FILE, ConfigError
from server.db import close_database
from server.domain import shipping
from server.domain.principal import Role
from tests.e2e.conftest import Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode
VERSION = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE).version


def quote_request(
    country: str, weight: int, currency: str, amount: int
) -> pb.GetShippingQuoteRequest:
    return pb.GetShippingQuoteRequest(
        destination_country_code=country,
        total_weight_grams=weight,
        subtotal=common_pb2.Money(currency_code=currency, amount_minor=amount),
    )


def money(currency: str, amount: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code=currency, amount_minor=amount)


# --- GetShippingQuote ----------------------------------------------------------------------------


def test_a_domestic_parcel_is_priced_per_started_kilogram(running: Running) -> None:
    stub = running.client().shipping
    quote = stub.GetShippingQuote(quote_request("US", 1500, "USD", 2000)).quote
    assert quote.zone_id == "us"
    assert quote.rules_version == VERSION
    assert quote.service_level == "Standard"
    assert quote.cost == money("USD", 599 + 2 * 150)
    assert not quote.free_shipping
    assert quote.free_shipping_threshold == money("USD", 5000)
    assert (quote.min_delivery_days, quote.max_delivery_days) == (3, 5)
    assert quote.quote_id.startswith("sq_")
    # Deterministic: the same request under the same rules and rates, the same quote.
    assert stub.GetShippingQuote(quote_request("us", 1500, "usd", 2000)).quote == quote


def test_shipping_is_free_from_the_threshold(running: Running) -> None:
    quote = running.client().shipping.GetShippingQuote(quote_request("US", 1500, "USD", 5000)).quote
    assert quote.free_shipping
    assert quote.cost == money("USD", 0)


def test_a_quote_is_in_the_subtotal_currency(running: Running) -> None:
    stub = running.client().shipping
    # (1299 + 350) US cents * 0.9213 = 1519.2237 euro cents; threshold 10000 -> 9213.
    quote = stub.GetShippingQuote(quote_request("DE", 1000, "EUR", 9212)).quote
    assert (quote.zone_id, quote.cost) == ("eu", money("EUR", 1519))
    assert quote.free_shipping_threshold == money("EUR", 9213)
    assert stub.GetShippingQuote(quote_request("DE", 1000, "EUR", 9213)).quote.free_shipping
    # (1999 + 600 * 3) US cents * 151.37 / 100 = 5750.5463 yen.
    quote = stub.GetShippingQuote(quote_request("JP", 2001, "JPY", 0)).quote
    assert (quote.zone_id, quote.cost) == ("asia-pacific", money("JPY", 5751))


def test_other_countries_use_the_default_zone_which_never_ships_free(running: Running) -> None:
    request = quote_request("BR", 0, "USD", 10**12)
    quote = running.client().shipping.GetShippingQuote(request).quote
    assert (quote.zone_id, quote.service_level) == ("rest-of-world", "International Economy")
    assert quote.cost == money("USD", 2499)
    assert not quote.free_shipping
    assert not quote.HasField("free_shipping_threshold")


def test_a_rate_change_changes_the_quote_and_its_id(running: Running) -> None:
    stub = running.client().shipping
    before = stub.GetShippingQuote(quote_request("FR", 500, "EUR", 0)).quote
    staff = running.login(Role.STAFF)
    staff.currency.UpdateExchangeRates(
        currency_pb.UpdateExchangeRatesRequest(
            rates=[currency_pb.ExchangeRate(currency_code="EUR", rate="1.1")]
        )
    )
    after = stub.GetShippingQuote(quote_request("FR", 500, "EUR", 0)).quote
    assert after.cost == money("EUR", 1814)  # (1299 + 350) * 1.1 = 1813.9
    assert after.quote_id != before.quote_id


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (quote_request("", 0, "USD", 0), {"destination_country_code"}),
        (quote_request("XX", 0, "USD", 0), {"destination_country_code"}),
        (quote_request("DEU", 0, "USD", 0), {"destination_country_code"}),
        (quote_request("US", -1, "USD", 0), {"total_weight_grams"}),
        (quote_request("US", 10_000_000_001, "USD", 0), {"total_weight_grams"}),
        (quote_request("US", 0, "USD", -1), {"subtotal.amount_minor"}),
        (quote_request("US", 0, "XYZ", 0), {"subtotal.currency_code"}),
        (quote_request("US", 0, "PEN", 0), {"subtotal.currency_code"}),
        (pb.GetShippingQuoteRequest(destination_country_code="US"), {"subtotal.currency_code"}),
        (
            pb.GetShippingQuoteRequest(),
            {"destination_country_code", "subtotal.currency_code"},
        ),
    ],
    ids=[
        "no-country",
        "unknown-country",
        "alpha-3",
        "negative-weight",
        "too-heavy",
        "negative-subtotal",
        "unknown-currency",
        "unsupported-currency",
        "no-subtotal",
        "empty",
    ],
)
def test_a_bad_quote_request_is_invalid(
    running: Running, request_: pb.GetShippingQuoteRequest, fields: set[str]
) -> None:
    stub = running.client().shipping
    err = rpc_error(lambda: stub.GetShippingQuote(request_))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


def test_a_cost_beyond_int64_in_the_subtotal_currency_is_invalid(running: Running) -> None:
    # UYW has 4 decimal places: 9e7 USD at 1e9 UYW per USD is 9e20 minor units.
    running.login(Role.ADMIN).currency.UpdateExchangeRates(
        currency_pb.UpdateExchangeRatesRequest(
            rates=[currency_pb.ExchangeRate(currency_code="UYW", rate="1000000000")]
        )
    )
    stub = running.client().shipping
    err = rpc_error(lambda: stub.GetShippingQuote(quote_request("BR", 10**10, "UYW", 0)))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"subtotal.currency_code"}


# --- the rules file at start-up ------------------------------------------------------------------


def test_configured_rules_replace_the_shipped_ones(
    server_factory: Callable[..., Running], tmp_path: Path
) -> None:
    document = json.loads(DEFAULT_SHIPPING_RULES_FILE.read_text())
    document["currency"] = "EUR"
    document["default_zone"]["base_cost_minor"] = 1000
    document["default_zone"]["per_kg_cost_minor"] = 0
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(document))
    running = server_factory(shipping_rules_file=rules)
    quote = running.client().shipping.GetShippingQuote(quote_request("BR", 0, "EUR", 0)).quote
    assert quote.cost == money("EUR", 1000)
    assert quote.rules_version == shipping.rules_version(document)
    # 1000 euro cents / 0.9213 = 1085.42 US cents.
    quote = running.client().shipping.GetShippingQuote(quote_request("BR", 0, "USD", 0)).quote
    assert quote.cost == money("USD", 1085)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "not valid JSON"),
        ('{"currency": "USD", "zones": [], "default_zone": {}}', "default_zone.id: is required"),
        (
            DEFAULT_SHIPPING_RULES_FILE.read_text().replace('"USD"', '"PEN"'),
            "currency PEN has no exchange rate",
        ),
    ],
    ids=["syntax", "incomplete", "currency-without-rate"],
)
def test_bad_rules_stop_start_up_naming_the_variable(
    server_factory: Callable[..., Running], tmp_path: Path, content: str, problem: str
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(content)
    try:
        with pytest.raises(ConfigError) as caught:
            server_factory(shipping_rules_file=rules)
    finally:
        close_database()
    message = str(caught.value)
    assert message.startswith(f"STOREFRONT_SHIPPING_RULES_FILE: {rules}: ")
    assert problem in message
