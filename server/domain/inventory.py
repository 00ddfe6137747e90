"""Stock: levels, manual adjustments, the ledger, and the reservations checkout makes."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import peewee

from server.db import database, utcnow
from server.domain import idempotency, listing
from server.domain.commands import RequestKey
from server.domain.principal import Principal, Role
from server.errors import DomainError, FailedPrecondition, NotFound
from server.models.product import Product
from server.models.stock import StockLevel, StockMovement
from server.validation import Validator

MAX_DELTA = 1_000_000
REASON_MAX_LENGTH = 200
REFERENCE_MAX_LENGTH = 64
ACTOR_MAX_LENGTH = 64
MAX_BATCH_IDS = 100
MAX_LINES = 100
SYSTEM_ACTOR = "system"
ADJUST_STOCK_OPERATION = "/storefront.v1.InventoryService/AdjustStock"
BATCH_ADJUST_STOCK_OPERATION = "/storefront.v1.InventoryService/BatchAdjustStock"
MAX_BATCH_ADJUSTMENTS = 100
# Who sees on_hand and reserved; everyone else (customers, anonymous callers) sees only what can
# be bought.
SEES_ALL_TERMS = frozenset({Role.STAFF, Role.ADMIN, Role.SERVICE})

# (product id, quantity): one line of a reservation, release, sale or restock.
StockLine: TypeAlias = tuple[str, int]


class MovementKind(enum.StrEnum):
    """What changed the stock, as stored in the ledger."""

    ADJUSTMENT = "ADJUSTMENT"
    RESERVATION = "RESERVATION"
    RELEASE = "RELEASE"
    SALE = "SALE"
    RESTOCK = "RESTOCK"


def available(level: StockLevel) -> int:
    """Returns the units that can be sold now: on hand minus reserved."""
    return int(level.on_hand) - int(level.reserved)


@dataclass(frozen=True)
class StockView:
    """A product's stock as one caller may see it: on_hand and reserved only for staff."""

    product_id: str
    available: int
    on_hand: int | None
    reserved: int | None
    update_time: dt.datetime


def sees_all_terms(viewer: Principal | None) -> bool:
    """Whether `viewer` (None: anonymous) may see on_hand and reserved."""
    return viewer is not None and viewer.role in SEES_ALL_TERMS


def view(level: StockLevel, *, all_terms: bool) -> StockView:
    """Returns the row as a view, with on_hand and reserved only if `all_terms`."""
    return StockView(
        product_id=level.product_id,
        available=available(level),
        on_hand=int(level.on_hand) if all_terms else None,
        reserved=int(level.reserved) if all_terms else None,
        update_time=level.update_time,
    )


def _product_not_found(product_id: str = "") -> NotFound:
    metadata = {"product_id": product_id} if product_id else {}
    return NotFound("The product does not exist.", reason="PRODUCT_NOT_FOUND", metadata=metadata)


# --- reading ------------------------------------------------------------------------------------


def get_level(product_id: str) -> StockLevel:
    """Returns the product's stock level; raises NotFound if no product has the id."""
    v = Validator()
    v.check_id("product_id", product_id, "product")
    v.raise_if_any()
    level = StockLevel.get_or_none(StockLevel.product == product_id)
    if level is None:
        raise _product_not_found()
    return level


def batch_get_levels(product_ids: Sequence[str]) -> tuple[list[StockLevel], list[str]]:
    """Returns the levels of the products found, in the order asked, and the ids not found."""
    v = Validator()
    if not product_ids:
        v.add("product_ids", "must list at least one product id")
    elif len(product_ids) > MAX_BATCH_IDS:
        v.add("product_ids", f"must list at most {MAX_BATCH_IDS} product ids")
    else:
        for index, product_id in enumerate(product_ids):
            v.check_id(f"product_ids[{index}]", product_id, "product")
    v.raise_if_any()
    found = {
        level.product_id: level
        for level in StockLevel.select().where(StockLevel.product.in_(list(set(product_ids))))
    }
    levels = [found[pid] for pid in product_ids if pid in found]
    missing = list(dict.fromkeys(pid for pid in product_ids if pid not in found))
    return levels, missing


