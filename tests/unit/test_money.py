"""Money conversion: exact in minor units, rounded once half to even; strict rate strings."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.config import DEFAULT_SHIPPING_RULES_FILE, DEFAULT_TAX_RATES_FILE
from server.domain import currencies, exchange_rates, money, shipping, taxes
from server.domain.money import INT64_MAX, INT64_MIN, Money, RateError
from server.migrations.m0003_currency import SEED_RATES

SEEDED = sorted(SEED_RATES)
amounts = st.integers(min_value=-(10**15), max_value=10**15)
# Any rate parse_rate accepts: 1 to 12 significant digits, within the bounds.
rates = (
    st.builds(
        lambda digits, scale: Decimal(digits).scaleb(-scale),
        st.integers(min_value=1, max_value=10**12 - 1),
        st.integers(min_value=0, max_value=17),
    )
    .filter(lambda r: money.RATE_MIN <= r <= money.RATE_MAX)
    .filter(lambda r: money.significant_digits(r) <= 12)
)
exponents = st.sampled_from([0, 2, 3, 4])


def decimal_formula(
    amount_minor: int, from_exponent: int, to_exponent: int, from_rate: Decimal, to_rate: Decimal
) -> int:
    """The documented rule, with Decimal at a precision far beyond any input's digits."""
    with localcontext() as context:
        context.prec = 200
        value = (
            Decimal(amount_minor)
            / Decimal(10) ** from_exponent
            * to_rate
            / from_rate
            * Decimal(10) ** to_exponent
        )
        return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def convert(amount: int, from_code: str, to_code: str) -> int:
    return money.convert(
        Money(from_code, amount),
        to_code,
        from_rate=Decimal(SEED_RATES[from_code]),
        to_rate=Decimal(SEED_RATES[to_code]),
    ).amount_minor


# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "from_code", "to_code", "expected"),
    [
        (1000, "USD", "EUR", 921),  # 9.213 EUR -> 921.3 cents
        (1000, "USD", "JPY", 1514),  # 1513.7 yen: JPY has no minor unit
        (1000, "JPY", "USD", 661),  # 6.6063... USD
        (1000, "USD", "KWD", 3074),  # 3074.5 fils, half to even: 3074
        (3000, "USD", "KWD", 9224),  # 9223.5 fils, half to even: 9224
        (1, "KWD", "JPY", 0),  # 0.49 yen
        (100_000, "EUR", "GBP", 85466),  # 1000 * 0.7874 / 0.9213 = 854.66189... GBP
        (-1000, "USD", "JPY", -1514),
        (0, "USD", "KRW", 0),
        (123_456, "GBP", "GBP", 123_456),
    ],
)
def test_conversion_examples(amount: int, from_code: str, to_code: str, expected: int) -> None:
    assert convert(amount, from_code, to_code) == expected


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(1, 0), (3, 2), (5, 2), (7, 4), (-1, 0), (-3, -2), (-5, -2), (2, 1)],
)
def test_halves_round_to_even(amount: int, expected: int) -> None:
    # A rate of one half turns odd amounts into exact halves.
    converted = money.convert_minor(
        amount, from_exponent=2, to_exponent=2, from_rate=Decimal(1), to_rate=Decimal("0.5")
    )
    assert converted == expected


def test_a_currency_converted_to_itself_is_unchanged_whatever_the_rates_say() -> None:
    amount = Money("USD", 12_345)
    assert money.convert(amount, "USD", from_rate=Decimal(3), to_rate=Decimal(7)) == amount


def test_an_amount_beyond_int64_is_an_overflow() -> None:
    with pytest.raises(OverflowError):
        money.convert(
            Money("USD", INT64_MAX), "JPY", from_rate=Decimal(1), to_rate=Decimal("151.37")
        )
    big = money.convert(
        Money("USD", INT64_MAX), "EUR", from_rate=Decimal(1), to_rate=Decimal("0.9213")
    )
    assert big.amount_minor < INT64_MAX


