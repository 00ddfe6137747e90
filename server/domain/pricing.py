"""Pricing a cart: the one function PreviewCheckout shows and PlaceOrder charges.

Each unit price is converted once into the order's currency (rounded half to even); a discount
code takes its percentage (rounded half to even) or fixed amount off the lines it covers, shared
among them in proportion to their totals (largest remainders get the odd minor units); shipping
is the destination zone's price for the cart's weight and discounted subtotal (free above the
zone's threshold); tax is the destination's rate times discounted subtotal plus shipping, rounded
once. Given
the same cart, catalog, rates and rules, a preview and the order placed after it agree to the
minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Decimal

from server.domain import exchange_rates, promotions, shipping, taxes
from server.domain.money import INT64_MAX, Money
from server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from server.models.cart import CartLine
from server.models.product import Product


@dataclass(frozen=True)
class PricedLine:
    """A cart line at its price in the order's currency."""

    cart_line_id: str
    product: Product
    quantity: int
    unit_price_minor: int
    # This line's share of the order's discount.
    discount_minor: int = 0

    @property
    def total_minor(self) -> int:
        """Unit price times quantity."""
        return self.unit_price_minor * self.quantity


@dataclass(frozen=True)
class Priced:
    """A cart priced for one destination and currency: every line, shipping, tax and total."""

    currency: str
    lines: list[PricedLine]
    subtotal_minor: int  # before the discount
    discount_minor: int
    discount_code: str  # "" without one
    shipping: shipping.Quote
    tax_rate: Decimal
    tax_minor: int
    total_minor: int

    @property
    def shipping_minor(self) -> int:
        """What shipping costs (0 when free)."""
        return self.shipping.cost.amount_minor


def cart_lines(owner: str) -> list[CartLine]:
    """The owner's cart lines with their products, oldest first; FAILED_PRECONDITION
    (CART_EMPTY) when there are none."""
    rows = list(
        CartLine.select(CartLine, Product)
        .join(Product)
        .where(CartLine.cart == owner)
        .order_by(CartLine.create_time, CartLine.id)
    )
    if not rows:
        raise FailedPrecondition(
            "The cart is empty; add products before placing an order.", reason="CART_EMPTY"
        )
    return rows


def price_cart(
    rows: list[CartLine],
    *,
    currency: str,
    country: str,
    shipping_rules: shipping.Rules,
    tax_rates: taxes.TaxRates,
    offer: promotions.Offer | None = None,
) -> Priced:
    """Prices `rows` (from `cart_lines`) in `currency` for delivery to `country`, with the
    discount of `offer` (promotions.offer) if given.

    Raises FAILED_PRECONDITION (PRICE_NOT_CONVERTIBLE) when a product's currency has no exchange
    rate; for the offer, PROMOTION_NOT_APPLICABLE (no line it covers) or
    PROMOTION_MINIMUM_NOT_MET; INVALID_ARGUMENT (currency_code) when the total does not fit in
    int64.
    """
    needed = {currency, shipping_rules.currency}
    needed.update(row.product.price_currency for row in rows)
    rates = exchange_rates.rates(needed)
    unpriceable = sorted(code for code in needed if code not in rates)
    if unpriceable:
        # Only reachable if a product's currency has no exchange rate (its price is unusable).
        raise FailedPrecondition(
            "Some products are priced in currencies that cannot be converted: "
            + ", ".join(unpriceable)
            + ".",
            reason="PRICE_NOT_CONVERTIBLE",
        )
    try:
        lines = [
            PricedLine(
                row.id,
                row.product,
                int(row.quantity),
                exchange_rates.convert_with(
                    rates, Money(row.product.price_currency, int(row.product.price_minor)), currency
                ).amount_minor,
            )
            for row in rows
        ]
        subtotal = sum(line.total_minor for line in lines)
        if offer is not None:
            lines = _discounted(offer, lines, subtotal)
        discount = sum(line.discount_minor for line in lines)
        weight = sum(int(line.product.weight_grams) * line.quantity for line in lines)
        quote = shipping.price(
            shipping_rules,
            country=country,
            weight_grams=min(weight, shipping.MAX_WEIGHT_GRAMS),
            subtotal=Money(currency, subtotal - discount),
            rates=rates,
        )
        shipping_minor = quote.cost.amount_minor
        tax = tax_rates.tax_minor(
            country, subtotal_minor=subtotal - discount, shipping_minor=shipping_minor
        )
        total = subtotal - discount + shipping_minor + tax
        if total > INT64_MAX:
            raise OverflowError
    except OverflowError:
        raise InvalidArgument(
            "The order total is too large to express in this currency.",
            violations=[FieldViolation("currency_code", "the order total does not fit in int64")],
        ) from None
    return Priced(
        currency=currency,
        lines=lines,
        subtotal_minor=subtotal,
        discount_minor=discount,
        discount_code="" if offer is None else offer.code,
        shipping=quote,
        tax_rate=tax_rates.rate_for(country),
        tax_minor=tax,
        total_minor=total,
    )


def _discounted(
    offer: promotions.Offer, lines: list[PricedLine], subtotal: int
) -> list[PricedLine]:
    """The lines with their shares of the offer's discount."""
    if offer.minimum_subtotal_minor is not None and subtotal < offer.minimum_subtotal_minor:
        error = promotions.refused(
            "The cart's subtotal is below this code's minimum.", "PROMOTION_MINIMUM_NOT_MET"
        )
        error.metadata["minimum_subtotal_minor"] = str(offer.minimum_subtotal_minor)
        raise error
    covered = promotions.eligible_products(offer, [line.product.id for line in lines])
    eligible = [index for index, line in enumerate(lines) if line.product.id in covered]
    base = sum(lines[index].total_minor for index in eligible)
    if base == 0:
        raise promotions.refused(
            "This code covers none of the products in the cart.", "PROMOTION_NOT_APPLICABLE"
        )
    if offer.percent_basis_points is not None:
        off = Decimal(base * offer.percent_basis_points) / promotions.FULL_BASIS_POINTS
        discount = int(off.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    else:
        discount = min(offer.amount_off_minor or 0, base)
    shares = allocate(discount, [lines[index].total_minor for index in eligible])
    result = list(lines)
    for index, share in zip(eligible, shares, strict=True):
        result[index] = replace(lines[index], discount_minor=share)
    return result


def allocate(amount: int, weights: list[int]) -> list[int]:
    """Splits `amount` in proportion to `weights` (summing to more than 0) exactly: each gets
    the floor of its share, and the largest remainders (the earlier on a tie) one more."""
    total = sum(weights)
    floors = [amount * weight // total for weight in weights]
    remainders = [amount * weight % total for weight in weights]
    short = amount - sum(floors)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:short]:
        floors[index] += 1
    return floors
