"""The one wrapper behind every interceptor, on all four RPC kinds, on a real local server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from prometheus_client import CollectorRegistry

from server.interceptors.base import Call, MethodInfo, ScopeInterceptor
from server.interceptors.chain import InterceptorChain
from server.interceptors.metrics import MetricsInterceptor, ServerMetrics

SERVICE = "test.v1.Echo"


class Recorder(ScopeInterceptor):
    """Records scope entry/exit around each call and what the handler did inside it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def enter(self, call: Call) -> None:
        self.events.append(f"enter {call.method.rpc_type}")

    def exit(self, call: Call, error: BaseException | None) -> None:
        self.events.append(f"exit {call.method.rpc_type}")


@pytest.fixture
def echo() -> Iterator[tuple[grpc.Channel, ServerMetrics, list[str]]]:
    events: list[str] = []

    def unary(request: bytes, context: object) -> bytes:
        events.append("handler")
        return request

    def server_stream(request: bytes, context: object) -> Iterator[bytes]:
        for i in range(3):
            events.append(f"yield {i}")
            yield request

    def client_stream(requests: Iterator[bytes], context: object) -> bytes:
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: object) -> Iterator[bytes]:
        yield from requests

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    metrics = ServerMetrics(CollectorRegistry())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[MetricsInterceptor(metrics), Recorder(events)],
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, metrics, events
    channel.close()
    server.stop(0)


def counted(metrics: ServerMetrics, name: str, rpc_type: str, method: str) -> float:
    value = metrics.registry.get_sample_value(
        name, {"grpc_type": rpc_type, "grpc_service": SERVICE, "grpc_method": method}
    )
    return value or 0.0


def test_unary_call_is_wrapped_and_counted(echo) -> None:
    channel, metrics, events = echo
    assert channel.unary_unary(f"/{SERVICE}/Unary")(b"hi") == b"hi"
    assert events == ["enter unary", "handler", "exit unary"]
    assert counted(metrics, "grpc_server_msg_received_total", "unary", "Unary") == 1
    assert counted(metrics, "grpc_server_msg_sent_total", "unary", "Unary") == 1
    assert (
        metrics.registry.get_sample_value(
            "grpc_server_handled_total",
            {
                "grpc_type": "unary",
                "grpc_service": SERVICE,
                "grpc_method": "Unary",
                "grpc_code": "OK",
            },
        )
        == 1
    )


def test_the_scope_spans_the_whole_response_stream(echo) -> None:
    channel, metrics, events = echo
    assert list(channel.unary_stream(f"/{SERVICE}/ServerStream")(b"x")) == [b"x"] * 3
    assert events == ["enter server_stream", "yield 0", "yield 1", "yield 2", "exit server_stream"]
    assert counted(metrics, "grpc_server_msg_sent_total", "server_stream", "ServerStream") == 3


def test_request_streams_are_counted_per_message(echo) -> None:
    channel, metrics, _ = echo
    assert channel.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"a", b"b"])) == b"ab"
    assert list(channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"1", b"2", b"3"]))) == [
        b"1",
        b"2",
        b"3",
    ]
    assert counted(metrics, "grpc_server_msg_received_total", "client_stream", "ClientStream") == 2
    assert counted(metrics, "grpc_server_msg_received_total", "bidi_stream", "Bidi") == 3
    assert counted(metrics, "grpc_server_msg_sent_total", "bidi_stream", "Bidi") == 3


class Counting(Recorder):
    """A Recorder that also counts how often the chain asks whether it applies to a method."""

    def __init__(self, events: list[str], name: str) -> None:
        super().__init__(events)
        self.name = name
        self.wraps = 0

    def applies_to(self, method: MethodInfo) -> bool:
        self.wraps += 1
        return True

    def enter(self, call: Call) -> None:
        self.events.append(f"{self.name} in")

    def exit(self, call: Call, error: BaseException | None) -> None:
        self.events.append(f"{self.name} out")


def test_the_chain_composes_each_method_once_and_keeps_the_order() -> None:
    events: list[str] = []
    outer, inner = Counting(events, "outer"), Counting(events, "inner")

    def unary(request: bytes, context: object) -> bytes:
        events.append("handler")
        return request

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Other": grpc.unary_unary_rpc_method_handler(unary),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        interceptors=[InterceptorChain([outer, inner])],
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ("Unary", "Unary", "Unary", "Other"):
                assert channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=5) == b"x"
            with pytest.raises(grpc.RpcError) as unknown:
                channel.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=5)
    finally:
        server.stop(0)

    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    # Wrapped once per method (Unary, Other; an unknown one has nothing to wrap), but run around
    # every call, the first interceptor outermost.
    assert (outer.wraps, inner.wraps) == (2, 2)
    assert events == ["outer in", "inner in", "handler", "inner out", "outer out"] * 4