def test_the_display_cross_rate_has_12_significant_digits() -> None:
    rate = money.cross_rate(from_rate=Decimal("0.9213"), to_rate=Decimal("0.7874"))
    assert str(rate) == "0.854661890806"


# --- properties ----------------------------------------------------------------------------------


@given(amount=amounts, exponent=exponents)
def test_rate_one_between_currencies_of_one_exponent_is_the_identity(
    amount: int, exponent: int
) -> None:
    converted = money.convert_minor(
        amount,
        from_exponent=exponent,
        to_exponent=exponent,
        from_rate=Decimal(1),
        to_rate=Decimal(1),
    )
    assert converted == amount


@given(amount=amounts, rate=rates, exponent=exponents)
def test_equal_rates_are_the_identity(amount: int, rate: Decimal, exponent: int) -> None:
    converted = money.convert_minor(
        amount, from_exponent=exponent, to_exponent=exponent, from_rate=rate, to_rate=rate
    )
    assert converted == amount


@given(amount=amounts, exponent=exponents)
def test_gaining_decimal_places_with_rate_one_is_exact(amount: int, exponent: int) -> None:
    # JPY (0) -> USD (2) -> KWD (3) and so on: more decimal places lose nothing.
    converted = money.convert_minor(
        amount,
        from_exponent=0,
        to_exponent=exponent,
        from_rate=Decimal(1),
        to_rate=Decimal(1),
    )
    assert converted == amount * 10**exponent


@given(
    amount=amounts,
    from_exponent=exponents,
    to_exponent=exponents,
    from_rate=rates,
    to_rate=rates,
)
def test_conversion_is_the_documented_decimal_formula_rounded_half_even(
    amount: int, from_exponent: int, to_exponent: int, from_rate: Decimal, to_rate: Decimal
) -> None:
    converted = money.convert_minor(
        amount,
        from_exponent=from_exponent,
        to_exponent=to_exponent,
        from_rate=from_rate,
        to_rate=to_rate,
    )
    assert converted == decimal_formula(amount, from_exponent, to_exponent, from_rate, to_rate)
    exact = (
        Fraction(amount)
        * Fraction(to_rate)
        / Fraction(from_rate)
        * Fraction(10) ** (to_exponent - from_exponent)
    )
    assert abs(converted - exact) <= Fraction(1, 2)


@given(amount=amounts, from_rate=rates, to_rate=rates, exponent=exponents)
def test_negation_commutes_with_conversion(
    amount: int, from_rate: Decimal, to_rate: Decimal, exponent: int
) -> None:
    def convert_it(value: int) -> int:
        return money.convert_minor(
            value, from_exponent=2, to_exponent=exponent, from_rate=from_rate, to_rate=to_rate
        )

    assert convert_it(-amount) == -convert_it(amount)


@given(
    amount=st.integers(min_value=-(10**12), max_value=10**12),
    from_code=st.sampled_from(SEEDED),
    to_code=st.sampled_from(SEEDED),
)
def test_a_round_trip_is_off_by_at_most_the_two_roundings(
    amount: int, from_code: str, to_code: str
) -> None:
    there = convert(amount, from_code, to_code)
    back = convert(there, to_code, from_code)
    # Converting multiplies by k; the first rounding (<= 1/2 of the target's minor unit) comes
    # back as <= 1/(2k) source units, the second rounding adds <= 1/2.
    k = (
        Fraction(Decimal(SEED_RATES[to_code]))
        / Fraction(Decimal(SEED_RATES[from_code]))
        * Fraction(10) ** (currencies.exponent(to_code) - currencies.exponent(from_code))
    )
    assert abs(back - amount) <= Fraction(1, 2) + 1 / (2 * k)


@given(a=amounts, b=amounts, to_code=st.sampled_from(SEEDED))
def test_conversion_is_monotonic(a: int, b: int, to_code: str) -> None:
    low, high = sorted((a, b))
    assert convert(low, "USD", to_code) <= convert(high, "USD", to_code)


