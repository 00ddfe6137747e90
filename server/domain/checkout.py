"""Checkout: the caller's cart becomes an order, priced, reserved, charged, in that order.

The flow, and why each step commits on its own:

1. Claim the request_id (idempotency.begin): a concurrent duplicate gets ABORTED.
2. One transaction prices the cart, reserves every line (all or nothing) and records the order
   PENDING_PAYMENT. It commits before the provider is called: no transaction is held open across
   a network call.
3. Charge the provider with the key `order:<order id>`, outside any transaction.
4. One transaction records the outcome (PAID: units sold and out of the cart; declined:
   PAYMENT_FAILED, reservations released); then the order id is stored under the request_id
   (not for a failure: the order itself gives a retry the same answer).

A crash between steps leaves a PENDING_PAYMENT order. Orders are unique per (customer,
request_id), so a retry finds it and charges again with the same provider key, which never
charges twice; without a retry the reconciler (payment_jobs) asks the provider and settles it.
The same cart cannot be checked out again while an order for it awaits its payment
(CHECKOUT_PENDING), so a double submit with a new request_id cannot charge it twice.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from server.db import database, lock_transaction_on, utcnow
from server.domain import (
    countries,
    exchange_rates,
    idempotency,
    inventory,
    order_payments,
    orders,
    pricing,
    promotions,
    shipping,
    taxes,
)
from server.domain.money import Money
from server.domain.orders import Address, State
from server.domain.principal import Principal
from server.errors import DomainError, FailedPrecondition
from server.models.cart import CartLine
from server.models.order import Order, OrderLine
from server.payments import (
    PaymentDeclined,
    PaymentGateway,
    PaymentOutcomeUnknown,
)
from server.payments.gateway import looks_like_card_number, payment_declined
from server.validation import Validator

OPERATION = "/storefront.v1.CheckoutService/PlaceOrder"
TOKEN_MAX_LENGTH = 200
NAME_MAX_LENGTH = 200
LINE_MAX_LENGTH = 200
CITY_MAX_LENGTH = 100
REGION_MAX_LENGTH = 100
POSTAL_CODE_MAX_LENGTH = 20
DISCOUNT_CODE_MAX_LENGTH = 32


@dataclass(frozen=True)
class PlaceOrder:
    """A PlaceOrder request."""

    request_id: str
    address: Address
    currency_code: str
    payment_method_token: str
    # The total the customer agreed to (from PreviewCheckout): any other total is refused
    # (TOTAL_CHANGED) before anything is reserved or charged.
    expected_total: Money | None = None
    # A promotion's code; "" for none.
    discount_code: str = ""


@dataclass(frozen=True)
class PreviewCheckout:
    """A PreviewCheckout request: PlaceOrder's pricing inputs."""

    address: Address
    currency_code: str
    discount_code: str = ""


@dataclass(frozen=True)
class Checkout:
    """What checkout needs besides the database: pricing rules and the payment gateway."""

    gateway: PaymentGateway
    shipping_rules: shipping.Rules
    tax_rates: taxes.TaxRates
    # Called with each checkout failure's reason; metrics hook in here. (Placed orders are
    # counted from their outbox events.)
    on_failure: Callable[[str], None] = lambda reason: None


# --- validation ---------------------------------------------------------------------------------


def _normalized_address(a: Address) -> Address:
    """The address with surrounding spaces removed and the country code upper-cased."""
    return Address(
        recipient_name=a.recipient_name.strip(),
        line1=a.line1.strip(),
        line2=a.line2.strip(),
        city=a.city.strip(),
        region=a.region.strip(),
        postal_code=a.postal_code.strip(),
        country_code=a.country_code.strip().upper(),
    )


def _normalized(request: PlaceOrder) -> PlaceOrder:
    """The request with surrounding spaces removed and codes upper-cased (not validated)."""
    return PlaceOrder(
        request_id=request.request_id.lower(),
        address=_normalized_address(request.address),
        currency_code=request.currency_code.strip().upper(),
        payment_method_token=request.payment_method_token,
        expected_total=None
        if request.expected_total is None
        else Money(
            request.expected_total.currency_code.strip().upper(),
            request.expected_total.amount_minor,
        ),
        discount_code=request.discount_code.strip(),
    )


def check(v: Validator, request: PlaceOrder) -> None:
    """Adds every violation of a (normalised) PlaceOrder request, request_id aside."""
    check_destination(v, request.address, request.currency_code)
    expected = request.expected_total
    if expected is not None:
        v.check(
            expected.currency_code == request.currency_code,
            "expected_total.currency_code",
            "must be currency_code",
        )
        v.check(expected.amount_minor >= 0, "expected_total.amount_minor", "must not be negative")
    _check_discount_code(v, request.discount_code)
    _check_token(v, request.payment_method_token)


