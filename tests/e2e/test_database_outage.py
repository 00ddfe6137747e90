"""PostgreSQL going away and coming back, through a real TCP proxy the test can cut."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from storefront.v1 import identity_service_pb2 as pb
from storefront_client import error_info

from server.domain.principal import Role
from tests.e2e.conftest import Running


class TcpProxy:
    """Forwards a local port to PostgreSQL until cut; can listen again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stops listening and drops every forwarded connection."""
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would not.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(e2e_database_url: tuple[Path, str]) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the module's PostgreSQL database, and the URL that goes through it."""
    _, url = e2e_database_url
    if url.startswith("sqlite"):
        pytest.skip("an outage through a TCP proxy needs a networked database")
    parts = urlsplit(url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.start()
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    yield proxy, urlunsplit(parts._replace(netloc=netloc))
    proxy.cut()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Polls `condition` until it holds or `seconds` pass; there is no event to wait on."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_database_outage_is_unavailable_and_not_serving_then_recovers(
    server_factory: Callable[..., Running], proxy: tuple[TcpProxy, str]
) -> None:
    tcp, url = proxy
    running = server_factory(database_url=url, health_check_seconds=0.1)
    client = running.login(Role.CUSTOMER)
    health = health_pb2_grpc.HealthStub(running.channel())

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="")).status

    assert status() == health_pb2.HealthCheckResponse.SERVING

    tcp.cut()
    with pytest.raises(grpc.RpcError) as caught:
        client.identity.GetCurrentUser(pb.GetCurrentUserRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value)[0] == "DATABASE_UNAVAILABLE"
    assert "psycopg" not in (caught.value.details() or "")
    assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)

    tcp.start()
    assert wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING)
    me = client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
    assert me.role
