"""Exchange rates on both engines: the seed, exact storage, updates, conversion, quotes."""

from __future__ import annotations

from decimal import Decimal

import peewee
import pytest

from server.config import DEFAULT_SHIPPING_RULES_FILE
from server.domain import currencies, exchange_rates, shipping
from server.domain.money import Money
from server.domain.principal import Principal, Role
from server.errors import InvalidArgument
from server.migrations.m0003_currency import SEED_RATES, SEED_UPDATED_BY
from server.models.exchange_rate import ExchangeRate

STAFF = Principal(subject="staff-1", role=Role.STAFF, token_id="t")


def violated(caught: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in caught.value.violations}


def stored_text(db: peewee.Database, code: str) -> object:
    """Returns the rate column exactly as the engine hands it back."""
    row = db.execute_sql(
        "SELECT rate FROM exchange_rates WHERE currency_code = "
        + ("?" if isinstance(db, peewee.SqliteDatabase) else "%s"),
        (code,),
    ).fetchone()
    return row[0]


def test_the_migration_seeds_a_rate_for_every_supported_currency(db: peewee.Database) -> None:
    listed = exchange_rates.list_()
    assert [r.currency_code for r in listed] == sorted(SEED_RATES)
    assert {"USD", "EUR", "GBP", "JPY", "KWD", "CHF", "CAD", "AUD", "SEK"} <= set(SEED_RATES)
    by_code = {r.currency_code: r for r in listed}
    assert by_code["USD"].rate == 1 and by_code["USD"].is_base
    assert by_code["EUR"].rate == Decimal("0.9213")
    assert (by_code["JPY"].exponent, by_code["KWD"].exponent) == (0, 3)
    assert {r.updated_by for r in listed} == {SEED_UPDATED_BY}
    assert all(currencies.is_known(code) for code in SEED_RATES)


def test_rates_are_stored_as_exact_text_on_both_engines(db: peewee.Database) -> None:
    exchange_rates.update([("EUR", "0.123456789012")], actor=STAFF)
    assert stored_text(db, "EUR") == "0.123456789012"
    assert stored_text(db, "KWD") == "0.30745"
    assert exchange_rates.rates(["EUR"])["EUR"].rate == Decimal("0.123456789012")


def test_update_sets_rates_and_records_who_and_when(db: peewee.Database) -> None:
    before = exchange_rates.rates(["EUR"])["EUR"]
    updated = exchange_rates.update([("eur", "0.9500"), ("JPY", "150")], actor=STAFF)
    assert [(r.currency_code, r.rate) for r in updated] == [
        ("EUR", Decimal("0.95")),
        ("JPY", Decimal(150)),
    ]
    row = ExchangeRate.get_by_id("EUR")
    assert (row.rate, row.updated_by) == ("0.95", "staff-1")
    assert row.update_time >= before.update_time
    converted = exchange_rates.convert(amount=Money("USD", 1000), target_currency="EUR")
    assert converted.converted == Money("EUR", 950)


def test_a_rate_for_a_new_iso_currency_makes_it_supported(db: peewee.Database) -> None:
    assert not exchange_rates.is_supported("PEN")
    exchange_rates.update([("PEN", "3.7512")], actor=STAFF)
    assert exchange_rates.is_supported("PEN")
    assert "PEN" in [r.currency_code for r in exchange_rates.list_()]


def test_update_is_all_or_none(db: peewee.Database) -> None:
    with pytest.raises(InvalidArgument) as caught:
        exchange_rates.update([("EUR", "0.5"), ("GBP", "1e-3")], actor=STAFF)
    assert violated(caught) == {"rates[1].rate"}
    assert ExchangeRate.get_by_id("EUR").rate == SEED_RATES["EUR"]


