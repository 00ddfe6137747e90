"""ReportService and `storefront report` on a real server, both engines.

A crafted history (orders in two currencies over two days, one with a discount code, one
declined, one partly refunded, one cancelled) is reported, and every figure is compared with the
same sums made here, independently, from the orders as OrderService returns them: the reports
must tie out exactly. The CLI's CSV must say what the RPCs say.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from storefront.v1 import common_pb2, order_pb2
from storefront.v1 import order_service_pb2 as order_pb
from storefront.v1 import promotion_service_pb2 as promotion_pb
from storefront.v1 import report_service_pb2 as pb
from storefront_client import StorefrontClient

from server.db import utcnow
from server.domain.principal import Role
from server.models.order import Order
from tests.e2e.conftest import Running, rpc_error, violated_fields
from tests.e2e.test_backups import environment, storefront
from tests.e2e.test_checkout_service import add, order_request, place, product, sign_in, stock

StatusCode = grpc.StatusCode
Key = tuple[dt.date, str]


@dataclass(frozen=True)
class History:
    """What the crafted history made: its products by letter, its orders, its days."""

    products: dict[str, str]
    prices: dict[str, tuple[str, int]]
    orders: list[str]
    today: dt.date
    earlier: dt.date


@pytest.fixture
def staff(running: Running) -> StorefrontClient:
    return running.login(Role.STAFF)


@pytest.fixture
def history(running: Running, staff: StorefrontClient) -> History:
    """A: 1000 EUR, B: 2500 EUR, C: 700 USD, D: 300 EUR never sold. Orders: 2A+1B (paid two
    days ago, late in the evening), 5A with 10% off A, 3B then 500 refunded as "damaged", 1A
    declined, 1C in USD then cancelled (refunded in full)."""
    prices = {"A": ("EUR", 1000), "B": ("EUR", 2500), "C": ("USD", 700), "D": ("EUR", 300)}
    products = {
        letter: product(running, on_hand=50, currency=currency, price_minor=price)
        for letter, (currency, price) in prices.items()
    }
    code = staff.promotions.CreatePromotion(
        promotion_pb.CreatePromotionRequest(
            promotion=promotion_pb.Promotion(
                code=f"TEN-{uuid.uuid4().hex[:6]}",
                percent_basis_points=1000,
                product_ids=[products["A"]],
            )
        )
    ).promotion.code

    def buy(lines: dict[str, int], **fields: object) -> order_pb2.Order:
        customer = sign_in(running)
        for letter, quantity in lines.items():
            add(customer, products[letter], quantity)
        return place(customer, order_request(**fields))

    first = buy({"A": 2, "B": 1})
    discounted = buy({"A": 5}, discount_code=code)
    refunded = buy({"B": 3})
    declined_error = rpc_error(lambda: buy({"A": 1}, payment_method_token="tok_declined"))
    assert declined_error.code() == StatusCode.FAILED_PRECONDITION
    cancelled = buy({"C": 1}, currency_code="USD")
    assert discounted.discount.amount_minor == 500
    staff.orders.RefundOrder(
        order_pb.RefundOrderRequest(
            order_id=refunded.id,
            request_id=str(uuid.uuid4()),
            amount=common_pb2.Money(currency_code="EUR", amount_minor=500),
            reason="damaged",
        )
    )
    staff.orders.CancelOrder(
        order_pb.CancelOrderRequest(order_id=cancelled.id, request_id=str(uuid.uuid4()))
    )
    today = utcnow().date()
    earlier = today - dt.timedelta(days=2)
    # The first order was paid two days ago, a moment before midnight.
    with running.db.connection_context():
        Order.update(paid_time=dt.datetime.combine(earlier, dt.time(23, 59, 59, 900_000))).where(
            Order.id == first.id
        ).execute()
    order_ids = [o.id for o in (first, discounted, refunded, cancelled)]
    return History(products, prices, order_ids, today, earlier)


def all_orders(staff: StorefrontClient) -> list[order_pb2.Order]:
    found: list[order_pb2.Order] = []
    token = ""
    while True:
        page = staff.orders.ListOrders(order_pb.ListOrdersRequest(page_size=100, page_token=token))
        found.extend(page.orders)
        token = page.next_page_token
        if not token:
            return found


def day_of(stamp: Timestamp) -> dt.date:
    return stamp.ToDatetime().date()


FIGURES = ("orders", "units", "gross", "discounts", "shipping", "tax", "refunds")


def independent_sales(
    orders: list[order_pb2.Order], start: dt.date, end: dt.date
) -> dict[Key, Counter[str]]:
    """Sales per (day, currency) summed here from the orders: paid ones on their paid day,
    refunds the provider did not refuse on theirs."""
    sums: dict[Key, Counter[str]] = defaultdict(Counter)
    for order in orders:
        currency = order.total.currency_code
        if order.HasField("paid_time") and start <= day_of(order.paid_time) <= end:
            figures = sums[(day_of(order.paid_time), currency)]
            figures["orders"] += 1
            figures["units"] += sum(line.quantity for line in order.lines)
            figures["gross"] += order.subtotal.amount_minor
            figures["discounts"] += order.discount.amount_minor
            figures["shipping"] += order.shipping.amount_minor
            figures["tax"] += order.tax.amount_minor
        for refund in order.refunds:
            day = day_of(refund.create_time)
            if refund.status != order_pb2.REFUND_STATUS_FAILED and start <= day <= end:
                sums[(day, currency)]["refunds"] += refund.amount.amount_minor
    return sums


def reported(figures: pb.SalesFigures) -> Counter[str]:
    return Counter(
        {
            "orders": figures.orders,
            "units": figures.units,
            "gross": figures.gross_minor,
            "discounts": figures.discounts_minor,
            "shipping": figures.shipping_minor,
            "tax": figures.tax_minor,
            "refunds": figures.refunds_minor,
        }
    )


def sales(
    staff: StorefrontClient, start: dt.date, end: dt.date, currency: str = ""
) -> pb.GetSalesReportResponse:
    return staff.reports.GetSalesReport(
        pb.GetSalesReportRequest(
            start_date=start.isoformat(), end_date=end.isoformat(), currency_code=currency
        )
    )


# --- sales ----------------------------------------------------------------------------------------


def test_sales_by_day_tie_out_with_the_orders(staff: StorefrontClient, history: History) -> None:
    orders = all_orders(staff)
    # The declined order is there too, PAYMENT_FAILED: no sale.
    assert {o.id for o in orders} > set(history.orders) and len(orders) == 5
    assert [o.state for o in orders].count(order_pb2.ORDER_STATE_PAYMENT_FAILED) == 1
    report = sales(staff, history.earlier, history.today)

    days = {(dt.date.fromisoformat(d.date), d.figures.currency_code): d for d in report.days}
    assert {key: reported(d.figures) for key, d in days.items()} == independent_sales(
        orders, history.earlier, history.today
    )
    assert [key for key in days] == sorted(days)  # oldest first, then by currency
    # The crafted history, so that an empty or mis-bucketed report cannot pass.
    eur_earlier = days[(history.earlier, "EUR")].figures
    eur_today = days[(history.today, "EUR")].figures
    assert (eur_earlier.orders, eur_earlier.units) == (1, 3)
    assert (eur_today.orders, eur_today.units, eur_today.discounts_minor) == (2, 8, 500)
    assert eur_today.refunds_minor == 500
    usd_today = days[(history.today, "USD")].figures
    assert usd_today.orders == 1 and usd_today.refunds_minor > 0
    assert usd_today.net_minor == 0  # cancelled: everything paid was given back

    for figures in (d.figures for d in report.days):
        assert figures.net_minor == (
            figures.gross_minor
            - figures.discounts_minor
            + figures.shipping_minor
            + figures.tax_minor
            - figures.refunds_minor
        )
    # Totals are the days' sums per currency, and net is what was captured less refunded.
    totals = {t.currency_code: t for t in report.totals}
    assert list(totals) == ["EUR", "USD"]
    for currency, total in totals.items():
        summed: Counter[str] = Counter()
        for (_, code), d in days.items():
            if code == currency:
                summed.update(reported(d.figures))
        assert reported(total) == summed
        assert total.net_minor == sum(
            o.captured.amount_minor - o.refunded.amount_minor
            for o in orders
            if o.total.currency_code == currency
        )


def test_a_range_counts_only_its_days_and_a_currency_only_itself(
    staff: StorefrontClient, history: History
) -> None:
    orders = all_orders(staff)
    today_only = sales(staff, history.today, history.today)
    assert {
        (dt.date.fromisoformat(d.date), d.figures.currency_code): reported(d.figures)
        for d in today_only.days
    } == independent_sales(orders, history.today, history.today)
    assert all(d.date == history.today.isoformat() for d in today_only.days)

    usd = sales(staff, history.earlier, history.today, "USD")
    assert [t.currency_code for t in usd.totals] == ["USD"]
    assert {d.figures.currency_code for d in usd.days} == {"USD"}

    before = history.earlier - dt.timedelta(days=30)
    empty = sales(staff, before, before + dt.timedelta(days=1))
    assert (list(empty.days), list(empty.totals)) == ([], [])


@pytest.mark.parametrize(
    ("start", "end", "currency", "fields"),
    [
        ("", "2026-01-01", "", {"start_date"}),
        ("2026-1-1", "2026-01-01", "", {"start_date"}),
        ("2026-02-30", "2026-03-01", "", {"start_date"}),
        ("2026-03-01", "2026-02-28", "", {"end_date"}),
        ("2026-01-01", "2027-01-02", "", {"end_date"}),  # 367 days
        ("2026-01-01", "2026-01-31", "XXX", {"currency_code"}),
    ],
)
def test_bad_sales_requests_are_invalid_argument(
    staff: StorefrontClient, start: str, end: str, currency: str, fields: set[str]
) -> None:
    err = rpc_error(
        lambda: staff.reports.GetSalesReport(
            pb.GetSalesReportRequest(start_date=start, end_date=end, currency_code=currency)
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields


@pytest.mark.parametrize(
    ("start", "end"), [("2028-01-01", "2028-12-31"), ("9999-01-01", "9999-12-31")]
)
def test_a_range_of_366_days_or_up_to_the_last_date_is_accepted(
    staff: StorefrontClient, start: str, end: str
) -> None:
    report = staff.reports.GetSalesReport(pb.GetSalesReportRequest(start_date=start, end_date=end))
    assert list(report.days) == []
    refunds = staff.reports.GetRefundsReport(
        pb.GetRefundsReportRequest(start_date=start, end_date=end)
    )
    assert list(refunds.reasons) == []


# --- top products, stock, refunds -----------------------------------------------------------------


def test_top_products_rank_by_units_or_revenue(staff: StorefrontClient, history: History) -> None:
    orders = all_orders(staff)
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for order in orders:
        if order.HasField("paid_time") and order.total.currency_code == "EUR":
            for line in order.lines:
                expected[line.product_id]["units"] += line.quantity
                expected[line.product_id]["orders"] += 1
                expected[line.product_id]["revenue"] += (
                    line.line_total.amount_minor - line.discount.amount_minor
                )

    def top(order_by: str, limit: int = 0) -> list[pb.TopProduct]:
        return list(
            staff.reports.GetTopProductsReport(
                pb.GetTopProductsReportRequest(
                    start_date=history.earlier.isoformat(),
                    end_date=history.today.isoformat(),
                    currency_code="EUR",
                    order_by=order_by,
                    limit=limit,
                )
            ).products
        )

    by_units = top("")
    assert {
        p.product_id: Counter(units=p.units, orders=p.orders, revenue=p.revenue.amount_minor)
        for p in by_units
    } == expected
    a, b = history.products["A"], history.products["B"]
    # A: 2 + 5 units (the declined order's unit is no sale), 2000 + 5000 - 500; B: 1 + 3, 10000.
    assert [p.product_id for p in by_units] == [a, b]
    assert [(p.units, p.revenue.amount_minor) for p in by_units] == [(7, 6500), (4, 10000)]
    assert {p.revenue.currency_code for p in by_units} == {"EUR"}
    assert [p.product_id for p in top("revenue")] == [b, a]
    assert [p.product_id for p in top("units", limit=1)] == [a]
    assert by_units[0].sku.startswith("SKU-")

    for fields, request in [
        (
            {"currency_code"},
            pb.GetTopProductsReportRequest(start_date="2026-01-01", end_date="2026-01-02"),
        ),
        (
            {"order_by", "limit"},
            pb.GetTopProductsReportRequest(
                start_date="2026-01-01",
                end_date="2026-01-02",
                currency_code="EUR",
                order_by="price",
                limit=-1,
            ),
        ),
    ]:
        err = rpc_error(lambda request=request: staff.reports.GetTopProductsReport(request))
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == fields


def test_stock_valuation_is_units_on_hand_times_current_price(
    staff: StorefrontClient, history: History
) -> None:
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for letter, product_id in history.products.items():
        currency, price = history.prices[letter]
        on_hand = stock(staff, product_id)[0]
        expected[currency]["products"] += 1
        expected[currency]["units"] += on_hand
        expected[currency]["value"] += on_hand * price
    # Sold: 2A+1B, 5A, 3B (the cancelled C went back on the shelf, the declined A never left).
    assert (expected["EUR"]["units"], expected["USD"]["units"]) == (3 * 50 - 7 - 4, 50)
    report = staff.reports.GetStockValuationReport(pb.GetStockValuationReportRequest())
    assert {
        v.currency_code: Counter(products=v.products, units=v.units, value=v.value_minor)
        for v in report.currencies
    } == expected
    assert [v.currency_code for v in report.currencies] == ["EUR", "USD"]


def test_refunds_by_reason(staff: StorefrontClient, history: History) -> None:
    orders = all_orders(staff)
    expected: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for order in orders:
        for refund in order.refunds:
            key = (refund.reason, refund.amount.currency_code)
            expected[key]["refunds"] += 1
            expected[key]["amount"] += refund.amount.amount_minor
    report = staff.reports.GetRefundsReport(
        pb.GetRefundsReportRequest(
            start_date=history.earlier.isoformat(), end_date=history.today.isoformat()
        )
    )
    assert {
        (r.reason, r.currency_code): Counter(refunds=r.refunds, amount=r.amount_minor)
        for r in report.reasons
    } == expected
    assert sorted(key for key in expected) == [("damaged", "EUR"), ("order cancelled", "USD")]
    amounts = [r.amount_minor for r in report.reasons]
    assert amounts == sorted(amounts, reverse=True)

    bad = rpc_error(
        lambda: staff.reports.GetRefundsReport(
            pb.GetRefundsReportRequest(start_date="2026-01-02", end_date="2026-01-01")
        )
    )
    assert (bad.code(), violated_fields(bad)) == (StatusCode.INVALID_ARGUMENT, {"end_date"})


# --- the command line -----------------------------------------------------------------------------


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def minor(amount: str, places: int = 2) -> int:
    return int(Decimal(amount).scaleb(places))


def test_storefront_report_writes_the_same_figures_as_csv(
    staff: StorefrontClient,
    history: History,
    e2e_database_url: tuple[Path, str],
    tmp_path: Path,
) -> None:
    env = environment(tmp_path, e2e_database_url[1])
    start, end = history.earlier.isoformat(), history.today.isoformat()

    done = storefront(env, "report", "sales", "--start", start, "--end", end)
    assert done.returncode == 0, done.stderr
    rows = csv_rows(done.stdout)
    report = sales(staff, history.earlier, history.today)
    assert [
        (
            r["date"],
            r["currency"],
            int(r["orders"]),
            int(r["units"]),
            minor(r["gross"]),
            minor(r["discounts"]),
            minor(r["refunds"]),
            minor(r["net"]),
        )
        for r in rows
    ] == [
        (
            d.date,
            d.figures.currency_code,
            d.figures.orders,
            d.figures.units,
            d.figures.gross_minor,
            d.figures.discounts_minor,
            d.figures.refunds_minor,
            d.figures.net_minor,
        )
        for d in report.days
    ]

    output = tmp_path / "top.csv"
    done = storefront(
        env,
        "report",
        "top-products",
        "--start",
        start,
        "--end",
        end,
        "--currency",
        "EUR",
        "--by",
        "revenue",
        "--output",
        str(output),
    )
    assert done.returncode == 0, done.stderr
    top = csv_rows(output.read_text())
    assert [(r["rank"], r["product_id"], r["revenue"]) for r in top] == [
        ("1", history.products["B"], "100.00"),
        ("2", history.products["A"], "65.00"),
    ]

    done = storefront(env, "report", "stock-valuation")
    assert done.returncode == 0, done.stderr
    valuation = staff.reports.GetStockValuationReport(pb.GetStockValuationReportRequest())
    assert [(r["currency"], int(r["units"]), minor(r["value"])) for r in csv_rows(done.stdout)] == [
        (v.currency_code, v.units, v.value_minor) for v in valuation.currencies
    ]

    done = storefront(env, "report", "refunds", "--start", start, "--end", end)
    assert done.returncode == 0, done.stderr
    assert {(r["reason"], r["currency"]) for r in csv_rows(done.stdout)} == {
        ("damaged", "EUR"),
        ("order cancelled", "USD"),
    }

    refused = storefront(env, "report", "sales", "--start", end, "--end", start)
    assert refused.returncode == 1
    assert "end_date" in refused.stderr and "Traceback" not in refused.stderr