def get_stock(viewer: Principal | None, product_id: str) -> StockView:
    """Returns the product's stock as `viewer` may see it (see GetStockLevel)."""
    return view(get_level(product_id), all_terms=sees_all_terms(viewer))


def batch_get_stock(
    viewer: Principal | None, product_ids: Sequence[str]
) -> tuple[list[StockView], list[str]]:
    """Returns the stock of the products found, as `viewer` may see it, and the ids not found."""
    levels, missing = batch_get_levels(product_ids)
    all_terms = sees_all_terms(viewer)
    return [view(level, all_terms=all_terms) for level in levels], missing


MOVEMENT_LIST = listing.ListSpec(
    name="stock_movements",
    model=StockMovement,
    filter_fields={},
    order_fields={"id": StockMovement.id},
    default_order="id desc",
)


def list_movements(page: listing.PageRequest, *, product_id: str) -> listing.Page[StockMovement]:
    """Returns one page of the product's ledger, newest first; raises NotFound."""
    v = Validator()
    v.check_id("product_id", product_id, "product")
    v.raise_if_any()
    # Bound to the product: a token from one product's ledger is refused for another's.
    request = listing.parse_list_request(MOVEMENT_LIST, page, scope=product_id)
    if not Product.select().where(Product.id == product_id).exists():
        raise _product_not_found()
    return listing.fetch_page(
        StockMovement.select().where(StockMovement.product == product_id), request
    )


# --- manual adjustment --------------------------------------------------------------------------


def check_adjustment(v: Validator, *, product_id: str, delta: int, reason: str) -> str:
    """Records the violations of an adjustment's fields in `v`; returns the trimmed reason."""
    _check_change(v, "", product_id, delta)
    return v.text("reason", reason, REASON_MAX_LENGTH)


def _check_change(v: Validator, prefix: str, product_id: str, delta: int) -> None:
    v.check_id(f"{prefix}product_id", product_id, "product")
    if delta == 0:
        v.add(f"{prefix}delta", "must not be zero")
    elif abs(delta) > MAX_DELTA:
        v.add(f"{prefix}delta", f"must be between -{MAX_DELTA:,} and {MAX_DELTA:,}")


def adjust(
    *, product_id: str, delta: int, reason: str, actor: str
) -> tuple[StockLevel, StockMovement]:
    """Adds `delta` to on-hand stock and records it; INSUFFICIENT_STOCK below reserved."""
    v = Validator()
    reason = check_adjustment(v, product_id=product_id, delta=delta, reason=reason)
    v.raise_if_any()
    _check_actor(actor)
    now = utcnow()
    with database.atomic():
        # One guarded statement: concurrent adjustments can never take stock below reserved,
        # and no read-modify-write window exists on either engine.
        changed = _changed_level(
            StockLevel.update(on_hand=StockLevel.on_hand + delta, update_time=now).where(
                (StockLevel.product == product_id)
                & (StockLevel.on_hand - StockLevel.reserved + delta >= 0)
            )
        )
        if changed is None:
            level = StockLevel.get_or_none(StockLevel.product == product_id)
            if level is None:
                raise _product_not_found(product_id)
            raise FailedPrecondition(
                f"Only {available(level)} units are available; cannot remove {-delta}.",
                reason="INSUFFICIENT_STOCK",
                metadata={"product_id": product_id, "available": str(available(level))},
            )
        return changed, _record(
            changed,
            MovementKind.ADJUSTMENT,
            on_hand_delta=delta,
            reserved_delta=0,
            reason=reason,
            actor=actor,
            reference=None,
            now=now,
        )


