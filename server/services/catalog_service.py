"""CatalogService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

from storefront.v1 import catalog_service_pb2_grpc


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    """Implements storefront.v1.CatalogService."""

    def __init__(self, page_token_secret: bytes) -> None:
        self.page_token_secret = page_token_secret
