"""Request decoding: a body that is not a valid message is INVALID_ARGUMENT, like any bad field.

grpcio deserialises a request before any interceptor runs, and answers a body it cannot parse
with a bare INTERNAL: no trailers, no request id, no access-log line, no metric, and an ERROR
traceback in its own log for every such request. This interceptor hands grpcio a deserialiser
that never fails: a malformed body becomes a `MalformedRequest`, which the call, by then inside
the request-id, log, metrics and error scopes, raises as INVALID_ARGUMENT with one WARNING line.

It also refuses a NUL character in any string field of any request. PostgreSQL cannot store one
in text while SQLite can, so without this the two engines would answer differently; no name,
address, query or token is written with one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from server import call_context
from server.errors import FieldViolation, InvalidArgument
from server.interceptors.base import Call, MethodInfo, ScopeInterceptor

log = logging.getLogger("storefront.requests")

NUL = "\x00"


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request message that could not be accepted; `error` says why."""

    error: InvalidArgument


def nul_fields(message: Message, prefix: str = "") -> Iterator[str]:
    """Yields the path of every string field (map keys included) in `message` that holds a NUL."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str) and NUL in key:
                    yield f"{path}[{key[:32]!r}]"
                elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from nul_fields(item, f"{path}[{key!r}].")
                elif isinstance(item, str) and NUL in item:
                    yield f"{path}[{key!r}]"
        elif field.type == FieldDescriptor.TYPE_STRING:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                if NUL in item:
                    yield f"{path}[{index}]" if field.is_repeated else path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for index, item in enumerate(value):
                    yield from nul_fields(item, f"{path}[{index}].")
            else:
                yield from nul_fields(value, path + ".")


def lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """Returns a deserialiser that answers a MalformedRequest instead of raising."""
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = descriptor.full_name if descriptor is not None else "request"

    def decode(data: bytes) -> Any:
        try:
            message = deserialize(data)
        except DecodeError:
            return MalformedRequest(
                InvalidArgument(
                    f"The request body is not a valid {type_name} message.",
                    reason="MALFORMED_REQUEST",
                )
            )
        # Every string NUL is a 0x00 byte on the wire; most requests have none and skip the walk.
        if b"\x00" in data and isinstance(message, Message):
            paths = list(nul_fields(message))
            if paths:
                return MalformedRequest(
                    InvalidArgument(
                        "The request has invalid fields.",
                        violations=[
                            FieldViolation(path, "must not contain NUL characters")
                            for path in paths
                        ],
                    )
                )
        return message

    return decode


def _refuse(malformed: MalformedRequest, method: MethodInfo) -> InvalidArgument:
    call = call_context.current()
    log.warning(
        "refused a malformed request",
        extra={
            "request_id": call.request_id if call else "-",
            "grpc.service": method.service,
            "grpc.method": method.method,
            "reason": malformed.error.reason,
        },
    )
    return malformed.error


class RequestDecodingInterceptor(ScopeInterceptor):
    """Installs the lenient deserialiser and raises what it found inside the call's scopes."""

    observes_messages = True  # streamed requests are checked message by message

    def request_deserializer(
        self, deserialize: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        return None if deserialize is None else lenient(deserialize)

    def enter(self, call: Call) -> None:
        if isinstance(call.request, MalformedRequest):
            raise _refuse(call.request, call.method)

    def message_received(self, call: Call, message: Any) -> None:
        if isinstance(message, MalformedRequest):
            raise _refuse(message, call.method)
