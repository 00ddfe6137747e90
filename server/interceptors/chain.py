"""The interceptor chain: one grpc interceptor that composes each method's handler once, with
every interceptor's work in one wrapper around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from server.interceptors.base import (
    Call,
    MethodInfo,
    ScopeInterceptor,
    is_non_blocking,
    method_info,
    rebuilt,
)


class InterceptorChain(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs `interceptors` (the first outermost) around every call, as grpc would with the list.

    grpc asks each interceptor again on every call, and a handler rebuilt per interceptor per
    call (closures, a new RpcMethodHandler, a context manager each) was a measurable share of a
    call's CPU. So a method's handler is composed once, from the interceptors that apply to it,
    and every call then runs one wrapper: the interceptors' `enter` in order, the handler, their
    `exit` in reverse. Interceptors see only the method when composing (they read the call's
    metadata when it runs, through the context).
    """

    def __init__(self, interceptors: Sequence[ScopeInterceptor]) -> None:
        self._interceptors = tuple(interceptors)
        # method -> (the registered handler, the composed one). Bounded by the registered
        # methods: an unknown method has no handler and is not kept.
        self._composed: dict[str, tuple[Any, Any]] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._composed.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        composed = compose(method, handler, self._interceptors)
        # Two calls composing the same method at once both store an equal handler: harmless.
        self._composed[method] = (handler, composed)
        return composed


def compose(full_name: str, handler: Any, interceptors: Sequence[ScopeInterceptor]) -> Any:
    """Returns `handler` with the interceptors that apply to the method run around each call."""
    if is_non_blocking(handler):
        # Health.Watch: public infrastructure that needs no auth, database or error mapping.
        return handler
    method = method_info(full_name, handler.request_streaming, handler.response_streaming)
    steps = tuple(i for i in interceptors if i.applies_to(method))
    deserialize = handler.request_deserializer
    for step in reversed(steps):
        deserialize = step.request_deserializer(deserialize)
    if handler.response_streaming:
        wrap = _streamed_response(method, steps, handler.request_streaming)
    else:
        wrap = _unary_response(method, steps, handler.request_streaming)
    return rebuilt(handler, wrap, request_deserializer=deserialize)


def _enter(steps: Sequence[ScopeInterceptor], call: Call) -> tuple[int, BaseException | None]:
    """Enters the steps in order; returns how many were entered, and the error of the one that
    raised, if one did (the call then fails with it once the entered ones have left)."""
    for index, step in enumerate(steps):
        try:
            step.enter(call)
        except BaseException as exc:
            return index, exc
    return len(steps), None


def _exit(
    steps: Sequence[ScopeInterceptor], entered: int, call: Call, error: BaseException | None
) -> None:
    """Leaves the first `entered` steps, innermost first; raises the error the call ends with."""
    while entered:
        entered -= 1
        try:
            steps[entered].exit(call, error)
        except BaseException as replaced:  # an exit may replace the error (the error mapping)
            error = replaced
    if error is not None:
        raise error


def _requests(
    observers: Sequence[ScopeInterceptor], call: Call, requests: Iterator[Any]
) -> Iterator[Any]:
    for request in requests:
        for step in observers:
            step.message_received(call, request)
        yield request


def _unary_response(
    method: MethodInfo, steps: Sequence[ScopeInterceptor], request_streaming: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    observers = tuple(step for step in steps if step.observes_messages)

    def wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            call = Call(method, context, None if request_streaming else request)
            entered, error = _enter(steps, call)
            response = None
            if error is None:
                try:
                    if request_streaming:
                        request = _requests(observers, call, request)
                    response = inner(request, context)
                    for step in observers:
                        step.message_sent(call)
                except BaseException as exc:
                    error = exc
            _exit(steps, entered, call, error)
            return response

        return behavior

    return wrap


def _streamed_response(
    method: MethodInfo, steps: Sequence[ScopeInterceptor], request_streaming: bool
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    observers = tuple(step for step in steps if step.observes_messages)

    def wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = Call(method, context, None if request_streaming else request)
            entered, error = _enter(steps, call)
            if error is None:
                try:
                    if request_streaming:
                        request = _requests(observers, call, request)
                    for response in inner(request, context):
                        for step in observers:
                            step.message_sent(call)
                        yield response
                except BaseException as exc:  # GeneratorExit too: the client went away
                    error = exc
            _exit(steps, entered, call, error)

        return behavior

    return wrap