def _check_discount_code(v: Validator, code: str) -> None:
    v.text("discount_code", code, DISCOUNT_CODE_MAX_LENGTH, required=False)


def check_destination(v: Validator, a: Address, currency_code: str) -> None:
    """Adds the violations of a (normalised) shipping address and currency."""
    prefix = "shipping_address."
    v.text(prefix + "recipient_name", a.recipient_name, NAME_MAX_LENGTH, required=True)
    v.text(prefix + "line1", a.line1, LINE_MAX_LENGTH, required=True)
    v.text(prefix + "line2", a.line2, LINE_MAX_LENGTH, required=False)
    v.text(prefix + "city", a.city, CITY_MAX_LENGTH, required=True)
    v.text(prefix + "region", a.region, REGION_MAX_LENGTH, required=False)
    v.text(prefix + "postal_code", a.postal_code, POSTAL_CODE_MAX_LENGTH, required=False)
    if not a.country_code:
        v.add(prefix + "country_code", "is required")
    elif not countries.is_known(a.country_code):
        v.add(prefix + "country_code", "must be an ISO 3166-1 alpha-2 country code such as DE")
    exchange_rates.check_code(v, "currency_code", currency_code)
    exchange_rates.supported_rates(v, {"currency_code": currency_code})


def _check_token(v: Validator, token: str) -> None:
    if not token:
        v.add("payment_method_token", "is required")
    elif looks_like_card_number(token):
        # Never echoed: it may be a real card number.
        v.add(
            "payment_method_token",
            "looks like a card number; send the payment provider's token instead",
        )
    elif (
        len(token) > TOKEN_MAX_LENGTH
        or not token.isascii()
        or not token.replace("_", "").replace("-", "").isalnum()
    ):
        v.add(
            "payment_method_token",
            f"must be 1 to {TOKEN_MAX_LENGTH} letters, digits, '_' or '-'",
        )


def _fingerprint(request: PlaceOrder) -> bytes:
    """What makes two PlaceOrder requests the same request (the token only as a hash)."""
    a = request.address
    parts = [
        a.recipient_name,
        a.line1,
        a.line2,
        a.city,
        a.region,
        a.postal_code,
        a.country_code,
        request.currency_code,
        hashlib.sha256(request.payment_method_token.encode()).hexdigest(),
    ]
    if request.expected_total is not None:
        # Only when given: requests stored before the field existed keep their fingerprint.
        expected = request.expected_total
        parts.append(f"expected_total={expected.currency_code}:{expected.amount_minor}")
    if request.discount_code:
        parts.append(f"discount_code={promotions.normalized_code(request.discount_code)}")
    return "\x00".join(parts).encode()


# --- the flow -----------------------------------------------------------------------------------


def preview(checkout: Checkout, customer: Principal, raw: PreviewCheckout) -> pricing.Priced:
    """Prices the customer's cart exactly as PlaceOrder would now; changes nothing."""
    request = PreviewCheckout(
        _normalized_address(raw.address),
        raw.currency_code.strip().upper(),
        raw.discount_code.strip(),
    )
    v = Validator()
    check_destination(v, request.address, request.currency_code)
    _check_discount_code(v, request.discount_code)
    v.raise_if_any()
    rows = pricing.cart_lines(customer.subject)
    offer = None
    if request.discount_code:
        offer = promotions.offer(
            request.discount_code,
            customer=customer.subject,
            currency=request.currency_code,
            now=utcnow(),
        )
    return pricing.price_cart(
        rows,
        currency=request.currency_code,
        country=request.address.country_code,
        shipping_rules=checkout.shipping_rules,
        tax_rates=checkout.tax_rates,
        offer=offer,
    )


def place_order(checkout: Checkout, customer: Principal, raw: PlaceOrder) -> orders.OrderDetails:
    """Places an order for the customer's cart (see CheckoutService.PlaceOrder)."""
    try:
        return _place_order(checkout, customer, _normalized(raw))
    except DomainError as exc:
        checkout.on_failure(exc.reason)
        raise


def _place_order(
    checkout: Checkout, customer: Principal, request: PlaceOrder
) -> orders.OrderDetails:
    owner = customer.subject
    fingerprint = _fingerprint(request)
    digest = idempotency.request_hash(OPERATION, fingerprint)
    claimed = idempotency.begin(
        principal=owner,
        key=request.request_id,
        operation=OPERATION,
        request_fingerprint=fingerprint,
        validate=lambda v: check(v, request),
    )
    if isinstance(claimed, bytes):
        order = Order.get((Order.id == claimed.decode()) & (Order.customer_id == owner))
        _check_cart_matches(order)
        if order.state == State.PAYMENT_FAILED:
            # Settled by the reconciler after a lost answer: answer as a failure at checkout.
            raise _failed_payment_error(order)
        return orders.details([order])[0]
    try:
        order = _pending_order(checkout, owner, request, digest)
        if order.state == State.PENDING_PAYMENT:
            order = _charge(checkout, order, request, actor=owner)
        if order.state == State.PAYMENT_FAILED:
            raise _failed_payment_error(order)
        with database.atomic():
            idempotency.complete(claimed, order.id.encode())
    except BaseException:
        idempotency.abandon(claimed)
        raise
    return orders.details([order])[0]


