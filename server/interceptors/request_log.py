"""Request id and access log: one JSON line per RPC with go-grpc-middleware's field names."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence

import grpc

from server import call_context
from server.interceptors.base import Call, ScopeInterceptor, go_code_name
from server.interceptors.client_address import Network, from_context

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept only if it is short and plain, so it is safe to log and echo back.
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")

access_log = logging.getLogger("storefront.access")


def request_id_from(context: grpc.ServicerContext) -> str:
    """Returns the caller's x-request-id if acceptable, else a new UUID."""
    for key, value in context.invocation_metadata() or ():
        if (
            key == REQUEST_ID_HEADER
            and isinstance(value, str)
            and _ACCEPTABLE_REQUEST_ID.match(value)
        ):
            return value
    return str(uuid.uuid4())


class RequestLogInterceptor(ScopeInterceptor):
    """Assigns the request id and the client address, echoes the id in trailing metadata and
    logs the finished call."""

    def __init__(self, trusted_proxies: Sequence[Network] = ()) -> None:
        self.trusted_proxies = tuple(trusted_proxies)

    def enter(self, call: Call) -> None:
        context = call.context
        call.peer = context.peer() or ""
        info = call_context.CallContext(
            request_id=request_id_from(context),
            client_address=from_context(context, self.trusted_proxies, peer=call.peer),
        )
        call.publish(info)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, info.request_id),))

    def exit(self, call: Call, error: BaseException | None) -> None:
        code, seconds = call.outcome(error)
        info = call.info
        assert info is not None  # made by enter
        method = call.method
        principal = info.principal
        fields = {
            "grpc.component": "server",
            "grpc.service": method.service,
            "grpc.method": method.method,
            "grpc.method_type": method.rpc_type,
            "grpc.code": go_code_name(code),
            "grpc.time_ms": round(seconds * 1000, 3),
            "peer.address": call.peer,
            "request_id": info.request_id,
            "principal": principal.subject if principal else None,
            "principal.role": principal.role.value if principal else None,
        }
        if code is not grpc.StatusCode.OK and info.error_reason:
            fields["error.reason"] = info.error_reason
        level = _LEVELS.get(code, logging.WARNING)
        try:
            if access_log.isEnabledFor(level):
                # The record made directly: Logger.log would also look up the caller's file and
                # line on the stack, which the JSON line does not show, on every call.
                access_log.handle(
                    access_log.makeRecord(
                        access_log.name, level, "", 0, "finished call", (), None, extra=fields
                    )
                )
        finally:
            call.unpublish()


# Server faults are errors; every other failure is a WARNING, except a call its client cancelled.
_LEVELS = {
    grpc.StatusCode.OK: logging.INFO,
    grpc.StatusCode.CANCELLED: logging.INFO,
    grpc.StatusCode.INTERNAL: logging.ERROR,
    grpc.StatusCode.UNKNOWN: logging.ERROR,
    grpc.StatusCode.DATA_LOSS: logging.ERROR,
}
