"""Exchange rates: one row per supported currency, its rate against the base currency."""

from __future__ import annotations

from collections.abc import Collection

import peewee

from server.db import BaseModel, utcnow


class ExchangeRate(BaseModel):
    """A supported currency's rate against the base currency, stored as an exact decimal string."""

    currency_code = peewee.CharField(max_length=3, primary_key=True)
    rate = peewee.CharField(max_length=32)  # plain decimal text, e.g. "0.9213"; never a float
    update_time = peewee.DateTimeField(default=utcnow)
    updated_by = peewee.CharField(max_length=64)

    class Meta:
        table_name = "exchange_rates"


def by_code(codes: Collection[str]) -> dict[str, ExchangeRate]:
    """Returns the rows of the given currency codes that exist, by code."""
    if not codes:
        return {}
    query = ExchangeRate.select().where(ExchangeRate.currency_code.in_(list(codes)))
    return {row.currency_code: row for row in query}


def all_by_code() -> list[ExchangeRate]:
    """Returns every row, ordered by currency code."""
    return list(ExchangeRate.select().order_by(ExchangeRate.currency_code))
