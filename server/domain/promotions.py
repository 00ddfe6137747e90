"""Promotions: discount codes staff create, that a checkout applies and redeems.

A promotion takes a percentage (in basis points) or a fixed amount per currency off the cart's
eligible lines (its products and categories; all when it names none), from an optional minimum
subtotal per currency, between optional start and end times, up to a number of uses in all and
per customer. One code per order.

Uses are counted under the promotion's transaction lock (PostgreSQL advisory lock; SQLite's
writers take turns anyway): however many checkouts race for the last use, exactly one gets it.
A redemption belongs to its order; when the order's payment fails or the order is cancelled it is
released and no longer counts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import peewee

from server.db import database, lock_transaction_on, utcnow
from server.domain import exchange_rates, listing
from server.domain.money import Money
from server.errors import AlreadyExists, FailedPrecondition, NotFound
from server.models.product import ProductCategory
from server.models.promotion import Promotion, PromotionRedemption
from server.validation import Validator

CODE_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9_-]{2,31}")
DESCRIPTION_MAX_LENGTH = 200
MAX_SCOPE = 100
FULL_BASIS_POINTS = 10_000


@dataclass(frozen=True)
class PromotionFields:
    """What CreatePromotion sets (amounts as Money; times naive UTC or None)."""

    code: str
    description: str
    percent_basis_points: int
    amounts_off: Sequence[Money]
    minimum_subtotals: Sequence[Money]
    product_ids: Sequence[str]
    category_slugs: Sequence[str]
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    max_uses: int
    max_uses_per_customer: int


@dataclass(frozen=True)
class Offer:
    """A promotion as a checkout applies it: what it takes off, from which products."""

    promotion_id: str
    code: str
    percent_basis_points: int | None
    amount_off_minor: int | None  # in the checkout's currency
    minimum_subtotal_minor: int | None
    product_ids: frozenset[str]
    category_slugs: frozenset[str]

    @property
    def scoped(self) -> bool:
        """Whether only some products are eligible."""
        return bool(self.product_ids or self.category_slugs)


@dataclass(frozen=True)
class Counted:
    """A promotion with its uses that hold now."""

    promotion: Promotion
    use_count: int


# --- managing (STAFF) -----------------------------------------------------------------------------


def normalized_code(raw: str) -> str:
    """Codes are case-insensitive: stored and compared upper-case, without surrounding spaces."""
    return raw.strip().upper()


def create(fields: PromotionFields) -> Counted:
    """Creates a promotion; ALREADY_EXISTS when its code is taken."""
    code = normalized_code(fields.code)
    v = Validator()
    if not CODE_PATTERN.fullmatch(code):
        v.add("promotion.code", "must be 3 to 32 letters, digits, '_' or '-', starting with one")
    description = v.text(
        "promotion.description", fields.description, DESCRIPTION_MAX_LENGTH, required=False
    )
    percent = fields.percent_basis_points
    if (percent > 0) == bool(fields.amounts_off):
        v.add("promotion", "must set exactly one of percent_basis_points and amounts_off")
    v.check(
        0 <= percent <= FULL_BASIS_POINTS,
        "promotion.percent_basis_points",
        "must be 1 to 10000 (0.01% to 100%)",
    )
    amounts = _amounts(v, "promotion.amounts_off", fields.amounts_off, positive=True)
    minimums = _amounts(v, "promotion.minimum_subtotals", fields.minimum_subtotals)
    v.check(len(fields.product_ids) <= MAX_SCOPE, "promotion.product_ids", "at most 100")
    for index, product_id in enumerate(fields.product_ids):
        v.check_id(f"promotion.product_ids[{index}]", product_id, "product")
    v.check(len(fields.category_slugs) <= MAX_SCOPE, "promotion.category_slugs", "at most 100")
    if fields.start_time and fields.end_time and fields.end_time <= fields.start_time:
        v.add("promotion.end_time", "must be after start_time")
    v.check(fields.max_uses >= 0, "promotion.max_uses", "must not be negative (0: no limit)")
    v.check(
        fields.max_uses_per_customer >= 0,
        "promotion.max_uses_per_customer",
        "must not be negative (0: no limit)",
    )
    v.raise_if_any()
    now = utcnow()
    with database.atomic():
        if Promotion.select().where(Promotion.code == code).exists():
            raise AlreadyExists(
                f"A promotion with the code {code} already exists.", reason="PROMOTION_CODE_TAKEN"
            )
        try:
            created = Promotion.create(
                id=str(uuid.uuid4()),
                code=code,
                description=description,
                percent_basis_points=percent or None,
                amounts_off=json.dumps(amounts, sort_keys=True),
                minimum_subtotals=json.dumps(minimums, sort_keys=True),
                product_ids=json.dumps(sorted(set(fields.product_ids))),
                category_slugs=json.dumps(
                    sorted({c.strip().lower() for c in fields.category_slugs})
                ),
                start_time=fields.start_time,
                end_time=fields.end_time,
                max_uses=fields.max_uses or None,
                max_uses_per_customer=fields.max_uses_per_customer or None,
                create_time=now,
            )
        except peewee.IntegrityError:  # a concurrent creation took the code first
            raise AlreadyExists(
                f"A promotion with the code {code} already exists.", reason="PROMOTION_CODE_TAKEN"
            ) from None
    return Counted(created, 0)


def _amounts(
    v: Validator, path: str, amounts: Sequence[Money], *, positive: bool = False
) -> dict[str, int]:
    found: dict[str, int] = {}
    for index, amount in enumerate(amounts):
        code = exchange_rates.check_code(v, f"{path}[{index}].currency_code", amount.currency_code)
        if code in found:
            v.add(f"{path}[{index}].currency_code", "appears twice")
        low = 1 if positive else 0
        v.check(
            amount.amount_minor >= low,
            f"{path}[{index}].amount_minor",
            "must be positive" if positive else "must not be negative",
        )
        found[code] = amount.amount_minor
    return found


def get(promotion_id: str) -> Counted:
    """Returns the promotion with its use count; NOT_FOUND (PROMOTION_NOT_FOUND)."""
    found = _get(promotion_id)
    return Counted(found, use_counts([found.id])[found.id])


def _get(promotion_id: str) -> Promotion:
    v = Validator()
    v.check_id("promotion_id", promotion_id, "promotion")
    v.raise_if_any()
    found = Promotion.get_or_none(Promotion.id == promotion_id)
    if found is None:
        raise NotFound("The promotion does not exist.", reason="PROMOTION_NOT_FOUND")
    return found


PROMOTION_LIST = listing.ListSpec(
    name="promotions",
    model=Promotion,
    filter_fields={},
    order_fields={"create_time": Promotion.create_time, "code": Promotion.code},
    default_order="create_time desc",
)


def list_(page: listing.PageRequest) -> listing.Page[Counted]:
    """One page of the promotions, newest first (archived ones too), with their use counts."""
    request = listing.parse_list_request(PROMOTION_LIST, page)
    rows = listing.fetch_page(Promotion.select(), request)
    counts = use_counts([row.id for row in rows.items])
    return listing.Page([Counted(row, counts[row.id]) for row in rows.items], rows.next_page_token)


def archive(promotion_id: str) -> Counted:
    """Ends a promotion for good: its code no longer applies (orders keep their discounts)."""
    promotion = _get(promotion_id)
    if promotion.archive_time is None:
        now = utcnow()
        Promotion.update(archive_time=now).where(
            (Promotion.id == promotion.id) & Promotion.archive_time.is_null()
        ).execute()
    return get(promotion_id)


def use_counts(promotion_ids: Sequence[str]) -> dict[str, int]:
    """Each promotion's uses that still hold."""
    counts: dict[str, int] = dict.fromkeys(promotion_ids, 0)
    holding = PromotionRedemption.select(PromotionRedemption.promotion).where(
        PromotionRedemption.promotion.in_(list(promotion_ids))
        & PromotionRedemption.release_time.is_null()
    )
    for row in holding:
        counts[row.__data__["promotion"]] += 1
    return counts


