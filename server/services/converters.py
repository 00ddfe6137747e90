"""Conversions between rows and messages that every servicer shares."""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from storefront.v1 import common_pb2

from server.domain.money import Money


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """Returns a naive-UTC datetime as a protobuf Timestamp (None stays unset)."""
    if value is None:
        return None
    result = Timestamp()
    result.FromDatetime(value)
    return result


def money_to_proto(value: Money) -> common_pb2.Money:
    """Returns a domain amount as a Money message."""
    return common_pb2.Money(currency_code=value.currency_code, amount_minor=value.amount_minor)


def money_from_proto(message: common_pb2.Money) -> Money:
    """Returns a Money message as a domain amount (validated by the domain)."""
    return Money(currency_code=message.currency_code, amount_minor=message.amount_minor)


def request_fingerprint(request: Message) -> bytes:
    """Returns the request without its request_id, serialised deterministically: what makes two
    calls with one idempotency key the same request."""
    fields = type(request)()
    fields.CopyFrom(request)
    fields.ClearField("request_id")
    return fields.SerializeToString(deterministic=True)
