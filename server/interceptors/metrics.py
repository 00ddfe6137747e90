"""Prometheus metrics with go-grpc-middleware's names, labels and label values."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.interceptors.base import MethodInfo, ScopeInterceptor, call_outcome, go_code_name

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


class MetricsInterceptor(ScopeInterceptor):
    """Counts started and handled RPCs by code, and messages each way, and times them."""

    observes_messages = True

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def message_received(self, method: MethodInfo) -> None:
        self.metrics.msg_received.labels(method.rpc_type, method.service, method.method).inc()

    def message_sent(self, method: MethodInfo) -> None:
        self.metrics.msg_sent.labels(method.rpc_type, method.service, method.method).inc()

    @contextlib.contextmanager
    def scope(self, method: MethodInfo, context: grpc.ServicerContext) -> Iterator[None]:
        labels = (method.rpc_type, method.service, method.method)
        self.metrics.started.labels(*labels).inc()
        try:
            with call_outcome(context) as outcome:
                yield
        finally:
            self.metrics.handled.labels(*labels, go_code_name(outcome.code)).inc()
            self.metrics.handling_seconds.labels(*labels).observe(outcome.seconds)