# --- applying (checkout) --------------------------------------------------------------------------


def offer(code: str, *, customer: str, currency: str, now: dt.datetime) -> Offer:
    """The promotion behind `code` as it applies to this customer's checkout in `currency` now.

    Raises FAILED_PRECONDITION with reason PROMOTION_UNKNOWN, PROMOTION_NOT_STARTED,
    PROMOTION_ENDED (past its end or archived), PROMOTION_EXHAUSTED, PROMOTION_CUSTOMER_LIMIT or
    PROMOTION_CURRENCY (no amount or minimum in this currency). Call `lock` first in a checkout
    that will `redeem`, so the counts cannot change before it does.
    """
    promotion = Promotion.get_or_none(Promotion.code == normalized_code(code))
    if promotion is None:
        raise _refused("No promotion has this code.", "PROMOTION_UNKNOWN")
    if promotion.start_time is not None and now < promotion.start_time:
        raise _refused("This code is not valid yet.", "PROMOTION_NOT_STARTED")
    if promotion.archive_time is not None or (
        promotion.end_time is not None and now >= promotion.end_time
    ):
        raise _refused("This code has ended.", "PROMOTION_ENDED")
    holding = PromotionRedemption.select().where(
        (PromotionRedemption.promotion == promotion.id) & PromotionRedemption.release_time.is_null()
    )
    if promotion.max_uses is not None and holding.count() >= promotion.max_uses:
        raise _refused("This code has been used up.", "PROMOTION_EXHAUSTED")
    if (
        promotion.max_uses_per_customer is not None
        and holding.where(PromotionRedemption.customer_id == customer).count()
        >= promotion.max_uses_per_customer
    ):
        raise _refused(
            "You have already used this code as often as it allows.", "PROMOTION_CUSTOMER_LIMIT"
        )
    amounts: dict[str, int] = json.loads(promotion.amounts_off)
    minimums: dict[str, int] = json.loads(promotion.minimum_subtotals)
    if (amounts and currency not in amounts) or (minimums and currency not in minimums):
        raise _refused(f"This code does not apply to orders in {currency}.", "PROMOTION_CURRENCY")
    return Offer(
        promotion_id=promotion.id,
        code=promotion.code,
        percent_basis_points=promotion.percent_basis_points,
        amount_off_minor=amounts.get(currency),
        minimum_subtotal_minor=minimums.get(currency),
        product_ids=frozenset(json.loads(promotion.product_ids)),
        category_slugs=frozenset(json.loads(promotion.category_slugs)),
    )


