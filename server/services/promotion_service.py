"""PromotionService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import json

import grpc
from storefront.v1 import promotion_service_pb2, promotion_service_pb2_grpc

from server.domain import promotions
from server.domain.money import Money
from server.domain.page_tokens import PageTokenSigner
from server.services.converters import (
    datetime_from_proto,
    money_from_proto,
    money_to_proto,
    page_request,
    timestamp,
)

pb = promotion_service_pb2


def promotion_to_proto(counted: promotions.Counted) -> pb.Promotion:
    """Converts a promotion and its use count to its message."""
    row = counted.promotion

    def amounts(column: str) -> list[Money]:
        return [Money(code, minor) for code, minor in sorted(json.loads(column).items())]

    return pb.Promotion(
        id=row.id,
        code=row.code,
        description=row.description,
        percent_basis_points=row.percent_basis_points or 0,
        amounts_off=[money_to_proto(m) for m in amounts(row.amounts_off)],
        minimum_subtotals=[money_to_proto(m) for m in amounts(row.minimum_subtotals)],
        product_ids=json.loads(row.product_ids),
        category_slugs=json.loads(row.category_slugs),
        start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time),
        max_uses=row.max_uses or 0,
        max_uses_per_customer=row.max_uses_per_customer or 0,
        use_count=counted.use_count,
        create_time=timestamp(row.create_time),
        archive_time=timestamp(row.archive_time),
    )


def fields_from_proto(message: pb.Promotion) -> promotions.PromotionFields:
    """Returns the settable fields of a promotion message."""
    return promotions.PromotionFields(
        code=message.code,
        description=message.description,
        percent_basis_points=message.percent_basis_points,
        amounts_off=[money_from_proto(m) for m in message.amounts_off],
        minimum_subtotals=[money_from_proto(m) for m in message.minimum_subtotals],
        product_ids=list(message.product_ids),
        category_slugs=list(message.category_slugs),
        start_time=datetime_from_proto(message.start_time, "promotion.start_time")
        if message.HasField("start_time")
        else None,
        end_time=datetime_from_proto(message.end_time, "promotion.end_time")
        if message.HasField("end_time")
        else None,
        max_uses=message.max_uses,
        max_uses_per_customer=message.max_uses_per_customer,
    )


class PromotionServicer(promotion_service_pb2_grpc.PromotionServiceServicer):
    """Implements storefront.v1.PromotionService."""

    def __init__(self, pages: PageTokenSigner) -> None:
        self.pages = pages

    def CreatePromotion(
        self, request: pb.CreatePromotionRequest, context: grpc.ServicerContext
    ) -> pb.CreatePromotionResponse:
        created = promotions.create(fields_from_proto(request.promotion))
        return pb.CreatePromotionResponse(promotion=promotion_to_proto(created))

    def GetPromotion(
        self, request: pb.GetPromotionRequest, context: grpc.ServicerContext
    ) -> pb.GetPromotionResponse:
        return pb.GetPromotionResponse(
            promotion=promotion_to_proto(promotions.get(request.promotion_id))
        )

    def ListPromotions(
        self, request: pb.ListPromotionsRequest, context: grpc.ServicerContext
    ) -> pb.ListPromotionsResponse:
        page = promotions.list_(page_request(request, self.pages))
        return pb.ListPromotionsResponse(
            promotions=[promotion_to_proto(found) for found in page.items],
            next_page_token=page.next_page_token,
        )

    def ArchivePromotion(
        self, request: pb.ArchivePromotionRequest, context: grpc.ServicerContext
    ) -> pb.ArchivePromotionResponse:
        return pb.ArchivePromotionResponse(
            promotion=promotion_to_proto(promotions.archive(request.promotion_id))
        )
