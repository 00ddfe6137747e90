"""Customers' carts: lines of products with quantities, shown with current prices and stock.

Every function takes the owner (the caller's user id) and puts it in every WHERE clause, so a
line of another customer's cart is indistinguishable from one that does not exist.

Limits: at most MAX_LINES lines, one per product, each of 1 to MAX_QUANTITY units. Adding units
that would take a line past MAX_QUANTITY is FAILED_PRECONDITION (LINE_QUANTITY_EXCEEDED): the
request is valid on its own, the cart's state refuses it. Writes to one cart are serialised (an
advisory lock on PostgreSQL, the IMMEDIATE write lock on SQLite), so concurrent adds of one
product make one line and never a 101st; the unique (owner, product) index backs this up.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import peewee

from server.db import database, lock_transaction_on, utcnow
from server.domain import idempotency, inventory
from server.domain.commands import RequestKey
from server.errors import FailedPrecondition, NotFound
from server.models.cart import Cart, CartLine
from server.models.product import Product
from server.models.stock import StockLevel
from server.validation import Validator

MAX_LINES = 100
MAX_QUANTITY = 99
ACTIVE = "ACTIVE"


@dataclass(frozen=True)
class LineView:
    """One line with its product's current details."""

    id: str
    product_id: str
    sku: str
    name: str
    currency_code: str
    unit_price_minor: int
    quantity: int
    available: int
    product_state: str
    create_time: dt.datetime
    update_time: dt.datetime

    @property
    def line_total_minor(self) -> int:
        """unit price times quantity, in minor units."""
        return self.unit_price_minor * self.quantity

    @property
    def in_stock(self) -> bool:
        """Whether the product is for sale and enough units are available for this line."""
        return self.product_state == ACTIVE and self.available >= self.quantity


@dataclass(frozen=True)
class CartView:
    """A cart as it is now."""

    lines: list[LineView]
    update_time: dt.datetime | None

    @property
    def subtotals(self) -> list[tuple[str, int]]:
        """(currency code, sum of line totals in minor units), ordered by currency code."""
        sums: dict[str, int] = {}
        for line in self.lines:
            sums[line.currency_code] = sums.get(line.currency_code, 0) + line.line_total_minor
        return sorted(sums.items())

    @property
    def total_quantity(self) -> int:
        """The sum of the lines' quantities."""
        return sum(line.quantity for line in self.lines)


def _check_line_id(v: Validator, line_id: str) -> None:
    v.check_id("line_id", line_id, "cart line")


def _line_not_found() -> NotFound:
    # One message for missing and foreign lines alike.
    return NotFound("The cart line does not exist.", reason="CART_LINE_NOT_FOUND")


def _archived(product_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "The product is not for sale.",
        reason="PRODUCT_ARCHIVED",
        metadata={"product_id": product_id},
    )


def _check_owner(owner: str) -> None:
    if not owner or len(owner) > 64:
        raise ValueError("owner must be 1 to 64 characters")


def _available(level: StockLevel | None) -> int:
    # A product always has a stock row; an outer join guards against one created without.
    if level is None or level.on_hand is None:
        return 0
    return inventory.available(level)


# --- reading ------------------------------------------------------------------------------------


def get(owner: str) -> CartView:
    """Returns the owner's cart (empty if they never added anything)."""
    _check_owner(owner)
    cart = Cart.get_or_none(Cart.owner == owner)
    rows = (
        CartLine.select(CartLine, Product, StockLevel)
        .join(Product)
        .join(
            StockLevel,
            peewee.JOIN.LEFT_OUTER,
            on=(StockLevel.product == Product.id),
            attr="stock_level",
        )
        .where(CartLine.cart == owner)
        .order_by(CartLine.create_time, CartLine.id)
    )
    lines = []
    for row in rows:
        product: Product = row.product
        level: StockLevel | None = getattr(product, "stock_level", None)
        lines.append(
            LineView(
                id=row.id,
                product_id=product.id,
                sku=product.sku,
                name=product.name,
                currency_code=product.price_currency,
                unit_price_minor=int(product.price_minor),
                quantity=int(row.quantity),
                available=_available(level),
                product_state=product.state,
                create_time=row.create_time,
                update_time=row.update_time,
            )
        )
    return CartView(lines=lines, update_time=cart.update_time if cart is not None else None)


# --- writing ------------------------------------------------------------------------------------


def _lock_cart(owner: str, now: dt.datetime) -> None:
    """Serialises writes to the owner's cart and makes sure its row exists; call in a
    transaction."""
    lock_transaction_on(f"cart:{owner}")
    Cart.insert(owner=owner, create_time=now, update_time=now).on_conflict_ignore().execute()


def _touch(owner: str, now: dt.datetime) -> None:
    Cart.update(update_time=now).where(Cart.owner == owner).execute()


ADD_ITEM_OPERATION = "/storefront.v1.CartService/AddCartItem"


@dataclass(frozen=True)
class AddItem:
    """An AddCartItem request; `request` is None when the caller sent no request_id."""

    request: RequestKey | None
    product_id: str
    quantity: int


