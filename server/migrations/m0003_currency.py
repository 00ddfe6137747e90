"""Creates exchange rates and seeds them: USD is the base, every other rate is units per USD."""

from __future__ import annotations

import datetime as dt

import peewee

# Currency -> units per 1 USD, as exact decimal strings (mid-market rates of late 2024, rounded).
# These are the currencies storefront supports out of the box; a rate set later adds another.
SEED_RATES: dict[str, str] = {
    "AED": "3.6725",
    "AUD": "1.5234",
    "BHD": "0.376",
    "BRL": "5.012",
    "CAD": "1.3612",
    "CHF": "0.9051",
    "CLP": "938.5",
    "CNY": "7.2345",
    "CZK": "23.215",
    "DKK": "6.8721",
    "EUR": "0.9213",
    "GBP": "0.7874",
    "HKD": "7.8265",
    "HUF": "361.42",
    "ILS": "3.7124",
    "INR": "83.412",
    "ISK": "138.45",
    "JPY": "151.37",
    "KRW": "1352.75",
    "KWD": "0.30745",
    "MXN": "16.985",
    "NOK": "10.7512",
    "NZD": "1.6615",
    "PLN": "3.9864",
    "SAR": "3.75",
    "SEK": "10.6825",
    "SGD": "1.3478",
    "THB": "36.512",
    "USD": "1",
    "ZAR": "18.642",
}
SEED_UPDATED_BY = "migration"


class _Frozen(peewee.Model):
    class Meta:
        legacy_table_names = False


class ExchangeRate(_Frozen):
    currency_code = peewee.CharField(
        max_length=3, primary_key=True, constraints=[peewee.Check("length(currency_code) = 3")]
    )
    # Exact decimal text: SQLite's NUMERIC affinity would turn a DECIMAL column into a float.
    rate = peewee.CharField(max_length=32, constraints=[peewee.Check("rate <> ''")])
    update_time = peewee.DateTimeField()
    updated_by = peewee.CharField(max_length=64)

    class Meta:
        table_name = "exchange_rates"


TABLES = [ExchangeRate]


def seed_rows(now: dt.datetime) -> list[dict[str, object]]:
    """Returns the seed rates as rows stamped `now`."""
    return [
        {"currency_code": code, "rate": rate, "update_time": now, "updated_by": SEED_UPDATED_BY}
        for code, rate in SEED_RATES.items()
    ]


def up(db: peewee.Database) -> None:
    """Creates the exchange-rate table and seeds the supported currencies."""
    with db.bind_ctx(TABLES):
        db.create_tables(TABLES)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        ExchangeRate.insert_many(seed_rows(now)).execute()