def _cart_units(owner: str) -> dict[str, int]:
    return {
        line.product_id: int(line.quantity)
        for line in CartLine.select().where(CartLine.cart == owner)
    }


def _ordered_units(order_id: str) -> dict[str, int]:
    return dict(orders.stock_lines(order_id))


def _check_cart_matches(order: Order) -> None:
    """A request_id names one cart's order: a retry with other lines in the cart is refused.

    An empty cart matches (the order emptied it); so does a cart still holding exactly the
    order's lines (the payment is pending, or failed).
    """
    in_cart = _cart_units(order.customer_id)
    if in_cart and in_cart != _ordered_units(order.id):
        raise idempotency.key_reused()


def _failed_payment_error(order: Order) -> FailedPrecondition:
    code = order.payment_failure_code
    if code in (orders.NOT_COMPLETED, orders.RESERVATION_EXPIRED):
        error = FailedPrecondition(
            "The payment for this order did not complete; place it again with a new request_id.",
            reason="PAYMENT_NOT_COMPLETED",
        )
    else:
        error = payment_declined(code)
    error.metadata["order_id"] = order.id
    return error


def _pending_order(checkout: Checkout, owner: str, request: PlaceOrder, digest: str) -> Order:
    """Returns the customer's order for this request_id: the existing one, or a new one priced
    from the cart with its stock reserved (PENDING_PAYMENT), committed."""
    with database.atomic():
        # Serialises with the customer's cart writes and other checkouts.
        lock_transaction_on(f"cart:{owner}")
        existing = Order.get_or_none(
            (Order.customer_id == owner) & (Order.request_id == request.request_id)
        )
        if existing is not None:
            if existing.request_hash != digest:
                raise idempotency.key_reused()
            _check_cart_matches(existing)
            # The order's lock (after the cart's: the order every path takes them in) makes a
            # reconciler that read the previous attempt wait, then see this one and leave it.
            lock_transaction_on(f"order:{existing.id}")
            existing = Order.get_by_id(existing.id)
            if existing.state == State.PENDING_PAYMENT:
                # A new attempt: the reconciler leaves the order alone while it may be running.
                existing.charge_attempt_time = utcnow()
                Order.update(charge_attempt_time=existing.charge_attempt_time).where(
                    Order.id == existing.id
                ).execute()
            return existing
        return _create_order(checkout, owner, request, digest)


