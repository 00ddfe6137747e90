"""Conversions between rows and messages that every servicer shares."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from storefront.v1 import access_pb2, common_pb2, order_pb2, product_pb2

from server.domain import money
from server.domain.commands import RequestKey
from server.domain.listing import PageRequest
from server.domain.money import Money
from server.domain.orders import Address
from server.domain.page_tokens import PageTokenSigner
from server.domain.principal import Role
from server.domain.products import ACTIVE, ARCHIVED
from server.errors import FieldViolation, InvalidArgument

# What a List or Search request may carry for paging; SearchProducts, for one, has no filter.
_PAGE_REQUEST_FIELDS = ("page_size", "page_token", "filter", "order_by")


PRODUCT_STATE_TO_PROTO = {
    ACTIVE: product_pb2.PRODUCT_STATE_ACTIVE,
    ARCHIVED: product_pb2.PRODUCT_STATE_ARCHIVED,
}
ROLE_TO_PROTO = {
    Role.CUSTOMER: access_pb2.ROLE_CUSTOMER,
    Role.STAFF: access_pb2.ROLE_STAFF,
    Role.ADMIN: access_pb2.ROLE_ADMIN,
    Role.SERVICE: access_pb2.ROLE_SERVICE,
}
ROLE_FROM_PROTO = {number: role for role, number in ROLE_TO_PROTO.items()}


def product_state_to_proto(state: str) -> product_pb2.ProductState.ValueType:
    """Returns a stored product state (ACTIVE, ARCHIVED) as its enum value."""
    return PRODUCT_STATE_TO_PROTO.get(state, product_pb2.PRODUCT_STATE_UNSPECIFIED)


def address_from_proto(message: order_pb2.Address) -> Address:
    """Returns an Address message as the domain's address (validated by the domain)."""
    return Address(
        recipient_name=message.recipient_name,
        line1=message.line1,
        line2=message.line2,
        city=message.city,
        region=message.region,
        postal_code=message.postal_code,
        country_code=message.country_code,
    )


def address_to_proto(address: Address) -> order_pb2.Address:
    """Returns a domain address as its message."""
    return order_pb2.Address(
        recipient_name=address.recipient_name,
        line1=address.line1,
        line2=address.line2,
        city=address.city,
        region=address.region,
        postal_code=address.postal_code,
        country_code=address.country_code,
    )


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """Returns a naive-UTC datetime as a protobuf Timestamp (None stays unset)."""
    if value is None:
        return None
    result = Timestamp()
    result.FromDatetime(value)
    return result


def datetime_from_proto(message: Timestamp, field_path: str) -> dt.datetime:
    """Returns a Timestamp as a naive-UTC datetime; INVALID_ARGUMENT naming `field_path` for one
    outside years 1..9999 or with invalid nanos."""
    try:
        return message.ToDatetime()
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field_path} is not a valid timestamp.",
            violations=[FieldViolation(field_path, "must be a timestamp in years 1 to 9999")],
        ) from None


def money_to_proto(value: Money) -> common_pb2.Money:
    """Returns a domain amount as a Money message."""
    return common_pb2.Money(currency_code=value.currency_code, amount_minor=value.amount_minor)


def rate_text(value: Decimal) -> str:
    """Returns an exchange rate as the plain decimal string messages carry ("0.92", "150")."""
    return money.format_rate(value)


def money_from_proto(message: common_pb2.Money) -> Money:
    """Returns a Money message as a domain amount (validated by the domain)."""
    return Money(currency_code=message.currency_code, amount_minor=message.amount_minor)


def page_request(request: Message, signer: PageTokenSigner) -> PageRequest:
    """Returns what a List or Search request asks for; fields it lacks keep their defaults."""
    fields = request.DESCRIPTOR.fields_by_name
    sent = {name: getattr(request, name) for name in _PAGE_REQUEST_FIELDS if name in fields}
    return PageRequest(signer, **sent)


def request_key(request: Message) -> RequestKey:
    """Returns a mutation's request_id with its fingerprint (see request_fingerprint)."""
    return RequestKey(request.request_id, request_fingerprint(request))  # type: ignore[attr-defined]


def request_fingerprint(request: Message) -> bytes:
    """Returns the request without its request_id, serialised deterministically: what makes two
    calls with one idempotency key the same request."""
    fields = type(request)()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    return fields.SerializeToString(deterministic=True)
