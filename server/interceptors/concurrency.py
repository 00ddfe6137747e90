"""The cap on unary calls in progress, apart from the streams (which have their own cap)."""

from __future__ import annotations

import threading

from server.errors import ResourceExhausted
from server.interceptors.base import Call, MethodInfo, ScopeInterceptor


class UnaryCapInterceptor(ScopeInterceptor):
    """Refuses a call beyond `limit` calls in progress with RESOURCE_EXHAUSTED (SERVER_BUSY).

    grpc's own cap (maximum_concurrent_rpcs) is set to this limit plus the stream slots, so open
    streams never use up what unary calls are admitted with; this one keeps unary calls to
    their share. Server streams pass: their slots are counted where they are served.
    """

    def __init__(self, limit: int) -> None:
        self._free = threading.BoundedSemaphore(limit)

    def applies_to(self, method: MethodInfo) -> bool:
        return method.rpc_type != "server_stream"

    def enter(self, call: Call) -> None:
        if not self._free.acquire(blocking=False):
            raise ResourceExhausted(
                "The server is at its limit of calls in progress; retry shortly.",
                reason="SERVER_BUSY",
                retry_delay_seconds=0.1,
            )

    def exit(self, call: Call, error: BaseException | None) -> None:
        self._free.release()
