"""InventoryService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

from storefront.v1 import inventory_service_pb2_grpc


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    """Implements storefront.v1.InventoryService."""

    def __init__(self, page_token_secret: bytes) -> None:
        self.page_token_secret = page_token_secret
