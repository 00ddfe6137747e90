"""`storefront serve --workers 2` as operators run it: a supervisor and its workers, on SQLite.

Which worker holds a connection is read from /proc (the server side of each TCP connection to
the gRPC port belongs to one worker's file descriptors), so the API exposes nothing for it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from storefront.v1 import catalog_service_pb2 as catalog_pb
from storefront_client import StorefrontClient

from tests.e2e.test_catalog_service import product
from tests.e2e.test_cli import Serving, cli_env, log_records, storefront

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")

SERVING = "storefront is serving gRPC on "
WAIT_SECONDS = 20.0  # upper bound for any wait; the tests normally finish far sooner
ServingStatus = health_pb2.HealthCheckResponse
_LISTEN, _ESTABLISHED = "0A", "01"


def poll(condition: Callable[[], bool], *, timeout: float = WAIT_SECONDS) -> bool:
    """Returns True as soon as `condition()` holds, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


class Supervised(Serving):
    """`storefront serve --workers N` in its own session, its stderr collected line by line."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.env = env
        self.port = int(env["STOREFRONT_GRPC_ADDRESS"].rpartition(":")[2])
        super().__init__(env, "--workers", str(workers), own_session=True)

    def wait_for(self, text: str, timeout: float = WAIT_SECONDS) -> str:
        """Returns the first stderr line containing `text`; fails after `timeout` seconds."""
        return super().wait_for(text, timeout)

    def exit_code(self) -> int:
        code = self.process.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=WAIT_SECONDS)
        return code

    def workers(self) -> set[int]:
        """The supervisor's children that listen on the gRPC port."""
        listening = tcp_inodes(self.port, _LISTEN)
        return {pid for pid in children(self.process.pid) if socket_inodes(pid) & listening}

    def answering(self) -> set[int]:
        """The workers holding the server side of at least one connection to the gRPC port."""
        connected = tcp_inodes(self.port, _ESTABLISHED)
        return {pid for pid in self.workers() if socket_inodes(pid) & connected}

    def kill(self) -> None:
        """Kills the supervisor and every process of its session."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT_SECONDS)
        self._reader.join(timeout=WAIT_SECONDS)


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(int(match.group(1)))
    return inodes


def tcp_inodes(local_port: int, state: str) -> set[int]:
    """Inodes of the sockets in `state` whose local port is `local_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == local_port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def fresh_channel(port: int) -> grpc.Channel:
    """A channel with its own connection (no subchannel shared with other channels)."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest()
    status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    return status


def answers(port: int) -> bool:
    """Whether a call on a new connection is answered SERVING."""
    with fresh_channel(port) as channel:
        try:
            return health(channel) == ServingStatus.SERVING
        except grpc.RpcError:
            return False


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def handled(metrics_address: str) -> dict[tuple[str, str, str], float]:
    """grpc_server_handled_total on /metrics by (service, method, code)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.labels["grpc_service"], s.labels["grpc_method"], s.labels["grpc_code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "grpc_server_handled_total"
    }


def answering_workers(server: Supervised, *, connections: int) -> set[int]:
    """Makes a call on each of `connections` new connections; returns the workers holding them."""
    channels = [fresh_channel(server.port) for _ in range(connections)]
    try:
        for channel in channels:
            assert health(channel) == ServingStatus.SERVING
        return server.answering()
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    """Migrates a SQLite data dir and starts supervisors on it; kills them at the end."""
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    started: list[Supervised] = []

    def _start(**variables: str) -> Supervised:
        supervised = Supervised(cli_env(tmp_path, **variables))
        started.append(supervised)
        supervised.wait_for(SERVING)
        return supervised

    yield _start
    for supervised in started:
        supervised.kill()


def test_calls_from_many_channels_reach_every_worker_and_are_counted_once(
    start: Callable[..., Supervised],
) -> None:
    server = start()
    workers = server.workers()
    assert len(workers) == 2
    # SO_REUSEPORT spreads connections by a hash: 24 all on one of 2 workers is 2 in 2**24.
    assert answering_workers(server, connections=24) == workers
    counted = handled(server.env["STOREFRONT_METRICS_ADDRESS"])
    # One endpoint sums every worker; the names are those of a single process.
    assert counted[("grpc.health.v1.Health", "Check", "OK")] == 24


def test_a_long_lived_connection_is_aged_out_so_that_clients_spread(
    start: Callable[..., Supervised],
) -> None:
    server = start(STOREFRONT_MAX_CONNECTION_AGE_SECONDS="0.5")
    with fresh_channel(server.port) as channel:
        assert health(channel) == ServingStatus.SERVING
        first = tcp_inodes(server.port, _ESTABLISHED)
        assert len(first) == 1
        # GOAWAY after the age: the same channel's next calls go over a new connection.
        assert poll(
            lambda: (
                health(channel) == ServingStatus.SERVING
                and bool(tcp_inodes(server.port, _ESTABLISHED) - first)
            )
        )


def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(
    start: Callable[..., Supervised],
) -> None:
    server = start()
    before = server.workers()
    victim, survivor = sorted(before)
    os.kill(victim, signal.SIGKILL)
    assert poll(lambda: victim not in children(server.process.pid))
    # Until the replacement serves, the kernel hands every new connection to the survivor.
    assert all(answers(server.port) for _ in range(8))
    server.wait_for("replacing it")
    server.wait_for(" serving")
    after = server.workers()
    assert len(after) == 2 and survivor in after and victim not in after
    assert answering_workers(server, connections=24) == after
    assert server.process.poll() is None


@pytest.mark.parametrize("variable", ["STOREFRONT_GRPC_ADDRESS", "STOREFRONT_METRICS_ADDRESS"])
def test_a_worker_that_cannot_boot_stops_the_supervisor_with_its_line(
    tmp_path: Path, variable: str
) -> None:
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = storefront("serve", "--workers", "2", env=cli_env(tmp_path, **{variable: address}))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    records = log_records(result.stderr)
    message = str(records[-1]["msg"])
    assert message.startswith(f"configuration error: {variable}: cannot listen on")
    assert address in message
    assert sum("configuration error:" in str(r["msg"]) for r in records) == 1


@pytest.mark.parametrize(
    ("args", "variables", "expected"),
    [
        (["--workers", "2"], {"STOREFRONT_GRPC_ADDRESS": "127.0.0.1:0"}, "several workers"),
        ([], {"STOREFRONT_WORKERS": "many"}, "STOREFRONT_WORKERS: expected an integer"),
    ],
    ids=["port-0", "bad-count"],
)
def test_a_bad_worker_setting_exits_2_with_one_line(
    tmp_path: Path, args: list[str], variables: dict[str, str], expected: str
) -> None:
    assert storefront("migrate", env=cli_env(tmp_path)).returncode == 0
    result = storefront("serve", *args, env=cli_env(tmp_path, **variables))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_sigterm_drains_every_worker_lets_calls_finish_and_exits_0(
    tmp_path: Path, start: Callable[..., Supervised]
) -> None:
    created = storefront("create-admin", "--email", "ops@example.com", env=cli_env(tmp_path))
    password = re.search(r"password \(shown once\): (\S+)", created.stdout)
    assert password, created.stdout + created.stderr
    server = start(STOREFRONT_DRAIN_SECONDS="2", STOREFRONT_SHUTDOWN_GRACE_SECONDS="10")
    workers = server.workers()

    first_sent, release = threading.Event(), threading.Event()

    def rows() -> Iterator[catalog_pb.ImportProductsRequest]:
        yield catalog_pb.ImportProductsRequest(product=product("DR-0", "Drained 0"))
        first_sent.set()
        release.wait(WAIT_SECONDS)
        yield catalog_pb.ImportProductsRequest(product=product("DR-1", "Drained 1"))

    with StorefrontClient(fresh_channel(server.port)) as client, ThreadPoolExecutor(1) as pool:
        client.login("ops@example.com", password.group(1))
        in_flight = pool.submit(client.catalog.ImportProducts, rows())
        assert first_sent.wait(WAIT_SECONDS)
        server.process.send_signal(signal.SIGTERM)
        # Health first: the worker holding the call reports NOT_SERVING during the drain period.
        assert poll(lambda: health(client.channel) == ServingStatus.NOT_SERVING)
        # Then every worker stops accepting; the call in flight still finishes.
        assert poll(lambda: refuses_connections(server.port))
        release.set()
        assert in_flight.result(timeout=WAIT_SECONDS).created_count == 2

    assert server.exit_code() == 0
    log = "".join(server.stderr)
    assert "Traceback" not in log
    assert "signal SIGTERM: draining 2 workers" in log
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))  # the port is free again