@pytest.mark.parametrize(
    ("entries", "fields"),
    [
        ([], {"rates"}),
        ([("EUR", "1")] * 201, {"rates"}),
        ([("", "1")], {"rates[0].currency_code"}),
        ([("XYZ", "1")], {"rates[0].currency_code"}),
        ([("USD", "1")], {"rates[0].currency_code"}),
        ([("EUR", "1"), ("eur", "2")], {"rates[1].currency_code"}),
        ([("EUR", "0")], {"rates[0].rate"}),
        ([("EUR", "")], {"rates[0].rate"}),
        (
            [("EUR", "0.92"), ("GBP", "-1"), ("XYZ", "x")],
            {"rates[1].rate", "rates[2].rate"} | {"rates[2].currency_code"},
        ),
    ],
    ids=["none", "201", "empty-code", "unknown", "base", "twice", "zero", "empty", "several"],
)
def test_update_names_every_bad_entry(
    db: peewee.Database, entries: list[tuple[str, str]], fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        exchange_rates.update(entries, actor=STAFF)
    assert violated(caught) == fields


def test_convert_uses_both_rates_and_reports_the_later_update(db: peewee.Database) -> None:
    exchange_rates.update([("GBP", "0.8")], actor=STAFF)
    conversion = exchange_rates.convert(amount=Money("eur", 100_000), target_currency="GBP")
    # 1000 EUR / 0.9213 * 0.8 = 868.338...
    assert conversion.converted == Money("GBP", 86834)
    assert conversion.source_rate.rate == Decimal("0.9213")
    assert conversion.target_rate.rate == Decimal("0.8")
    assert conversion.rate_update_time == conversion.target_rate.update_time
    assert conversion.cross_rate == Decimal("0.868338217736")


def test_converting_a_currency_to_itself_is_exact(db: peewee.Database) -> None:
    conversion = exchange_rates.convert(amount=Money("USD", -987_654_321), target_currency="USD")
    assert conversion.converted == Money("USD", -987_654_321)
    assert conversion.cross_rate == 1


@pytest.mark.parametrize(
    ("source", "target", "fields"),
    [
        ("XYZ", "USD", {"money.currency_code"}),
        ("USD", "XYZ", {"target_currency_code"}),
        ("PEN", "USD", {"money.currency_code"}),  # ISO 4217, but no rate
        ("USD", "PEN", {"target_currency_code"}),
        ("PEN", "PEN", {"money.currency_code"}),
        ("", "", {"money.currency_code", "target_currency_code"}),
    ],
)
def test_convert_refuses_unknown_and_unsupported_currencies(
    db: peewee.Database, source: str, target: str, fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        exchange_rates.convert(amount=Money(source, 100), target_currency=target)
    assert violated(caught) == fields


def test_convert_refuses_a_result_beyond_int64(db: peewee.Database) -> None:
    with pytest.raises(InvalidArgument) as caught:
        exchange_rates.convert(amount=Money("USD", 2**63 - 1), target_currency="KRW")
    assert violated(caught) == {"money.amount_minor"}


def test_a_quote_reads_the_current_rates(db: peewee.Database) -> None:
    rules = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE)

    def quote() -> shipping.Quote:
        return shipping.quote(
            rules, destination_country="de", total_weight_grams=1500, subtotal=Money("EUR", 100)
        )

    first = quote()
    # (1299 + 2 * 350) US cents = 1999 * 0.9213 = 1841.6787 euro cents.
    assert first.cost == Money("EUR", 1842)
    assert quote() == first
    exchange_rates.update([("EUR", "0.5")], actor=STAFF)
    second = quote()
    assert second.cost == Money("EUR", 1000)  # 999.5 -> 1000, half to even
    assert second.quote_id != first.quote_id


@pytest.mark.parametrize(
    ("country", "weight", "subtotal", "fields"),
    [
        ("", 0, Money("USD", 0), {"destination_country_code"}),
        ("XX", 0, Money("USD", 0), {"destination_country_code"}),
        ("DEU", 0, Money("USD", 0), {"destination_country_code"}),
        ("US", -1, Money("USD", 0), {"total_weight_grams"}),
        ("US", shipping.MAX_WEIGHT_GRAMS + 1, Money("USD", 0), {"total_weight_grams"}),
        ("US", 0, Money("USD", -1), {"subtotal.amount_minor"}),
        ("US", 0, Money("", 0), {"subtotal.currency_code"}),
        ("US", 0, Money("XYZ", 0), {"subtotal.currency_code"}),
        ("US", 0, Money("PEN", 0), {"subtotal.currency_code"}),
    ],
)
def test_a_quote_request_is_validated(
    db: peewee.Database, country: str, weight: int, subtotal: Money, fields: set[str]
) -> None:
    rules = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE)
    with pytest.raises(InvalidArgument) as caught:
        shipping.quote(
            rules, destination_country=country, total_weight_grams=weight, subtotal=subtotal
        )
    assert violated(caught) == fields
