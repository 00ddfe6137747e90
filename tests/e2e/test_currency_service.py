"""CurrencyService through the client SDK: every RPC, every status code its comments promise."""

from __future__ import annotations

import grpc
import pytest
from storefront.v1 import common_pb2
from storefront.v1 import currency_service_pb2 as pb

from server.domain.principal import Role
from server.migrations.m0003_currency import SEED_RATES
from tests.e2e.conftest import Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode


def convert_request(currency: str, amount: int, target: str) -> pb.ConvertMoneyRequest:
    return pb.ConvertMoneyRequest(
        money=common_pb2.Money(currency_code=currency, amount_minor=amount),
        target_currency_code=target,
    )


def rates_request(*entries: tuple[str, str]) -> pb.UpdateExchangeRatesRequest:
    return pb.UpdateExchangeRatesRequest(
        rates=[pb.ExchangeRate(currency_code=code, rate=rate) for code, rate in entries]
    )


# --- ListCurrencies ------------------------------------------------------------------------------


def test_list_currencies_shows_every_supported_currency_to_anyone(running: Running) -> None:
    response = running.client().currency.ListCurrencies(pb.ListCurrenciesRequest())
    assert response.base_currency_code == "USD"
    codes = [c.code for c in response.currencies]
    assert codes == sorted(SEED_RATES)
    by_code = {c.code: c for c in response.currencies}
    assert (by_code["USD"].rate, by_code["USD"].base) == ("1", True)
    assert (by_code["EUR"].rate, by_code["EUR"].base) == ("0.9213", False)
    assert [by_code[c].minor_unit_digits for c in ("JPY", "USD", "KWD")] == [0, 2, 3]
    assert all(c.rate_update_time.seconds > 0 for c in response.currencies)


# --- ConvertMoney --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "amount", "target", "expected", "rate"),
    [
        ("USD", 1000, "JPY", 1514, "151.37"),
        ("USD", 1000, "KWD", 3074, "0.30745"),  # 3074.5 fils: half to even
        ("JPY", 1000, "USD", 661, "0.00660632886305"),
        ("EUR", 100_000, "GBP", 85466, "0.854661890806"),
        ("usd", -250, "eur", -230, "0.9213"),  # -230.325
        ("USD", 777, "USD", 777, "1"),
    ],
)
def test_convert_money_rounds_half_to_even_in_the_target_minor_unit(
    running: Running, currency: str, amount: int, target: str, expected: int, rate: str
) -> None:
    response = running.client().currency.ConvertMoney(convert_request(currency, amount, target))
    assert response.converted.currency_code == target.upper()
    assert response.converted.amount_minor == expected
    assert response.rate == rate
    assert response.source_rate.currency_code == currency.upper()
    assert response.source_rate.rate == SEED_RATES[currency.upper()]
    assert response.target_rate.rate == SEED_RATES[target.upper()]
    assert response.rate_update_time.seconds > 0


@pytest.mark.parametrize(
    ("currency", "amount", "target", "fields"),
    [
        ("XYZ", 100, "USD", {"money.currency_code"}),
        ("USD", 100, "XYZ", {"target_currency_code"}),
        ("PEN", 100, "USD", {"money.currency_code"}),  # an ISO 4217 code without a rate
        ("USD", 100, "", {"target_currency_code"}),
        ("", 100, "", {"money.currency_code", "target_currency_code"}),
        ("USD", 2**63 - 1, "JPY", {"money.amount_minor"}),
    ],
    ids=["unknown-source", "unknown-target", "unsupported", "no-target", "nothing", "overflow"],
)
def test_convert_money_refuses_unknown_currencies_and_overflow(
    running: Running, currency: str, amount: int, target: str, fields: set[str]
) -> None:
    stub = running.client().currency
    err = rpc_error(lambda: stub.ConvertMoney(convert_request(currency, amount, target)))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


# --- UpdateExchangeRates -------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.STAFF, Role.ADMIN], ids=str)
def test_staff_and_admins_set_rates_that_conversions_then_use(running: Running, role: Role) -> None:
    client = running.login(role)
    response = client.currency.UpdateExchangeRates(
        rates_request(("EUR", "0.9500"), ("PEN", "3.7512"))
    )
    assert [(r.currency_code, r.rate) for r in response.rates] == [
        ("EUR", "0.95"),
        ("PEN", "3.7512"),
    ]
    assert all(r.update_time.seconds > 0 for r in response.rates)

    public = running.client().currency
    converted = public.ConvertMoney(convert_request("USD", 1000, "EUR"))
    assert converted.converted.amount_minor == 950
    assert converted.rate_update_time == response.rates[0].update_time
    listed = public.ListCurrencies(pb.ListCurrenciesRequest())
    assert "PEN" in [c.code for c in listed.currencies]
    assert public.ConvertMoney(convert_request("PEN", 37512, "USD")).converted.amount_minor == 10000


@pytest.mark.parametrize(
    ("entries", "fields"),
    [
        ((), {"rates"}),
        ((("EUR", "0.9"),) * 201, {"rates"}),
        ((("EUR", "1e-3"),), {"rates[0].rate"}),
        ((("EUR", "0.92"), ("GBP", "-0.8")), {"rates[1].rate"}),
        ((("EUR", "0"),), {"rates[0].rate"}),
        ((("EUR", "1234567.890123"),), {"rates[0].rate"}),  # 13 significant digits
        ((("EUR", "0.0000001"),), {"rates[0].rate"}),
        ((("EUR", " 0.9"),), {"rates[0].rate"}),
        ((("XYZ", "1"),), {"rates[0].currency_code"}),
        ((("USD", "1"),), {"rates[0].currency_code"}),
        ((("EUR", "0.9"), ("EUR", "0.91")), {"rates[1].currency_code"}),
    ],
    ids=[
        "none",
        "201",
        "exponent",
        "negative",
        "zero",
        "13-digits",
        "too-small",
        "space",
        "unknown",
        "base",
        "twice",
    ],
)
def test_update_exchange_rates_refuses_bad_entries_and_changes_nothing(
    running: Running, entries: tuple[tuple[str, str], ...], fields: set[str]
) -> None:
    staff = running.login(Role.STAFF).currency
    err = rpc_error(lambda: staff.UpdateExchangeRates(rates_request(*entries)))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields
    listed = staff.ListCurrencies(pb.ListCurrenciesRequest())
    assert {c.code: c.rate for c in listed.currencies} == SEED_RATES


def test_update_exchange_rates_needs_a_staff_token(running: Running) -> None:
    request = rates_request(("EUR", "0.5"))
    anonymous = running.client().currency
    err = rpc_error(lambda: anonymous.UpdateExchangeRates(request))
    assert err.code() == StatusCode.UNAUTHENTICATED
    customer = running.login(Role.CUSTOMER).currency
    err = rpc_error(lambda: customer.UpdateExchangeRates(request))
    assert err.code() == StatusCode.PERMISSION_DENIED
    listed = anonymous.ListCurrencies(pb.ListCurrenciesRequest())
    assert {c.code: c.rate for c in listed.currencies}["EUR"] == SEED_RATES["EUR"]
