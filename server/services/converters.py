"""Conversions between rows and messages that every servicer shares."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: dt.datetime | None) -> Timestamp | None:
    """Returns a naive-UTC datetime as a protobuf Timestamp (None stays unset)."""
    if value is None:
        return None
    result = Timestamp()
    result.FromDatetime(value)
    return result
