"""The interceptor chain as one grpc interceptor that builds each method's handler once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc


class InterceptorChain(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs `interceptors` (the first outermost), as grpc would with the list, but composes a
    method's handler once and hands out the same one on every later call.

    grpc asks each interceptor again on every call, and each of ours wraps the handler anew
    (closures, a new RpcMethodHandler) although the result depends on the method alone; that
    rebuilding was a measurable share of each call's CPU. So an interceptor in the chain must
    not look at anything in `handler_call_details` but the method (they look at the call's
    metadata when it runs, through the context).
    """

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
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
        composed = self._compose(0, handler, handler_call_details)
        # Two calls composing the same method at once both store an equal handler: harmless.
        self._composed[method] = (handler, composed)
        return composed

    def _compose(self, index: int, handler: Any, handler_call_details: Any) -> Any:
        if index == len(self._interceptors):
            return handler
        return self._interceptors[index].intercept_service(
            lambda details: self._compose(index + 1, handler, details), handler_call_details
        )
