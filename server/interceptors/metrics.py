"""Prometheus metrics with go-grpc-middleware's names, labels and label values."""

from __future__ import annotations

from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.interceptors.base import Call, MethodInfo, ScopeInterceptor, go_code_name

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# go-grpc-middleware's default buckets (prometheus.DefBuckets), in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The RPC metrics of one server, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            _LABELS,
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            _LABELS,
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _LABELS,
            buckets=_BUCKETS,
            registry=registry,
        )


class _MethodSeries:
    """One method's label children, looked up once instead of on every call."""

    def __init__(self, metrics: ServerMetrics, method: MethodInfo) -> None:
        self._metrics = metrics
        self.labels = (method.rpc_type, method.service, method.method)
        self.started = metrics.started.labels(*self.labels)
        self.received = metrics.msg_received.labels(*self.labels)
        self.sent = metrics.msg_sent.labels(*self.labels)
        self.seconds = metrics.handling_seconds.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        """The handled-calls counter of `code`."""
        child = self._handled.get(code)
        if child is None:
            child = self._metrics.handled.labels(*self.labels, go_code_name(code))
            self._handled[code] = child
        return child


class MetricsInterceptor(ScopeInterceptor):
    """Counts started and handled RPCs by code, and messages each way, and times them."""

    observes_messages = True

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self._series: dict[str, _MethodSeries] = {}  # by method: bounded by the registered ones

    def _of(self, method: MethodInfo) -> _MethodSeries:
        series = self._series.get(method.full_name)
        if series is None:
            series = _MethodSeries(self.metrics, method)
            self._series[method.full_name] = series
        return series

    def enter(self, call: Call) -> None:
        series = self._of(call.method)
        series.started.inc()
        if call.method.rpc_type in _UNARY_REQUESTS:
            series.received.inc()

    def message_received(self, call: Call, message: Any) -> None:
        self._of(call.method).received.inc()

    def message_sent(self, call: Call) -> None:
        self._of(call.method).sent.inc()

    def exit(self, call: Call, error: BaseException | None) -> None:
        code, seconds = call.outcome(error)
        series = self._of(call.method)
        series.handled(code).inc()
        series.seconds.observe(seconds)


_UNARY_REQUESTS = frozenset({"unary", "server_stream"})
