"""Cart views: line totals, stock flags and subtotals, without a database."""

from __future__ import annotations

import datetime as dt

from server.domain.carts import CartView, LineView

NOW = dt.datetime(2026, 1, 1)


def line(currency: str, price: int, quantity: int, available: int = 10, state: str = "ACTIVE"):
    return LineView(
        id="l",
        product_id="p",
        sku="S",
        name="N",
        currency_code=currency,
        unit_price_minor=price,
        quantity=quantity,
        available=available,
        product_state=state,
        create_time=NOW,
        update_time=NOW,
    )


def test_line_total_is_exact_in_minor_units() -> None:
    assert line("JPY", 1999, 99).line_total_minor == 197_901


def test_in_stock_needs_enough_units_and_an_active_product() -> None:
    assert line("EUR", 1, 3, available=3).in_stock
    assert not line("EUR", 1, 4, available=3).in_stock
    assert not line("EUR", 1, 1, available=3, state="ARCHIVED").in_stock


def test_subtotals_are_per_currency_in_code_order() -> None:
    cart = CartView(
        lines=[line("USD", 250, 2), line("EUR", 100, 3), line("USD", 1, 1)], update_time=None
    )
    assert cart.subtotals == [("EUR", 300), ("USD", 501)]
    assert cart.total_quantity == 6
    assert CartView(lines=[], update_time=None).subtotals == []