# --- parsing rate strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        ("0.9213", Decimal("0.9213")),
        ("151.37", Decimal("151.37")),
        ("0.000001", Decimal("0.000001")),
        ("1000000000", Decimal("1000000000")),
        ("123456.789012", Decimal("123456.789012")),  # 12 significant digits
        ("0.00012345678901200", Decimal("0.000123456789012")),  # trailing zeros are not counted
        ("007.50", Decimal("7.5")),
    ],
)
def test_plain_positive_decimals_are_rates(text: str, value: Decimal) -> None:
    assert money.parse_rate(text) == value


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "required"),
        ("0", "positive"),
        ("0.000", "positive"),
        ("-1", "plain decimal"),
        ("+1", "plain decimal"),
        ("1e-3", "plain decimal"),
        ("1E3", "plain decimal"),
        (" 1.5", "plain decimal"),
        ("1,5", "plain decimal"),
        ("1.", "plain decimal"),
        (".5", "plain decimal"),
        ("NaN", "plain decimal"),
        ("Infinity", "plain decimal"),
        ("١٢", "plain decimal"),  # Arabic-Indic digits are digits to Python, not to us
        ("1234567.890123", "12 significant digits"),
        ("0.0000001", "between"),
        ("1000000001", "between"),
        ("1" * 40, "plain decimal"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(RateError, match=problem):
        money.parse_rate(text)


@given(rate=rates)
def test_a_formatted_rate_parses_back_to_itself(rate: Decimal) -> None:
    assert money.parse_rate(money.format_rate(rate)) == rate


def test_int64_bounds_are_the_protobuf_ones() -> None:
    assert (INT64_MIN, INT64_MAX) == (-(2**63), 2**63 - 1)


# --- applying a rate (tax) and pricing an order --------------------------------------------------

int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
# Non-negative rates of any scale: 0.19, 0.000001, 1, 250, 1E+3 ...
fractions = st.builds(
    lambda digits, scale: Decimal(digits).scaleb(-scale),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=-3, max_value=15),
)
# What the tax rates file accepts: 0 to 1 with at most 6 decimals.
tax_rates = st.integers(min_value=0, max_value=10**6).map(lambda n: Decimal(n).scaleb(-6))


