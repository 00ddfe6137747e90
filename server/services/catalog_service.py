"""CatalogService servicer: unpacks requests, calls one domain function, packs responses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import struct_pb2
from storefront.v1 import catalog_service_pb2, catalog_service_pb2_grpc, product_pb2

from server import call_context
from server.domain import product_fields, product_search, products, recommendations
from server.domain.memo import BoundedMemo
from server.domain.money import Money
from server.domain.page_tokens import PageTokenSigner
from server.domain.product_cache import ProductCache
from server.domain.product_fields import ProductFields
from server.models.product import Product
from server.services.converters import (
    money_to_proto,
    page_request,
    product_state_to_proto,
    timestamp,
)

pb = catalog_service_pb2

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


def product_to_proto(product: Product) -> product_pb2.Product:
    """Converts a product row to its message."""
    return product_pb2.Product(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        description_html=product.description_html,
        price=money_to_proto(Money(product.price_currency, int(product.price_minor))),
        categories=product_fields.categories_of(product),
        attributes=dict_to_struct(product_fields.attributes_of(product)),
        image_urls=product_fields.image_urls_of(product),
        weight_grams=product.weight_grams,
        state=product_state_to_proto(product.state),
        etag=product_fields.etag(product),
        create_time=timestamp(product.create_time),
        update_time=timestamp(product.update_time),
    )


def fields_from_proto(message: product_pb2.Product) -> ProductFields:
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


# Converted product messages kept per servicer: one per product version read lately.
PRODUCT_MESSAGES_KEPT = 10_000


class ProductMessages:
    """Product messages by (id, version, update_time), converted once per product version.

    Reads and lists send the same product versions over and over, and building a message
    (JSON fields, a Struct, timestamps) cost more CPU than reading the row. A version fully
    determines the message (every change bumps it), so there is nothing to invalidate; old
    versions age out. Callers must not modify a returned message (responses copy it).
    """

    def __init__(self, max_size: int = PRODUCT_MESSAGES_KEPT) -> None:
        self._messages: BoundedMemo[tuple[str, int, object], product_pb2.Product] = BoundedMemo(
            max_size
        )

    def of(self, product: Product) -> product_pb2.Product:
        """The product's message."""
        key = (product.id, product.version, product.update_time)
        message = self._messages.get(key)
        if message is None:
            message = product_to_proto(product)
            self._messages.put(key, message)
        return message


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    """Implements storefront.v1.CatalogService."""

    def __init__(self, pages: PageTokenSigner, cache: ProductCache) -> None:
        self.pages = pages
        self.cache = cache
        self.messages = ProductMessages()

    def CreateProduct(
        self, request: pb.CreateProductRequest, context: grpc.ServicerContext
    ) -> pb.CreateProductResponse:
        product = products.create(
            fields_from_proto(request.product), actor=call_context.principal()
        )
        return pb.CreateProductResponse(product=self.messages.of(product))

    def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.ServicerContext
    ) -> pb.GetProductResponse:
        product = products.get_or_raise(request.product_id, cache=self.cache)
        return pb.GetProductResponse(product=self.messages.of(product))

    def BatchGetProducts(
        self, request: pb.BatchGetProductsRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetProductsResponse:
        result = products.batch_get(list(request.product_ids), cache=self.cache)
        return pb.BatchGetProductsResponse(
            products=[self.messages.of(p) for p in result.products],
            missing_ids=result.missing_ids,
        )

    def ListRelatedProducts(
        self, request: pb.ListRelatedProductsRequest, context: grpc.ServicerContext
    ) -> pb.ListRelatedProductsResponse:
        found = recommendations.related(request.product_id, request.page_size)
        return pb.ListRelatedProductsResponse(products=[self.messages.of(p) for p in found])

    def ListRecommendedProducts(
        self, request: pb.ListRecommendedProductsRequest, context: grpc.ServicerContext
    ) -> pb.ListRecommendedProductsResponse:
        found = recommendations.recommended(call_context.principal(), request.page_size)
        return pb.ListRecommendedProductsResponse(products=[self.messages.of(p) for p in found])

    def ListProducts(
        self, request: pb.ListProductsRequest, context: grpc.ServicerContext
    ) -> pb.ListProductsResponse:
        page = products.list_(
            page_request(request, self.pages),
            show_archived=request.show_archived,
            cache=self.cache,
        )
        return pb.ListProductsResponse(
            products=[self.messages.of(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    def SearchProducts(
        self, request: pb.SearchProductsRequest, context: grpc.ServicerContext
    ) -> pb.SearchProductsResponse:
        page = product_search.search(
            page_request(request, self.pages),
            query=request.query,
            show_archived=request.show_archived,
            cache=self.cache,
        )
        return pb.SearchProductsResponse(
            products=[self.messages.of(p) for p in page.items],
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
        return pb.UpdateProductResponse(product=self.messages.of(product))

    def ArchiveProduct(
        self, request: pb.ArchiveProductRequest, context: grpc.ServicerContext
    ) -> pb.ArchiveProductResponse:
        product = products.archive(
            product_id=request.product_id,
            expected_etag=request.etag,
            actor=call_context.principal(),
        )
        return pb.ArchiveProductResponse(product=self.messages.of(product))

    def RestoreProduct(
        self, request: pb.RestoreProductRequest, context: grpc.ServicerContext
    ) -> pb.RestoreProductResponse:
        product = products.restore(
            product_id=request.product_id,
            expected_etag=request.etag,
            actor=call_context.principal(),
        )
        return pb.RestoreProductResponse(product=self.messages.of(product))

    def ListCategories(
        self, request: pb.ListCategoriesRequest, context: grpc.ServicerContext
    ) -> pb.ListCategoriesResponse:
        return pb.ListCategoriesResponse(
            categories=[
                product_pb2.Category(slug=c.slug, product_count=c.product_count)
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