@dataclass(frozen=True)
class AdjustStock:
    """An AdjustStock request."""

    request: RequestKey
    product_id: str
    delta: int
    reason: str


@dataclass(frozen=True)
class Adjustment:
    """An adjustment made: the level right after it, and its ledger entry."""

    level: StockView
    movement: StockMovement


def adjust_stock(actor: Principal, command: AdjustStock) -> Adjustment:
    """Adjusts on-hand stock once per request_id (see InventoryService.AdjustStock).

    The ledger entry's id is what is stored under the request_id: a retry is answered from the
    entry, which holds the levels right after the change, exactly as the first call answered.
    """

    def validate(v: Validator) -> None:
        check_adjustment(
            v, product_id=command.product_id, delta=command.delta, reason=command.reason
        )

    movement_id = idempotency.run_once_for_id(
        principal=actor.subject,
        operation=ADJUST_STOCK_OPERATION,
        request=command.request,
        validate=validate,
        execute=lambda: str(
            adjust(
                product_id=command.product_id,
                delta=command.delta,
                reason=command.reason,
                actor=actor.subject,
            )[1].id
        ),
    )
    movement = StockMovement.get_by_id(int(movement_id))
    return Adjustment(level=level_after(movement), movement=movement)


@dataclass(frozen=True)
class BatchAdjustStock:
    """A BatchAdjustStock request: (product id, delta) pairs in the caller's order."""

    request: RequestKey
    changes: tuple[tuple[str, int], ...]
    reason: str


def check_batch(v: Validator, command: BatchAdjustStock) -> str:
    """Records the violations of a batch's fields in `v`; returns the trimmed reason."""
    if not command.changes:
        v.add("adjustments", "must list at least one adjustment")
    elif len(command.changes) > MAX_BATCH_ADJUSTMENTS:
        v.add("adjustments", f"must list at most {MAX_BATCH_ADJUSTMENTS} adjustments")
    else:
        seen: set[str] = set()
        for index, (product_id, delta) in enumerate(command.changes):
            _check_change(v, f"adjustments[{index}].", product_id, delta)
            if product_id in seen:
                v.add(f"adjustments[{index}].product_id", "lists a product already in the batch")
            seen.add(product_id)
    return v.text("reason", command.reason, REASON_MAX_LENGTH)


def batch_adjust_stock(actor: Principal, command: BatchAdjustStock) -> list[Adjustment]:
    """Applies every adjustment or none, once per request_id (see BatchAdjustStock).

    What is stored under the request_id is the ledger entries' ids, in the caller's order; a
    retry is answered from those entries, as for AdjustStock.
    """

    def execute() -> str:
        movement_ids: dict[str, int] = {}
        with database.atomic():
            # In product-id order, as reservations are made: two batches over the same products
            # lock their rows in the same order, so they cannot deadlock.
            for product_id, delta in sorted(command.changes):
                _, movement = adjust(
                    product_id=product_id, delta=delta, reason=command.reason, actor=actor.subject
                )
                movement_ids[product_id] = int(movement.id)
        return ",".join(str(movement_ids[product_id]) for product_id, _ in command.changes)

    def validate(v: Validator) -> None:
        check_batch(v, command)

    stored = idempotency.run_once_for_id(
        principal=actor.subject,
        operation=BATCH_ADJUST_STOCK_OPERATION,
        request=command.request,
        validate=validate,
        execute=execute,
    )
    ids = [int(movement_id) for movement_id in stored.split(",")]
    movements = {m.id: m for m in StockMovement.select().where(StockMovement.id.in_(ids))}
    return [Adjustment(level=level_after(movements[i]), movement=movements[i]) for i in ids]


def level_after(movement: StockMovement) -> StockView:
    """Returns the product's level right after `movement`, with every term."""
    on_hand, reserved = int(movement.on_hand_after), int(movement.reserved_after)
    return StockView(
        product_id=movement.product_id,
        available=on_hand - reserved,
        on_hand=on_hand,
        reserved=reserved,
        update_time=movement.create_time,
    )