def decimal_product(amount_minor: int, rate: Decimal) -> int:
    """amount x rate with Decimal at a precision far beyond any input, rounded half to even."""
    with localcontext() as context:
        context.prec = 200
        return int((Decimal(amount_minor) * rate).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


@given(amount=int64s, rate=fractions)
def test_apply_rate_is_the_exact_product_rounded_half_to_even(amount: int, rate: Decimal) -> None:
    applied = money.apply_rate(amount, rate)
    assert applied == decimal_product(amount, rate)
    assert abs(applied - Fraction(amount) * Fraction(rate)) <= Fraction(1, 2)


@given(amount=st.integers(min_value=0, max_value=INT64_MAX), rate=tax_rates)
def test_tax_never_exceeds_its_base(amount: int, rate: Decimal) -> None:
    assert 0 <= money.apply_rate(amount, rate) <= amount


@pytest.mark.parametrize(
    ("amount", "rate", "expected"),
    [
        (50, "0.19", 10),  # 9.5 -> 10
        (150, "0.19", 28),  # 28.5 -> 28
        (250, "0.01", 2),  # 2.5 -> 2
        (350, "0.01", 4),  # 3.5 -> 4
        (-150, "0.19", -28),
        (1, "0.5", 0),
        (3, "0.5", 2),
        (7, "1E+2", 700),
        (123, "0", 0),
    ],
)
def test_apply_rate_examples(amount: int, rate: str, expected: int) -> None:
    assert money.apply_rate(amount, Decimal(rate)) == expected


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        money.apply_rate(100, Decimal("-0.19"))


SHIPPING_RULES = shipping.load_rules(DEFAULT_SHIPPING_RULES_FILE)
TAX_RATES = taxes.load_rates(DEFAULT_TAX_RATES_FILE)
SEEDED_RATES = {
    code: exchange_rates.Rate(code, Decimal(rate), dt.datetime(2024, 1, 1), "seed")
    for code, rate in SEED_RATES.items()
}
# (catalog currency, unit price in its minor units, quantity, weight in grams per unit)
order_lines = st.lists(
    st.tuples(
        st.sampled_from(SEEDED),
        st.integers(min_value=0, max_value=10**9),
        st.integers(min_value=1, max_value=1000),
        st.integers(min_value=0, max_value=5000),
    ),
    min_size=1,
    max_size=8,
)
countries = st.sampled_from(["DE", "US", "FI", "CH", "JP", "CA", "BR", "AU", "HU"])


def priced_as_checkout(
    lines: list[tuple[str, int, int, int]], currency: str, country: str
) -> tuple[int, int, int, int]:
    """(subtotal, shipping, tax, total) computed with the functions checkout uses, as it does:
    each unit price converted once, times the quantity, summed, + shipping + tax."""
    units = [
        exchange_rates.convert_with(SEEDED_RATES, Money(code, price), currency).amount_minor
        for code, price, _, _ in lines
    ]
    subtotal = sum(unit * quantity for unit, (_, _, quantity, _) in zip(units, lines, strict=True))
    weight = sum(quantity * grams for _, _, quantity, grams in lines)
    quote = shipping.price(
        SHIPPING_RULES,
        country=country,
        weight_grams=weight,
        subtotal=Money(currency, subtotal),
        rates=SEEDED_RATES,
    )
    shipping_minor = quote.cost.amount_minor
    tax = TAX_RATES.tax_minor(country, subtotal_minor=subtotal, shipping_minor=shipping_minor)
    return subtotal, shipping_minor, tax, subtotal + shipping_minor + tax


def priced_with_decimal(
    lines: list[tuple[str, int, int, int]], currency: str, country: str
) -> tuple[int, int, int, int]:
    """The same order priced from the documented rules with Decimal at 200 digits."""

    def to_currency(code: str, amount: int) -> int:
        if code == currency:
            return amount
        return decimal_formula(
            amount,
            currencies.exponent(code),
            currencies.exponent(currency),
            Decimal(SEED_RATES[code]),
            Decimal(SEED_RATES[currency]),
        )

    subtotal = sum(to_currency(code, price) * quantity for code, price, quantity, _ in lines)
    zone = SHIPPING_RULES.zone_for(country)
    started_kg = -(-sum(quantity * grams for _, _, quantity, grams in lines) // 1000)
    threshold = zone.free_shipping_threshold_minor
    free = threshold is not None and subtotal >= to_currency(SHIPPING_RULES.currency, threshold)
    shipping_minor = (
        0
        if free
        else to_currency(
            SHIPPING_RULES.currency, zone.base_cost_minor + zone.per_kg_cost_minor * started_kg
        )
    )
    taxed = subtotal + (shipping_minor if TAX_RATES.shipping_taxable else 0)
    tax = decimal_product(taxed, TAX_RATES.rate_for(country))
    return subtotal, shipping_minor, tax, subtotal + shipping_minor + tax


@given(lines=order_lines, currency=st.sampled_from(SEEDED), country=countries)
def test_an_order_total_is_exact_in_minor_units(
    lines: list[tuple[str, int, int, int]], currency: str, country: str
) -> None:
    priced = priced_as_checkout(lines, currency, country)
    assert priced == priced_with_decimal(lines, currency, country)
    subtotal, shipping_minor, tax, total = priced
    assert all(isinstance(part, int) for part in priced)
    assert total == subtotal + shipping_minor + tax
    assert min(priced) >= 0


def test_each_unit_price_is_converted_once_before_multiplying() -> None:
    # 1 USD cent is 0.9213 EUR cents -> 1 cent; 1000 of them are 1000 cents, not 921.
    lines = [("USD", 1, 1000, 0)]
    subtotal, _, _, _ = priced_as_checkout(lines, "EUR", "US")
    assert subtotal == 1000
