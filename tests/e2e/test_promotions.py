"""PromotionService and discount codes at checkout, on a real server, both engines.

Managing codes (STAFF), applying them in PreviewCheckout and PlaceOrder (the discount shared among
the covered lines to the minor unit, shipping and tax on the discounted subtotal), every refusal
reason, and uses given back when a payment fails or an order is cancelled. The race for a code's
last uses is in test_checkout_concurrency.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from storefront.v1 import checkout_service_pb2 as checkout_pb
from storefront.v1 import common_pb2, order_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront.v1 import promotion_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from server.models.product import ProductCategory
from tests.e2e.conftest import Running, rpc_error, violated_fields
from tests.e2e.test_checkout_service import (
    BERLIN,
    Customer,
    add,
    half_even,
    money,
    order_request,
    place,
    product,
    sign_in,
    written,
)

StatusCode = grpc.StatusCode


def eur(minor: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code="EUR", amount_minor=minor)


def at(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def new_code() -> str:
    return f"SAVE-{uuid.uuid4().hex[:8].upper()}"


def create(staff: StorefrontClient, **fields: object) -> pb.Promotion:
    values: dict[str, object] = {"code": new_code(), "percent_basis_points": 1000}
    values.update(fields)
    return staff.promotions.CreatePromotion(
        pb.CreatePromotionRequest(promotion=pb.Promotion(**values))  # type: ignore[arg-type]
    ).promotion


def preview(customer: Customer, code: str) -> checkout_pb.PreviewCheckoutResponse:
    return customer.client.checkout.PreviewCheckout(
        checkout_pb.PreviewCheckoutRequest(
            shipping_address=BERLIN, currency_code="EUR", discount_code=code
        )
    )


def refusal(call: object) -> str:
    err = rpc_error(call)  # type: ignore[arg-type]
    reason, metadata = error_info(err)
    assert err.code() == StatusCode.FAILED_PRECONDITION, err
    assert metadata.get("field") == "discount_code"
    return reason


def use_count(staff: StorefrontClient, promotion_id: str) -> int:
    return staff.promotions.GetPromotion(
        pb.GetPromotionRequest(promotion_id=promotion_id)
    ).promotion.use_count


@pytest.fixture
def staff(running: Running) -> StorefrontClient:
    return running.login(Role.STAFF)


@pytest.fixture
def customer(running: Running) -> Customer:
    return sign_in(running)


# --- managing -------------------------------------------------------------------------------------


def test_staff_create_get_list_and_archive_promotions(
    running: Running, staff: StorefrontClient
) -> None:
    percent = create(staff, code="summer-10", description="Summer", max_uses=5)
    fixed = create(
        staff,
        percent_basis_points=0,
        amounts_off=[eur(500), common_pb2.Money(currency_code="USD", amount_minor=600)],
        minimum_subtotals=[eur(2000)],
        max_uses_per_customer=1,
    )
    assert percent.code == "SUMMER-10"  # stored upper-case
    assert (percent.percent_basis_points, percent.max_uses, percent.use_count) == (1000, 5, 0)
    assert [money(m) for m in fixed.amounts_off] == [("EUR", 500), ("USD", 600)]
    assert [money(m) for m in fixed.minimum_subtotals] == [("EUR", 2000)]

    got = staff.promotions.GetPromotion(pb.GetPromotionRequest(promotion_id=fixed.id)).promotion
    assert got == fixed
    listed = staff.promotions.ListPromotions(pb.ListPromotionsRequest(order_by="code")).promotions
    assert [p.code for p in listed] == sorted([percent.code, fixed.code])

    taken = rpc_error(lambda: create(staff, code="Summer-10"))
    assert (taken.code(), error_info(taken)[0]) == (
        StatusCode.ALREADY_EXISTS,
        "PROMOTION_CODE_TAKEN",
    )
    archived = staff.promotions.ArchivePromotion(
        pb.ArchivePromotionRequest(promotion_id=percent.id)
    ).promotion
    assert archived.HasField("archive_time")
    bad_order = rpc_error(
        lambda: staff.promotions.ListPromotions(pb.ListPromotionsRequest(order_by="discount"))
    )
    assert bad_order.code() == StatusCode.INVALID_ARGUMENT
    missing = rpc_error(
        lambda: staff.promotions.GetPromotion(
            pb.GetPromotionRequest(promotion_id=str(uuid.uuid4()))
        )
    )
    assert (missing.code(), error_info(missing)[0]) == (
        StatusCode.NOT_FOUND,
        "PROMOTION_NOT_FOUND",
    )


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"code": "x"}, {"promotion.code"}),
        ({"percent_basis_points": 0}, {"promotion"}),
        ({"amounts_off": [eur(100)]}, {"promotion"}),
        ({"percent_basis_points": 10_001}, {"promotion.percent_basis_points"}),
        (
            {"percent_basis_points": 0, "amounts_off": [eur(0)]},
            {"promotion.amounts_off[0].amount_minor"},
        ),
        (
            {"minimum_subtotals": [eur(1), eur(2)]},
            {"promotion.minimum_subtotals[1].currency_code"},
        ),
        ({"product_ids": ["not-an-id"]}, {"promotion.product_ids[0]"}),
        (
            {
                "start_time": at(dt.datetime(2030, 1, 2)),
                "end_time": at(dt.datetime(2030, 1, 1)),
            },
            {"promotion.end_time"},
        ),
        ({"max_uses": -1}, {"promotion.max_uses"}),
    ],
)
def test_invalid_promotions_are_refused_with_the_field_named(
    staff: StorefrontClient, fields: dict[str, object], violated: set[str]
) -> None:
    err = rpc_error(lambda: create(staff, **fields))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == violated


def test_customers_may_not_manage_promotions(running: Running) -> None:
    client = running.login(Role.CUSTOMER)
    err = rpc_error(lambda: create(client))
    assert err.code() == StatusCode.PERMISSION_DENIED


# --- applying -------------------------------------------------------------------------------------


def test_a_percentage_is_shared_among_the_covered_lines_and_the_order_carries_it(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    covered = [product(running, price_minor=price) for price in (1001, 2003)]
    other = product(running, price_minor=5000)
    with running.db.connection_context():
        ProductCategory.create(product=covered[1], slug="kitchen")
    for product_id, quantity in zip([*covered, other], (3, 1, 2), strict=True):
        add(customer, product_id, quantity)
    promotion = create(
        staff, percent_basis_points=1250, product_ids=[covered[0]], category_slugs=["kitchen"]
    )

    shown = preview(customer, promotion.code.lower())

    base = 3 * 1001 + 2003  # the covered lines
    discount = half_even(Decimal(base) * Decimal("0.125"))
    assert money(shown.discount) == ("EUR", discount)
    assert shown.discount_code == promotion.code
    shares = [line.discount.amount_minor for line in shown.lines]
    assert sum(shares) == discount and shares[2] == 0
    assert abs(shares[0] - discount * 3003 / base) < 1  # in proportion, to the minor unit
    subtotal = shown.subtotal.amount_minor
    assert subtotal == base + 2 * 5000
    tax = half_even(Decimal(shown.tax_rate) * (subtotal - discount + shown.shipping.amount_minor))
    assert money(shown.tax) == ("EUR", tax)
    assert shown.total.amount_minor == subtotal - discount + shown.shipping.amount_minor + tax
    assert use_count(staff, promotion.id) == 0  # a preview takes no use

    order = place(
        customer,
        order_request(discount_code=promotion.code, expected_total=shown.total),
    )

    assert (money(order.discount), order.discount_code) == (("EUR", discount), promotion.code)
    assert [line.discount.amount_minor for line in order.lines] == shares
    assert money(order.total) == money(shown.total)
    assert use_count(staff, promotion.id) == 1


def test_a_fixed_amount_never_exceeds_the_covered_lines(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    add(customer, product(running, price_minor=300), 1)
    promotion = create(staff, percent_basis_points=0, amounts_off=[eur(1000)])
    shown = preview(customer, promotion.code)
    assert money(shown.discount) == ("EUR", 300)
    assert shown.total.amount_minor == shown.shipping.amount_minor + shown.tax.amount_minor


def test_each_reason_a_code_does_not_apply(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    add(customer, product(running, price_minor=1000), 1)
    elsewhere = product(running)
    cases = {
        "PROMOTION_UNKNOWN": "NO-SUCH-CODE",
        "PROMOTION_NOT_STARTED": create(staff, start_time=at(now + dt.timedelta(days=1))).code,
        "PROMOTION_ENDED": create(staff, end_time=at(now - dt.timedelta(seconds=1))).code,
        "PROMOTION_CURRENCY": create(
            staff,
            percent_basis_points=0,
            amounts_off=[common_pb2.Money(currency_code="USD", amount_minor=100)],
        ).code,
        "PROMOTION_MINIMUM_NOT_MET": create(staff, minimum_subtotals=[eur(10_000)]).code,
        "PROMOTION_NOT_APPLICABLE": create(staff, product_ids=[elsewhere]).code,
    }
    archived = create(staff)
    staff.promotions.ArchivePromotion(pb.ArchivePromotionRequest(promotion_id=archived.id))
    before = written(running)
    for reason, code in cases.items():
        assert refusal(lambda code=code: preview(customer, code)) == reason
        assert (
            refusal(lambda code=code: place(customer, order_request(discount_code=code))) == reason
        )
    assert refusal(lambda: preview(customer, archived.code)) == "PROMOTION_ENDED"
    assert written(running) == before  # nothing reserved, charged or stored


def test_uses_are_limited_per_customer_and_in_all(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    product_id = product(running, on_hand=100)
    promotion = create(staff, max_uses=2, max_uses_per_customer=1)
    add(customer, product_id, 1)
    place(customer, order_request(discount_code=promotion.code))
    add(customer, product_id, 1)
    again = lambda: place(customer, order_request(discount_code=promotion.code))  # noqa: E731
    assert refusal(again) == "PROMOTION_CUSTOMER_LIMIT"

    second = sign_in(running)
    add(second, product_id, 1)
    place(second, order_request(discount_code=promotion.code))
    third = sign_in(running)
    add(third, product_id, 1)
    assert refusal(lambda: preview(third, promotion.code)) == "PROMOTION_EXHAUSTED"
    assert use_count(staff, promotion.id) == 2


def test_a_declined_payment_and_a_cancellation_give_the_use_back(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    product_id = product(running, on_hand=100)
    promotion = create(staff, max_uses=1)
    add(customer, product_id, 1)
    declined = rpc_error(
        lambda: place(
            customer,
            order_request(discount_code=promotion.code, payment_method_token="tok_declined"),
        )
    )
    assert error_info(declined)[0] == "PAYMENT_DECLINED"
    assert use_count(staff, promotion.id) == 0

    order = place(customer, order_request(discount_code=promotion.code))
    assert order.discount.amount_minor > 0
    assert use_count(staff, promotion.id) == 1
    staff.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=order.id, request_id=str(uuid.uuid4()))
    )
    assert use_count(staff, promotion.id) == 0

    other = sign_in(running)
    add(other, product_id, 1)
    reused = place(other, order_request(discount_code=promotion.code))
    assert (reused.state, reused.discount_code) == (order_pb2.ORDER_STATE_PAID, promotion.code)
    assert use_count(staff, promotion.id) == 1


# --- refunds by lines pro-rate the discount -------------------------------------------------------


def refund_lines(
    staff: StorefrontClient, order_id: str, *lines: tuple[str, int], **fields: object
) -> order_pb.RefundOrderResponse:
    return staff.orders.RefundOrder(
        order_pb.RefundOrderRequest(
            order_id=order_id,
            request_id=str(uuid.uuid4()),
            lines=[order_pb2.RefundLine(line_id=line_id, quantity=n) for line_id, n in lines],
            **fields,  # type: ignore[arg-type]
        )
    )


def test_a_refund_by_lines_gives_back_what_was_paid_for_those_units(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    covered, other = product(running, price_minor=1001), product(running, price_minor=2500)
    add(customer, covered, 5)
    add(customer, other, 1)
    promotion = create(staff, percent_basis_points=1000, product_ids=[covered])
    order = place(customer, order_request(discount_code=promotion.code))
    staff.orders.ShipOrder(
        order_pb.ShipOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), carrier="DHL", tracking_number="1"
        )
    )
    line = next(line for line in order.lines if line.product_id == covered)
    plain = next(line for line in order.lines if line.product_id == other)
    rate = Decimal(order.tax_rate)
    assert line.discount.amount_minor == 500 and rate == Decimal("0.19")

    def paid_for(quantity: int, of: order_pb2.OrderLine) -> Decimal:
        paid = of.line_total.amount_minor - of.discount.amount_minor
        return Decimal(paid * quantity) / of.quantity * (1 + rate)

    # 2 of 5 discounted units: (5005 - 500) * 2/5 = 1802, plus 19% tax (2144.38), rounded once.
    first = refund_lines(staff, order.id, (line.id, 2), reason="damaged")
    assert first.order.refunds[0].amount.amount_minor == half_even(paid_for(2, line)) == 2144
    assert [(u.line_id, u.quantity) for u in first.order.refunds[0].lines] == [(line.id, 2)]

    too_many = rpc_error(lambda: refund_lines(staff, order.id, (line.id, 4)))
    reason, metadata = error_info(too_many)
    assert (too_many.code(), reason) == (StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_LINE")
    assert metadata == {"line_id": line.id, "refundable_quantity": "3"}

    rest = refund_lines(staff, order.id, (line.id, 3), (plain.id, 1))
    second = rest.order.refunds[1].amount.amount_minor
    assert second == half_even(paid_for(3, line) + paid_for(1, plain))
    # Every unit refunded: the discounted goods and their tax, to the minor unit; the shipping
    # (and its tax) is what is left.
    goods_with_tax = order.subtotal.amount_minor - order.discount.amount_minor
    assert abs(2144 + second - goods_with_tax * (1 + rate)) <= 1
    assert rest.order.refunded.amount_minor == 2144 + second
    assert rest.order.state == order_pb2.ORDER_STATE_PARTIALLY_REFUNDED

    gone = rpc_error(lambda: refund_lines(staff, order.id, (plain.id, 1)))
    assert error_info(gone)[1]["refundable_quantity"] == "0"


def test_bad_refund_lines_are_invalid_argument(
    running: Running, staff: StorefrontClient, customer: Customer
) -> None:
    add(customer, product(running), 2)
    order = place(customer, order_request())
    line_id = order.lines[0].id
    for fields, lines, extra in [
        ({"lines"}, [(line_id, 1)], {"amount": eur(100)}),
        ({"lines[0].quantity"}, [(line_id, 0)], {}),
        ({"lines[0].line_id"}, [("not-an-id", 1)], {}),
        ({"lines[1].line_id"}, [(line_id, 1), (line_id, 1)], {}),
        ({"lines[0].line_id"}, [(str(uuid.uuid4()), 1)], {}),  # not this order's
    ]:
        err = rpc_error(
            lambda lines=lines, extra=extra: refund_lines(staff, order.id, *lines, **extra)
        )
        assert err.code() == StatusCode.INVALID_ARGUMENT, fields
        assert violated_fields(err) == fields
    assert not staff.orders.GetOrder(order_pb.GetOrderRequest(order_id=order.id)).order.refunds
