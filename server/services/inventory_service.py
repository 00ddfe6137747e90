"""InventoryService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

import grpc
from storefront.v1 import inventory_service_pb2, inventory_service_pb2_grpc

from server import call_context
from server.domain import idempotency, inventory
from server.domain.principal import Role
from server.errors import Validator
from server.models.stock import StockLevel, StockMovement
from server.services.converters import request_fingerprint, timestamp

pb = inventory_service_pb2

ADJUST_STOCK_METHOD = "/storefront.v1.InventoryService/AdjustStock"
# Who sees on_hand and reserved; everyone else sees only what can be bought.
SEES_ALL_TERMS = frozenset({Role.STAFF, Role.ADMIN, Role.SERVICE})

KIND_TO_PROTO = {
    inventory.MovementKind.ADJUSTMENT: pb.STOCK_MOVEMENT_KIND_ADJUSTMENT,
    inventory.MovementKind.RESERVATION: pb.STOCK_MOVEMENT_KIND_RESERVATION,
    inventory.MovementKind.RELEASE: pb.STOCK_MOVEMENT_KIND_RELEASE,
    inventory.MovementKind.SALE: pb.STOCK_MOVEMENT_KIND_SALE,
    inventory.MovementKind.RESTOCK: pb.STOCK_MOVEMENT_KIND_RESTOCK,
}


def stock_level_to_proto(level: StockLevel, *, all_terms: bool) -> inventory_service_pb2.StockLevel:
    """Converts a stock row to its message; on_hand and reserved only with `all_terms`."""
    message = pb.StockLevel(
        product_id=level.product_id,
        available=inventory.available(level),
        update_time=timestamp(level.update_time),
    )
    if all_terms:
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


def _caller_sees_all_terms() -> bool:
    call = call_context.current()
    return call is not None and call.principal is not None and call.principal.role in SEES_ALL_TERMS


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    """Implements storefront.v1.InventoryService."""

    def __init__(self, page_token_secret: bytes) -> None:
        self.page_token_secret = page_token_secret

    def GetStockLevel(
        self, request: pb.GetStockLevelRequest, context: grpc.ServicerContext
    ) -> pb.GetStockLevelResponse:
        level = inventory.get_level(request.product_id)
        return pb.GetStockLevelResponse(
            stock_level=stock_level_to_proto(level, all_terms=_caller_sees_all_terms())
        )

    def BatchGetStockLevels(
        self, request: pb.BatchGetStockLevelsRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetStockLevelsResponse:
        levels, missing = inventory.batch_get_levels(list(request.product_ids))
        all_terms = _caller_sees_all_terms()
        return pb.BatchGetStockLevelsResponse(
            stock_levels=[stock_level_to_proto(level, all_terms=all_terms) for level in levels],
            missing_product_ids=missing,
        )

    def AdjustStock(
        self, request: pb.AdjustStockRequest, context: grpc.ServicerContext
    ) -> pb.AdjustStockResponse:
        principal = call_context.principal()

        def validate(v: Validator) -> None:
            inventory.check_adjustment(
                v, product_id=request.product_id, delta=request.delta, reason=request.reason
            )

        def execute() -> bytes:
            level, movement = inventory.adjust(
                product_id=request.product_id,
                delta=request.delta,
                reason=request.reason,
                actor=principal.subject,
            )
            response = pb.AdjustStockResponse(
                stock_level=stock_level_to_proto(level, all_terms=True),
                movement=movement_to_proto(movement),
            )
            return response.SerializeToString(deterministic=True)

        stored = idempotency.run_once(
            principal=principal.subject,
            key=request.request_id,
            operation=ADJUST_STOCK_METHOD,
            request_fingerprint=request_fingerprint(request),
            execute=execute,
            validate=validate,
        )
        return pb.AdjustStockResponse.FromString(stored)

    def ListStockMovements(
        self, request: pb.ListStockMovementsRequest, context: grpc.ServicerContext
    ) -> pb.ListStockMovementsResponse:
        page = inventory.list_movements(
            product_id=request.product_id,
            page_size=request.page_size,
            page_token=request.page_token,
            secret=self.page_token_secret,
        )
        return pb.ListStockMovementsResponse(
            movements=[movement_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )
