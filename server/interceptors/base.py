"""The interceptors' common shape: each says what it does when a call enters and leaves it, and
the chain (chain.py) runs them all around the handler in one wrapper."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from server import call_context


@dataclass(frozen=True)
class MethodInfo:
    """The RPC being called, named the way go-grpc-middleware labels it."""

    full_name: str
    service: str
    method: str
    rpc_type: str  # unary, client_stream, server_stream or bidi_stream


@functools.lru_cache(maxsize=1024)
def method_info(full_name: str, client_streaming: bool, server_streaming: bool) -> MethodInfo:
    """Parses "/package.Service/Method" into its parts (cached: called on every RPC)."""
    service, _, method = full_name.lstrip("/").rpartition("/")
    rpc_type = {
        (False, False): "unary",
        (True, False): "client_stream",
        (False, True): "server_stream",
        (True, True): "bidi_stream",
    }[(client_streaming, server_streaming)]
    return MethodInfo(full_name, service, method, rpc_type)


class Call:
    """One call in progress as the interceptors see it: what they were given and what they
    leave for each other. One object per call, made by the chain."""

    __slots__ = ("_ended", "_reset", "context", "info", "method", "peer", "request", "started")

    def __init__(self, method: MethodInfo, context: grpc.ServicerContext, request: Any) -> None:
        self.method = method
        self.context = context
        # The request message of a unary request; None when the requests are streamed.
        self.request = request
        self.started = time.perf_counter()
        # What the servicers read (request id, principal, address), once the log step made it.
        self.info: call_context.CallContext | None = None
        self.peer = ""  # context.peer(), read once
        self._reset: Any = None
        self._ended: tuple[grpc.StatusCode, float] | None = None

    def publish(self, info: call_context.CallContext) -> None:
        """Makes `info` the current call context of this thread until `unpublish`."""
        self.info = info
        self._reset = call_context.set_current(info)

    def unpublish(self) -> None:
        """Restores the call context that was current before `publish`."""
        if self._reset is not None:
            call_context.reset(self._reset)
            self._reset = None

    def outcome(self, error: BaseException | None) -> tuple[grpc.StatusCode, float]:
        """The status code the call ends with and the seconds it took, fixed on first asking
        (by the outermost steps, after the error mapping made its status)."""
        if self._ended is None:
            self._ended = (status_code_of(self.context, error), time.perf_counter() - self.started)
        return self._ended


class ScopeInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """An interceptor whose work is done when a call enters it and when the call leaves it.

    `enter` runs before the handler, outermost first; `exit` runs after it (or after an inner
    `enter` raised), innermost first, and is given the error the call is failing with, if any.
    An `exit` that raises replaces that error (the error mapping turns a DomainError into its
    status that way). Both run on the worker thread; for streamed responses they span the stream.
    Used alone as a grpc interceptor it wraps the handler by itself; in an InterceptorChain all of
    them share one wrapper and one Call.
    """

    # Set by interceptors that override message_received/message_sent (metrics, request
    # decoding); the others are not called for every message.
    observes_messages = False

    def applies_to(self, method: MethodInfo) -> bool:
        """Whether the interceptor runs around calls of `method` (asked once per method)."""
        return True

    def enter(self, call: Call) -> None:
        """Runs before the handler."""

    def exit(self, call: Call, error: BaseException | None) -> None:
        """Runs after the handler, or after an inner interceptor's `enter` raised."""

    def message_received(self, call: Call, message: Any) -> None:
        """Called for every message of a streamed request (a unary request is `call.request`,
        there at `enter`); raising ends the call with that error."""

    def message_sent(self, call: Call) -> None:
        """Called for every response message the handler produces."""

    def request_deserializer(
        self, deserialize: Callable[[bytes], Any] | None
    ) -> Callable[[bytes], Any] | None:
        """Returns the deserialiser grpc is to use for the method's requests (the same by
        default)."""
        return deserialize

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        from server.interceptors.chain import compose  # the chain builds on this module

        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return compose(handler_call_details.method, handler, (self,))


def is_non_blocking(handler: Any) -> bool:
    """Whether the handler answers through callbacks (Health.Watch) instead of a worker thread;
    such handlers are left unwrapped, or every watcher would pin a thread for its lifetime."""
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return bool(getattr(behavior, "experimental_non_blocking", False))


def rebuilt(
    handler: Any,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """Returns a handler of the same streaming kind whose behaviour is `wrap(behaviour)`, with
    another request deserialiser if one is given."""
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)


def status_code_of(context: grpc.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """Returns the status a finished call ends with, as set by the error interceptor or grpc."""
    code = context.code()
    if code is not None:
        return code  # type: ignore[no-any-return,unused-ignore]
    if not context.is_active():
        # The client went away before the handler finished: it cancelled or its deadline passed.
        if context.time_remaining() <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


def go_code_name(code: grpc.StatusCode) -> str:
    """Returns the Go name of a status code ("InvalidArgument"), as go-grpc-middleware writes it."""
    return GO_CODE_NAMES[code]


# codes.Code.String() in grpc-go; note the single L in "Canceled".
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
