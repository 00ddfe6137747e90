"""grpc.health.v1 service whose Watch streams hold no worker thread and no lock while sending."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

Send = Callable[[health_pb2.HealthCheckResponse | None], None]


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health for "" and each service; NOT_SERVING for good once shutdown starts.

    grpcio's own servicer sends watch updates while holding its lock, and each send waits for
    grpc's event thread, which may at that moment need the same lock to drop a disconnected
    watcher: stop() then hangs. Here state changes under `_state_lock` only, and sends happen
    under `_send_lock` alone (one sender at a time, so a watcher never sees updates out of
    order); a disconnect only takes `_state_lock`.
    """

    def __init__(self) -> None:
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._status: dict[str, Any] = {"": SERVING}
        self._watchers: dict[str, dict[int, Send]] = {}
        self._last_sent: dict[int, Any] = {}
        self._shutting_down = False

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._state_lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    def List(
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._state_lock:
            statuses = dict(self._status)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Send | None = None,
    ) -> None:
        assert send_response_callback is not None  # always given to non-blocking handlers
        service = request.service
        watcher_id = id(send_response_callback)
        with self._state_lock:
            self._watchers.setdefault(service, {})[watcher_id] = send_response_callback

        def forget() -> None:
            with self._state_lock:
                self._watchers.get(service, {}).pop(watcher_id, None)
                self._last_sent.pop(watcher_id, None)

        context.add_callback(forget)
        self._publish(service)

    # grpc calls Watch with a send callback, on no worker thread, when this attribute is set.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    def set(self, service: str, status: Any) -> None:
        """Sets a service's status and tells its watchers; ignored once shutdown has started."""
        with self._state_lock:
            if self._shutting_down:
                return
            self._status[service] = status
        self._publish(service)

    def enter_graceful_shutdown(self) -> None:
        """Marks every service NOT_SERVING for good and tells every watcher."""
        with self._state_lock:
            self._shutting_down = True
            for service in self._status:
                self._status[service] = NOT_SERVING
            services = list(self._watchers)
        for service in services:
            self._publish(service)

    def _publish(self, service: str) -> None:
        with self._send_lock:
            with self._state_lock:
                status = self._status.get(service, SERVICE_UNKNOWN)
                due = [
                    (watcher_id, send)
                    for watcher_id, send in self._watchers.get(service, {}).items()
                    if self._last_sent.get(watcher_id) != status
                ]
                for watcher_id, _ in due:
                    self._last_sent[watcher_id] = status
            for _, send in due:
                send(health_pb2.HealthCheckResponse(status=status))