def add_item(owner: str, command: AddItem) -> tuple[CartView, str]:
    """Adds units to the owner's cart, once per request_id when one is given (see
    CartService.AddCartItem); returns the cart as it is now and the line's id."""
    if command.request is None:
        return add(owner, product_id=command.product_id, quantity=command.quantity)
    # Only the line id is stored: a retry shows the cart as it is now, like every response.
    line_id = idempotency.run_once_for_id(
        principal=owner,
        operation=ADD_ITEM_OPERATION,
        request=command.request,
        validate=lambda v: check_add(v, product_id=command.product_id, quantity=command.quantity),
        execute=lambda: add(owner, product_id=command.product_id, quantity=command.quantity)[1],
    )
    return get(owner), line_id


def check_add(v: Validator, *, product_id: str, quantity: int) -> None:
    """Records the violations of an AddCartItem request's fields in `v`."""
    v.check_id("product_id", product_id, "product")
    if not 1 <= quantity <= MAX_QUANTITY:
        v.add("quantity", f"must be between 1 and {MAX_QUANTITY}")


def add(owner: str, *, product_id: str, quantity: int) -> tuple[CartView, str]:
    """Adds `quantity` units of an ACTIVE product; returns the cart and the line's id."""
    _check_owner(owner)
    v = Validator()
    check_add(v, product_id=product_id, quantity=quantity)
    v.raise_if_any()
    now = utcnow()
    with database.atomic():
        _lock_cart(owner, now)
        product = Product.get_or_none(Product.id == product_id)
        if product is None:
            raise NotFound("The product does not exist.", reason="PRODUCT_NOT_FOUND")
        if product.state != ACTIVE:
            raise _archived(product_id)
        line = CartLine.get_or_none((CartLine.cart == owner) & (CartLine.product == product_id))
        if line is not None:
            changed = (
                CartLine.update(quantity=CartLine.quantity + quantity, update_time=now)
                .where(
                    (CartLine.id == line.id)
                    & (CartLine.cart == owner)
                    & (CartLine.quantity + quantity <= MAX_QUANTITY)
                )
                .execute()
            )
            if changed != 1:
                raise FailedPrecondition(
                    f"A cart line holds at most {MAX_QUANTITY} units; this one holds "
                    f"{line.quantity}.",
                    reason="LINE_QUANTITY_EXCEEDED",
                    metadata={"line_id": line.id, "quantity": str(line.quantity)},
                )
            line_id = str(line.id)
        else:
            if CartLine.select().where(CartLine.cart == owner).count() >= MAX_LINES:
                raise FailedPrecondition(
                    f"A cart holds at most {MAX_LINES} lines.", reason="CART_FULL"
                )
            line_id = str(uuid.uuid4())
            CartLine.insert(
                id=line_id,
                cart=owner,
                product=product_id,
                quantity=quantity,
                create_time=now,
                update_time=now,
            ).execute()
        _touch(owner, now)
        return get(owner), line_id


def check_update(v: Validator, *, line_id: str, quantity: int) -> None:
    """Records the violations of an UpdateCartItem request's fields in `v`."""
    _check_line_id(v, line_id)
    if not 0 <= quantity <= MAX_QUANTITY:
        v.add("quantity", f"must be between 0 and {MAX_QUANTITY}")


def update(owner: str, *, line_id: str, quantity: int) -> CartView:
    """Sets a line's quantity (0 removes it); raising it needs an ACTIVE product."""
    _check_owner(owner)
    v = Validator()
    check_update(v, line_id=line_id, quantity=quantity)
    v.raise_if_any()
    now = utcnow()
    with database.atomic():
        _lock_cart(owner, now)
        line = CartLine.get_or_none((CartLine.id == line_id) & (CartLine.cart == owner))
        if line is None:
            raise _line_not_found()
        if quantity == 0:
            CartLine.delete().where((CartLine.id == line_id) & (CartLine.cart == owner)).execute()
        else:
            if quantity > line.quantity:
                state = Product.select(Product.state).where(Product.id == line.product_id).scalar()
                if state != ACTIVE:
                    raise _archived(line.product_id)
            CartLine.update(quantity=quantity, update_time=now).where(
                (CartLine.id == line_id) & (CartLine.cart == owner)
            ).execute()
        _touch(owner, now)
        return get(owner)


def remove(owner: str, *, line_id: str) -> CartView:
    """Removes a line; NotFound if the owner's cart has none with the id."""
    _check_owner(owner)
    v = Validator()
    _check_line_id(v, line_id)
    v.raise_if_any()
    now = utcnow()
    with database.atomic():
        _lock_cart(owner, now)
        deleted = (
            CartLine.delete().where((CartLine.id == line_id) & (CartLine.cart == owner)).execute()
        )
        if deleted != 1:
            raise _line_not_found()
        _touch(owner, now)
        return get(owner)


def empty(owner: str) -> CartView:
    """Removes every line of the owner's cart."""
    _check_owner(owner)
    now = utcnow()
    with database.atomic():
        _lock_cart(owner, now)
        CartLine.delete().where(CartLine.cart == owner).execute()
        _touch(owner, now)
        return get(owner)