def lock(code: str) -> None:
    """Serialises, until the transaction ends, the checkouts redeeming `code`."""
    lock_transaction_on(f"promotion:{normalized_code(code)}")


def eligible_products(applied: Offer, product_ids: Sequence[str]) -> set[str]:
    """Which of `product_ids` the offer covers."""
    if not applied.scoped:
        return set(product_ids)
    covered = {p for p in product_ids if p in applied.product_ids}
    if applied.category_slugs:
        rows = ProductCategory.select(ProductCategory.product).where(
            ProductCategory.product.in_(list(product_ids))
            & ProductCategory.slug.in_(list(applied.category_slugs))
        )
        covered.update(row.product_id for row in rows)
    return covered


def refused(message: str, reason: str) -> FailedPrecondition:
    """A code that does not apply to this cart (pricing's refusals: minimum, scope)."""
    return _refused(message, reason)


def _refused(message: str, reason: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason=reason, metadata={"field": "discount_code"})


def redeem(
    applied: Offer, *, customer: str, order_id: str, discount: Money, now: dt.datetime
) -> None:
    """Records the order's use of the offer (in the checkout's transaction, after `lock`)."""
    PromotionRedemption.create(
        id=str(uuid.uuid4()),
        promotion=applied.promotion_id,
        customer_id=customer,
        order_id=order_id,
        discount_minor=discount.amount_minor,
        currency=discount.currency_code,
        create_time=now,
    )


def release(order_id: str, now: dt.datetime) -> None:
    """Gives the order's use back (its payment failed, or it was cancelled); in its transaction."""
    PromotionRedemption.update(release_time=now).where(
        (PromotionRedemption.order_id == order_id) & PromotionRedemption.release_time.is_null()
    ).execute()