def _check_actor(actor: str) -> None:
    if not actor or len(actor) > ACTOR_MAX_LENGTH:
        raise ValueError(f"actor must be 1 to {ACTOR_MAX_LENGTH} characters")


def _changed_level(update: peewee.ModelUpdate) -> StockLevel | None:
    """Runs an UPDATE of one stock level; returns the row as the update left it (RETURNING: no
    second read), or None if no row met its conditions."""
    rows = list(update.returning(*StockLevel._meta.sorted_fields).execute())
    return rows[0] if len(rows) == 1 else None


def _record(
    level: StockLevel,
    kind: MovementKind,
    *,
    on_hand_delta: int,
    reserved_delta: int,
    reason: str,
    actor: str,
    reference: str | None,
    now: dt.datetime,
) -> StockMovement:
    """Writes the ledger entry for a change that left `level` as it is; call in the change's
    transaction (the row stays locked until commit, so `level` is what the change produced)."""
    return StockMovement.create(
        product=level.product_id,
        kind=kind.value,
        on_hand_delta=on_hand_delta,
        reserved_delta=reserved_delta,
        on_hand_after=level.on_hand,
        reserved_after=level.reserved,
        reason=reason,
        actor=actor,
        reference=reference,
        create_time=now,
    )


# --- checkout: reserve, release, sell, restock --------------------------------------------------


@dataclass(frozen=True)
class _LineChange:
    """How one kind of line operation changes a level, what guards it and how it fails."""

    kind: MovementKind
    on_hand_sign: int
    reserved_sign: int
    guard: Callable[[str, int], Any] | None  # a condition the row must meet, beyond existing
    failure: Callable[[list[str]], DomainError]
    default_reason: str


def _active_with_available(product_id: str, quantity: int) -> Any:
    active = Product.select(Product.id).where(
        (Product.id == product_id) & (Product.state == "ACTIVE")
    )
    return (StockLevel.on_hand - StockLevel.reserved >= quantity) & StockLevel.product.in_(active)


def _holds_reserved(product_id: str, quantity: int) -> Any:
    return StockLevel.reserved >= quantity


def _ids(product_ids: list[str]) -> dict[str, str]:
    return {"product_ids": ",".join(product_ids)}


_RESERVE = _LineChange(
    MovementKind.RESERVATION,
    on_hand_sign=0,
    reserved_sign=+1,
    guard=_active_with_available,
    failure=lambda ids: FailedPrecondition(
        "Not enough stock for some products: " + ", ".join(ids) + ".",
        reason="OUT_OF_STOCK",
        metadata=_ids(ids),
    ),
    default_reason="reserved for checkout",
)
_RELEASE = _LineChange(
    MovementKind.RELEASE,
    on_hand_sign=0,
    reserved_sign=-1,
    guard=_holds_reserved,
    failure=lambda ids: FailedPrecondition(
        "Fewer units are reserved than released for: " + ", ".join(ids) + ".",
        reason="RESERVATION_NOT_HELD",
        metadata=_ids(ids),
    ),
    default_reason="reservation released",
)
_SALE = _LineChange(
    MovementKind.SALE,
    on_hand_sign=-1,
    reserved_sign=-1,
    guard=_holds_reserved,
    failure=lambda ids: FailedPrecondition(
        "Fewer units are reserved than sold for: " + ", ".join(ids) + ".",
        reason="RESERVATION_NOT_HELD",
        metadata=_ids(ids),
    ),
    default_reason="sold",
)
_RESTOCK = _LineChange(
    MovementKind.RESTOCK,
    on_hand_sign=+1,
    reserved_sign=0,
    guard=None,
    failure=lambda ids: NotFound(
        "Some products do not exist: " + ", ".join(ids) + ".",
        reason="PRODUCT_NOT_FOUND",
        metadata=_ids(ids),
    ),
    default_reason="returned to stock",
)


