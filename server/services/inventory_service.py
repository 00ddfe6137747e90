"""InventoryService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import inventory_service_pb2, inventory_service_pb2_grpc

from server import call_context
from server.domain import inventory
from server.domain.page_tokens import PageTokenSigner
from server.models.stock import StockMovement
from server.services.converters import page_request, request_key, timestamp

pb = inventory_service_pb2

KIND_TO_PROTO = {
    inventory.MovementKind.ADJUSTMENT: pb.STOCK_MOVEMENT_KIND_ADJUSTMENT,
    inventory.MovementKind.RESERVATION: pb.STOCK_MOVEMENT_KIND_RESERVATION,
    inventory.MovementKind.RELEASE: pb.STOCK_MOVEMENT_KIND_RELEASE,
    inventory.MovementKind.SALE: pb.STOCK_MOVEMENT_KIND_SALE,
    inventory.MovementKind.RESTOCK: pb.STOCK_MOVEMENT_KIND_RESTOCK,
}


def stock_level_to_proto(level: inventory.StockView) -> inventory_service_pb2.StockLevel:
    """Converts a stock view to its message; on_hand and reserved only where the view has them."""
    message = pb.StockLevel(
        product_id=level.product_id,
        available=level.available,
        update_time=timestamp(level.update_time),
    )
    if level.on_hand is not None and level.reserved is not None:
        message.on_hand = level.on_hand
        message.reserved = level.reserved
    return message


def movement_to_proto(movement: StockMovement) -> inventory_service_pb2.StockMovement:
    """Converts a ledger row to its message."""
    return pb.StockMovement(
        id=str(movement.id),
        product_id=movement.product_id,
        kind=KIND_TO_PROTO[inventory.MovementKind(movement.kind)],
        on_hand_delta=movement.on_hand_delta,
        reserved_delta=movement.reserved_delta,
        on_hand_after=movement.on_hand_after,
        reserved_after=movement.reserved_after,
        reason=movement.reason,
        actor=movement.actor,
        create_time=timestamp(movement.create_time),
    )


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    """Implements storefront.v1.InventoryService."""

    def __init__(self, pages: PageTokenSigner) -> None:
        self.pages = pages

    def GetStockLevel(
        self, request: pb.GetStockLevelRequest, context: grpc.ServicerContext
    ) -> pb.GetStockLevelResponse:
        level = inventory.get_stock(call_context.principal_or_none(), request.product_id)
        return pb.GetStockLevelResponse(stock_level=stock_level_to_proto(level))

    def BatchGetStockLevels(
        self, request: pb.BatchGetStockLevelsRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetStockLevelsResponse:
        levels, missing = inventory.batch_get_stock(
            call_context.principal_or_none(), list(request.product_ids)
        )
        return pb.BatchGetStockLevelsResponse(
            stock_levels=[stock_level_to_proto(level) for level in levels],
            missing_product_ids=missing,
        )

    def AdjustStock(
        self, request: pb.AdjustStockRequest, context: grpc.ServicerContext
    ) -> pb.AdjustStockResponse:
        adjusted = inventory.adjust_stock(
            call_context.principal(),
            inventory.AdjustStock(
                request_key(request), request.product_id, request.delta, request.reason
            ),
        )
        return pb.AdjustStockResponse(
            stock_level=stock_level_to_proto(adjusted.level),
            movement=movement_to_proto(adjusted.movement),
        )

    def BatchAdjustStock(
        self, request: pb.BatchAdjustStockRequest, context: grpc.ServicerContext
    ) -> pb.BatchAdjustStockResponse:
        adjusted = inventory.batch_adjust_stock(
            call_context.principal(),
            inventory.BatchAdjustStock(
                request_key(request),
                tuple((change.product_id, change.delta) for change in request.adjustments),
                request.reason,
            ),
        )
        return pb.BatchAdjustStockResponse(
            stock_levels=[stock_level_to_proto(a.level) for a in adjusted],
            movements=[movement_to_proto(a.movement) for a in adjusted],
        )

    def ListStockMovements(
        self, request: pb.ListStockMovementsRequest, context: grpc.ServicerContext
    ) -> pb.ListStockMovementsResponse:
        page = inventory.list_movements(
            page_request(request, self.pages), product_id=request.product_id
        )
        return pb.ListStockMovementsResponse(
            movements=[movement_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )
