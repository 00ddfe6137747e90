"""Reads storefront's rich error details (google.rpc.Status) from a grpc.RpcError."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

REQUEST_ID_KEY = "x-request-id"


def status_of(err: grpc.RpcError) -> status_pb2.Status | None:
    """Returns the google.rpc.Status the server attached to the error, if any."""
    if not all(hasattr(err, name) for name in ("code", "details", "trailing_metadata")):
        return None
    try:
        status: status_pb2.Status | None = rpc_status.from_call(err)
    except ValueError:  # details that contradict the call's own code or message
        return None
    return status


def _details(err: grpc.RpcError, message_type: type[Any]) -> list[Any]:
    status = status_of(err)
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def error_info(err: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """Returns the ErrorInfo reason and metadata, or ("", {}) without an ErrorInfo."""
    infos: list[error_details_pb2.ErrorInfo] = _details(err, error_details_pb2.ErrorInfo)
    if not infos:
        return "", {}
    return infos[0].reason, dict(infos[0].metadata)


def field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """Returns the BadRequest field violations as (field, description) pairs."""
    requests: list[error_details_pb2.BadRequest] = _details(err, error_details_pb2.BadRequest)
    return [(v.field, v.description) for r in requests for v in r.field_violations]


def request_id(err: grpc.RpcError) -> str:
    """Returns the request id the server sent in trailing metadata, or ""."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if trailing else None) or ():
        if key == REQUEST_ID_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""