def reserve(
    lines: Sequence[StockLine], *, reference: str, actor: str, reason: str = ""
) -> list[StockMovement]:
    """Reserves every line or none; OUT_OF_STOCK names the products short, archived or missing."""
    return _apply(_RESERVE, lines, reference=reference, actor=actor, reason=reason)


def release(
    lines: Sequence[StockLine], *, reference: str, actor: str, reason: str = ""
) -> list[StockMovement]:
    """Gives reserved units back; RESERVATION_NOT_HELD if fewer are reserved."""
    return _apply(_RELEASE, lines, reference=reference, actor=actor, reason=reason)


def commit_sale(
    lines: Sequence[StockLine], *, reference: str, actor: str, reason: str = ""
) -> list[StockMovement]:
    """Turns reserved units into sold ones; RESERVATION_NOT_HELD if fewer are reserved."""
    return _apply(_SALE, lines, reference=reference, actor=actor, reason=reason)


def restock(
    lines: Sequence[StockLine], *, reference: str, actor: str, reason: str = ""
) -> list[StockMovement]:
    """Puts sold units back on hand (cancellation, refund); NotFound for unknown products."""
    return _apply(_RESTOCK, lines, reference=reference, actor=actor, reason=reason)


def _merged_lines(
    lines: Sequence[StockLine], reference: str, reason: str
) -> tuple[list[StockLine], str, str]:
    """Validates lines, reference and reason; returns the lines merged per product, in id order."""
    v = Validator()
    if not lines:
        v.add("lines", "must have at least one line")
    elif len(lines) > MAX_LINES:
        v.add("lines", f"must have at most {MAX_LINES} lines")
    totals: dict[str, int] = {}
    for index, (product_id, quantity) in enumerate(lines[:MAX_LINES]):
        v.check_id(f"lines[{index}].product_id", product_id, "product")
        if not 1 <= quantity <= MAX_DELTA:
            v.add(f"lines[{index}].quantity", f"must be between 1 and {MAX_DELTA:,}")
        totals[product_id] = totals.get(product_id, 0) + quantity
    reference = v.text("reference", reference, REFERENCE_MAX_LENGTH)
    if reason:
        reason = v.text("reason", reason, REASON_MAX_LENGTH)
    v.raise_if_any()
    # One order for every transaction: two checkouts locking rows in opposite orders would
    # deadlock on PostgreSQL.
    return sorted(totals.items()), reference, reason


def _apply(
    change: _LineChange, lines: Sequence[StockLine], *, reference: str, actor: str, reason: str
) -> list[StockMovement]:
    """Applies `change` to every line in one transaction, or to none."""
    merged, reference, reason = _merged_lines(lines, reference, reason)
    _check_actor(actor)
    reason = reason or f"{change.default_reason} ({reference})"[:REASON_MAX_LENGTH]
    now = utcnow()
    with database.atomic():
        failed: list[str] = []
        movements: list[StockMovement] = []
        for product_id, quantity in merged:
            on_hand_delta = change.on_hand_sign * quantity
            reserved_delta = change.reserved_sign * quantity
            changed = _changed_level(
                StockLevel.update(
                    on_hand=StockLevel.on_hand + on_hand_delta,
                    reserved=StockLevel.reserved + reserved_delta,
                    update_time=now,
                ).where(
                    (StockLevel.product == product_id)
                    if change.guard is None
                    else (StockLevel.product == product_id) & change.guard(product_id, quantity)
                )
            )
            if changed is None:
                # Carry on, so the error names every failing line; the rollback undoes the rest.
                failed.append(product_id)
                continue
            movement = _record(
                changed,
                change.kind,
                on_hand_delta=on_hand_delta,
                reserved_delta=reserved_delta,
                reason=reason,
                actor=actor,
                reference=reference,
                now=now,
            )
            movements.append(movement)
        if failed:
            raise change.failure(failed)
        return movements
