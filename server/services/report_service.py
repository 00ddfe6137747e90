"""ReportService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import report_service_pb2, report_service_pb2_grpc

from server.domain import reports
from server.domain.money import Money
from server.services.converters import money_to_proto

pb = report_service_pb2


def sales_figures_to_proto(figures: reports.SalesFigures) -> pb.SalesFigures:
    """Converts one currency's sales figures to their message."""
    return pb.SalesFigures(
        currency_code=figures.currency,
        orders=figures.orders,
        units=figures.units,
        gross_minor=figures.gross_minor,
        discounts_minor=figures.discounts_minor,
        shipping_minor=figures.shipping_minor,
        tax_minor=figures.tax_minor,
        refunds_minor=figures.refunds_minor,
        net_minor=figures.net_minor,
    )


class ReportServicer(report_service_pb2_grpc.ReportServiceServicer):
    """Implements storefront.v1.ReportService."""

    def GetSalesReport(
        self, request: pb.GetSalesReportRequest, context: grpc.ServicerContext
    ) -> pb.GetSalesReportResponse:
        report = reports.sales(request.start_date, request.end_date, request.currency_code)
        return pb.GetSalesReportResponse(
            days=[
                pb.SalesDay(date=day.isoformat(), figures=sales_figures_to_proto(figures))
                for day, figures in report.days
            ],
            totals=[sales_figures_to_proto(figures) for figures in report.totals],
        )

    def GetTopProductsReport(
        self, request: pb.GetTopProductsReportRequest, context: grpc.ServicerContext
    ) -> pb.GetTopProductsReportResponse:
        found = reports.top_products(
            request.start_date,
            request.end_date,
            request.currency_code,
            request.order_by,
            request.limit,
        )
        return pb.GetTopProductsReportResponse(
            products=[
                pb.TopProduct(
                    product_id=product.product_id,
                    sku=product.sku,
                    name=product.name,
                    units=product.units,
                    orders=product.orders,
                    revenue=money_to_proto(Money(request.currency_code, product.revenue_minor)),
                )
                for product in found
            ]
        )

    def GetStockValuationReport(
        self, request: pb.GetStockValuationReportRequest, context: grpc.ServicerContext
    ) -> pb.GetStockValuationReportResponse:
        return pb.GetStockValuationReportResponse(
            currencies=[
                pb.StockValue(
                    currency_code=value.currency,
                    products=value.products,
                    units=value.units,
                    value_minor=value.value_minor,
                )
                for value in reports.stock_valuation()
            ]
        )

    def GetRefundsReport(
        self, request: pb.GetRefundsReportRequest, context: grpc.ServicerContext
    ) -> pb.GetRefundsReportResponse:
        return pb.GetRefundsReportResponse(
            reasons=[
                pb.RefundReason(
                    reason=reason.reason,
                    currency_code=reason.currency,
                    refunds=reason.refunds,
                    amount_minor=reason.amount_minor,
                )
                for reason in reports.refunds(request.start_date, request.end_date)
            ]
        )
