"""CatalogService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import struct_pb2
from storefront.v1 import catalog_service_pb2, catalog_service_pb2_grpc, common_pb2

from server import call_context
from server.domain import products
from server.domain.product_cache import ProductCache
from server.domain.products import ProductFields
from server.models.product import Product
from server.services.converters import timestamp

pb = catalog_service_pb2

STATE_TO_PROTO = {
    products.ACTIVE: pb.PRODUCT_STATE_ACTIVE,
    products.ARCHIVED: pb.PRODUCT_STATE_ARCHIVED,
}
# Struct numbers are doubles; integral ones up to 2**53 are stored as JSON integers.
_MAX_EXACT_INTEGER = 2**53


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _value_to_python(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        # NaN and infinities pass through for the domain to refuse.
        if number.is_integer() and abs(number) <= _MAX_EXACT_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Converts a google.protobuf.Struct to a JSON object."""
    return {key: _value_to_python(item) for key, item in struct.fields.items()}


def dict_to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    """Converts a JSON object to a google.protobuf.Struct."""
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def product_to_proto(product: Product) -> catalog_service_pb2.Product:
    """Converts a product row to its message."""
    return pb.Product(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        description_html=product.description_html,
        price=common_pb2.Money(
            currency_code=product.price_currency, amount_minor=product.price_minor
        ),
        categories=products.categories_of(product),
        attributes=dict_to_struct(products.attributes_of(product)),
        image_urls=products.image_urls_of(product),
        weight_grams=product.weight_grams,
        state=STATE_TO_PROTO.get(product.state, pb.PRODUCT_STATE_UNSPECIFIED),
        etag=products.etag(product),
        create_time=timestamp(product.create_time),
        update_time=timestamp(product.update_time),
    )


def fields_from_proto(message: catalog_service_pb2.Product) -> ProductFields:
    """Returns the client-settable fields of a product message; output-only ones are dropped."""
    return ProductFields(
        sku=message.sku,
        name=message.name,
        description=message.description,
        description_html=message.description_html,
        price_currency=message.price.currency_code,
        price_minor=message.price.amount_minor,
        categories=list(message.categories),
        attributes=struct_to_dict(message.attributes),
        image_urls=list(message.image_urls),
        weight_grams=message.weight_grams,
    )


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    """Implements storefront.v1.CatalogService."""

    def __init__(self, page_token_secret: bytes, cache: ProductCache) -> None:
        self.page_token_secret = page_token_secret
        self.cache = cache

    def CreateProduct(
        self, request: pb.CreateProductRequest, context: grpc.ServicerContext
    ) -> pb.CreateProductResponse:
        product = products.create(
            fields_from_proto(request.product), actor=call_context.principal()
        )
        return pb.CreateProductResponse(product=product_to_proto(product))

    def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.ServicerContext
    ) -> pb.GetProductResponse:
        product = products.get_or_raise(request.product_id, cache=self.cache)
        return pb.GetProductResponse(product=product_to_proto(product))

    def BatchGetProducts(
        self, request: pb.BatchGetProductsRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetProductsResponse:
        result = products.batch_get(list(request.product_ids), cache=self.cache)
        return pb.BatchGetProductsResponse(
            products=[product_to_proto(p) for p in result.products],
            missing_ids=result.missing_ids,
        )

    def ListProducts(
        self, request: pb.ListProductsRequest, context: grpc.ServicerContext
    ) -> pb.ListProductsResponse:
        page = products.list_(
            page_size=request.page_size,
            page_token=request.page_token,
            filter_text=request.filter,
            order_by=request.order_by,
            show_archived=request.show_archived,
            secret=self.page_token_secret,
        )
        return pb.ListProductsResponse(
            products=[product_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    def SearchProducts(
        self, request: pb.SearchProductsRequest, context: grpc.ServicerContext
    ) -> pb.SearchProductsResponse:
        page = products.search(
            query=request.query,
            page_size=request.page_size,
            page_token=request.page_token,
            show_archived=request.show_archived,
            secret=self.page_token_secret,
        )
        return pb.SearchProductsResponse(
            products=[product_to_proto(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    def UpdateProduct(
        self, request: pb.UpdateProductRequest, context: grpc.ServicerContext
    ) -> pb.UpdateProductResponse:
        product = products.update(
            product_id=request.product.id,
            fields=fields_from_proto(request.product),
            paths=list(request.update_mask.paths),
            expected_etag=request.etag,
            actor=call_context.principal(),
        )
        return pb.UpdateProductResponse(product=product_to_proto(product))

    def ArchiveProduct(
        self, request: pb.ArchiveProductRequest, context: grpc.ServicerContext
    ) -> pb.ArchiveProductResponse:
        product = products.archive(
            product_id=request.product_id,
            expected_etag=request.etag,
            actor=call_context.principal(),
        )
        return pb.ArchiveProductResponse(product=product_to_proto(product))

    def RestoreProduct(
        self, request: pb.RestoreProductRequest, context: grpc.ServicerContext
    ) -> pb.RestoreProductResponse:
        product = products.restore(
            product_id=request.product_id,
            expected_etag=request.etag,
            actor=call_context.principal(),
        )
        return pb.RestoreProductResponse(product=product_to_proto(product))

    def ListCategories(
        self, request: pb.ListCategoriesRequest, context: grpc.ServicerContext
    ) -> pb.ListCategoriesResponse:
        return pb.ListCategoriesResponse(
            categories=[
                pb.Category(slug=c.slug, product_count=c.product_count)
                for c in products.list_categories()
            ]
        )

    def ImportProducts(
        self, request_iterator: Iterator[pb.ImportProductsRequest], context: grpc.ServicerContext
    ) -> pb.ImportProductsResponse:
        actor = call_context.principal()
        result = products.import_rows(
            (fields_from_proto(row.product) for row in request_iterator), actor=actor
        )
        return pb.ImportProductsResponse(
            created_count=result.created_count,
            updated_count=result.updated_count,
            failed_count=result.failed_count,
            errors=[
                pb.ImportRowError(row=e.row, sku=e.sku, message=e.message) for e in result.errors
            ],
        )