def _create_order(checkout: Checkout, owner: str, request: PlaceOrder, digest: str) -> Order:
    rows = pricing.cart_lines(owner)
    # The cart stays as it is until a payment succeeds: checking the same cart out again (a
    # double submit with a new request_id) while its payment is pending could charge twice.
    in_cart = {row.product_id: int(row.quantity) for row in rows}
    waiting = Order.select(Order.id).where(
        (Order.customer_id == owner) & (Order.state == State.PENDING_PAYMENT.value)
    )
    for pending in waiting:
        if _ordered_units(pending.id) == in_cart:
            raise FailedPrecondition(
                "This cart's checkout is still waiting for its payment's outcome; retry it "
                "with its request_id, or check out again once it is settled (GetOrder).",
                reason="CHECKOUT_PENDING",
                metadata={"order_id": pending.id},
            )
    currency = request.currency_code
    country = request.address.country_code
    offer = None
    if request.discount_code:
        # Checkouts redeeming the code take turns from here to their commit: uses are counted
        # and taken in one step.
        promotions.lock(request.discount_code)
        offer = promotions.offer(
            request.discount_code, customer=owner, currency=currency, now=utcnow()
        )
    price = pricing.price_cart(
        rows,
        currency=currency,
        country=country,
        shipping_rules=checkout.shipping_rules,
        tax_rates=checkout.tax_rates,
        offer=offer,
    )
    expected = None if request.expected_total is None else request.expected_total.amount_minor
    if expected is not None and expected != price.total_minor:
        raise FailedPrecondition(
            f"The total is now {price.total_minor}, not {expected} as expected (minor units of "
            f"{currency}): nothing was charged; preview the checkout again.",
            reason="TOTAL_CHANGED",
            metadata={
                "expected_total_minor": str(expected),
                "total_minor": str(price.total_minor),
            },
        )
    priced, quote = price.lines, price.shipping
    subtotal, shipping_minor = price.subtotal_minor, price.shipping_minor
    tax, total = price.tax_minor, price.total_minor

    order_id = _new_id()
    _reserve(order_id, priced, owner)
    # After the reservation, which may have waited for other checkouts' row locks: the attempt
    # starts now, and the reconciler measures its age from here.
    now = utcnow()
    order = Order.create(
        id=order_id,
        customer_id=owner,
        request_id=request.request_id,
        request_hash=digest,
        state=State.PENDING_PAYMENT.value,
        currency=currency,
        subtotal_minor=subtotal,
        shipping_minor=shipping_minor,
        tax_minor=tax,
        total_minor=total,
        discount_minor=price.discount_minor,
        discount_code=price.discount_code,
        tax_rate=format(price.tax_rate.normalize(), "f"),
        shipping_quote_id=quote.quote_id,
        shipping_service_level=quote.service_level,
        ship_name=request.address.recipient_name,
        ship_line1=request.address.line1,
        ship_line2=request.address.line2,
        ship_city=request.address.city,
        ship_region=request.address.region,
        ship_postal_code=request.address.postal_code,
        ship_country=country,
        charge_attempt_time=now,
        create_time=now,
        update_time=now,
    )
    OrderLine.insert_many(
        [
            {
                "id": _new_id(),
                "order": order.id,
                "position": position,
                "product": line.product.id,
                "sku": line.product.sku,
                "name": line.product.name,
                "quantity": line.quantity,
                "unit_price_minor": line.unit_price_minor,
                "line_total_minor": line.total_minor,
                "discount_minor": line.discount_minor,
                "catalog_currency": line.product.price_currency,
                "catalog_unit_price_minor": int(line.product.price_minor),
            }
            for position, line in enumerate(priced)
        ]
    ).execute()
    if offer is not None:
        promotions.redeem(
            offer,
            customer=owner,
            order_id=order.id,
            discount=Money(currency, price.discount_minor),
            now=now,
        )
    orders.record_event(
        order,
        "ORDER_PLACED",
        from_state=State.PENDING_PAYMENT,
        to_state=State.PENDING_PAYMENT,
        actor=owner,
        now=now,
        note=f"{total} {currency}, stock reserved",
    )
    return order


def _reserve(order_id: str, priced: list[pricing.PricedLine], owner: str) -> None:
    """Reserves every line or raises OUT_OF_STOCK naming the cart lines that fall short."""
    try:
        inventory.reserve(
            [(line.product.id, line.quantity) for line in priced],
            reference=orders.stock_reference(order_id),
            actor=owner,
        )
    except FailedPrecondition as exc:
        if exc.reason != "OUT_OF_STOCK":
            raise
        short = set(exc.metadata.get("product_ids", "").split(","))
        lines = [line for line in priced if line.product.id in short]
        raise FailedPrecondition(
            "Not enough stock, or no longer for sale: "
            + ", ".join(f"{line.product.sku} (line {line.cart_line_id})" for line in lines)
            + ".",
            reason="OUT_OF_STOCK",
            metadata={
                "line_ids": ",".join(line.cart_line_id for line in lines),
                "product_ids": ",".join(line.product.id for line in lines),
            },
        ) from None


def _charge(checkout: Checkout, order: Order, request: PlaceOrder, *, actor: str) -> Order:
    """Charges the order's total and records the outcome; returns the order as it is now.

    PaymentProviderUnavailable (nothing charged) propagates and leaves the order
    PENDING_PAYMENT with its stock reserved: a retry with the same request_id charges it again,
    and without one the reconciler fails it once the attempt is old enough.
    """
    if order.total_minor == 0:
        settled = order_payments.payment_captured(order, None, actor=actor)
        return settled or Order.get_by_id(order.id)
    try:
        charge = checkout.gateway.charge(
            idempotency_key=orders.payment_key(order.id),
            amount_minor=int(order.total_minor),
            currency=order.currency,
            payment_method_token=request.payment_method_token,
            description=f"storefront order {order.id}",
        )
    except PaymentDeclined as declined:
        settled = order_payments.payment_failed(
            order, failure_code=declined.code, event_type="PAYMENT_DECLINED", actor=actor
        )
    except PaymentOutcomeUnknown:
        order_payments.payment_outcome_unknown(order, actor=actor)
        return order
    else:
        settled = order_payments.payment_captured(order, charge, actor=actor)
        if settled is not None:
            return settled
        # Another call settled the order first. If it failed it (its reservation expired while
        # this charge was on its way), the money goes back in full (sent by the outbox's refund
        # consumer as the refund commits).
        order_payments.charge_after_failure(order.id, charge)
    # None: another call settled it first (a retry that took over); answer with its outcome.
    return settled or Order.get_by_id(order.id)


def _new_id() -> str:
    return str(uuid.uuid4())
