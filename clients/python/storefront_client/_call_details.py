"""Rewritable call details and a base for interceptors that only rewrite them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

Metadata = Sequence[tuple[str, str | bytes]]


@dataclasses.dataclass(frozen=True)
class CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]  # grpc ships no type stubs
    """A grpc.ClientCallDetails whose fields can be replaced."""

    method: str
    timeout: float | None
    metadata: Metadata | None
    credentials: Any
    wait_for_ready: bool | None
    compression: Any

    @classmethod
    def of(cls, details: Any) -> CallDetails:
        """Returns a copy of any grpc.ClientCallDetails."""
        if isinstance(details, cls):
            return details
        return cls(
            method=details.method,
            timeout=details.timeout,
            metadata=getattr(details, "metadata", None),
            credentials=getattr(details, "credentials", None),
            wait_for_ready=getattr(details, "wait_for_ready", None),
            compression=getattr(details, "compression", None),
        )

    def replace(self, **changes: Any) -> CallDetails:
        """Returns a copy with the given fields changed."""
        return dataclasses.replace(self, **changes)


class CallDetailsInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Applies one call-details rewrite to all four kinds of call."""

    def rewrite(self, details: CallDetails) -> CallDetails:
        """Returns the details the call proceeds with."""
        raise NotImplementedError

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        """Rewrites a unary-unary call."""
        return continuation(self.rewrite(CallDetails.of(client_call_details)), request)

    def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        """Rewrites a unary-stream call."""
        return continuation(self.rewrite(CallDetails.of(client_call_details)), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[Any, Iterator[Any]], Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Rewrites a stream-unary call."""
        return continuation(self.rewrite(CallDetails.of(client_call_details)), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[Any, Iterator[Any]], Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Rewrites a stream-stream call."""
        return continuation(self.rewrite(CallDetails.of(client_call_details)), request_iterator)
