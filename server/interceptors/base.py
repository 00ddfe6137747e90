"""Wraps all four RPC kinds with one helper: interceptors only say what they do around a call."""

from __future__ import annotations

import abc
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc


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


class ScopeInterceptor(grpc.ServerInterceptor, abc.ABC):  # type: ignore[misc]
    """An interceptor whose work is a context manager around the handler, on the worker thread.

    `intercept_service` runs on grpc's single dispatcher thread, so it only wraps the handler;
    the scope runs when the call does, and for streamed responses it spans the whole stream.
    """

    # Set by interceptors that override message_received/message_sent (metrics); the others
    # leave request and response iterators unwrapped.
    observes_messages = False

    @abc.abstractmethod
    def scope(
        self, method: MethodInfo, context: grpc.ServicerContext
    ) -> contextlib.AbstractContextManager[None]:
        """Returns the context manager to run the call inside."""

    def message_received(self, method: MethodInfo) -> None:
        """Called for every request message the handler reads."""

    def message_sent(self, method: MethodInfo) -> None:
        """Called for every response message the handler produces."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if is_non_blocking(handler):
            # Health.Watch: public infrastructure that needs no auth, database or error mapping.
            return handler
        info = method_info(
            handler_call_details.method, handler.request_streaming, handler.response_streaming
        )
        return _wrap(handler, info, self)


def _wrap(handler: Any, info: MethodInfo, interceptor: ScopeInterceptor) -> Any:
    scope = interceptor.scope
    observe = interceptor.observes_messages

    def requests(request: Any) -> Any:
        if not observe:
            return request
        if not handler.request_streaming:
            interceptor.message_received(info)
            return request
        return _observed(request, lambda: interceptor.message_received(info))

    def unary_response(inner: Callable[..., Any]) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            with scope(info, context):
                response = inner(requests(request), context)
                if observe:
                    interceptor.message_sent(info)
                return response

        return behavior

    def stream_response(inner: Callable[..., Any]) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with scope(info, context):
                responses = inner(requests(request), context)
                if observe:
                    responses = _observed(responses, lambda: interceptor.message_sent(info))
                yield from responses

        return behavior

    return rebuilt(
        handler,
        lambda behavior: (
            stream_response(behavior) if handler.response_streaming else unary_response(behavior)
        ),
    )


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


def _observed(items: Iterator[Any], seen: Callable[[], None]) -> Iterator[Any]:
    for item in items:
        seen()
        yield item


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


@dataclass
class Outcome:
    """How a call ended: its status code and how long it took. Filled in when the call ends."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    seconds: float = 0.0


@contextlib.contextmanager
def call_outcome(context: grpc.ServicerContext) -> Iterator[Outcome]:
    """Times the enclosed call and records its final status code in the yielded Outcome."""
    outcome = Outcome()
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield outcome
    except BaseException as exc:
        error = exc
        raise
    finally:
        outcome.code = status_code_of(context, error)
        outcome.seconds = time.perf_counter() - started


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
