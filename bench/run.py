"""`make bench`: storefront RPCs against a bare gRPC echo ceiling, measured in one run.

Migrates and seeds a SQLite database in a temporary directory, starts `storefront serve` and
bench/echo_server.py (pinned to CPU 0 when there are two CPUs and taskset), then runs
bench/load.py (pinned to CPU 1) once per RPC. The PostgreSQL rows do the same against a fresh
database created on --postgres-url (and dropped afterwards); PostgreSQL's own processes are not
pinned. Then the outbox events tables (bench/events_bench.py: dispatcher throughput, webhook
delivery lag under checkouts, open streams; --no-events skips them), and the reports table
(bench/reports_bench.py: each ReportService call over 100,000 orders, with and without the report
indexes; --no-reports skips it). Writes
bench/results/<UTC time>.json and .md and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from storefront.v1 import catalog_service_pb2, inventory_service_pb2
from storefront_client import StorefrontClient

BENCH = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a file (make bench): make `bench` and `deploy` importable
    sys.path.insert(0, str(BENCH.parent))
ROOT = BENCH.parent
STOREFRONT = Path(sys.executable).with_name("storefront")
SQLITE, POSTGRES = "sqlite", "postgres"
CHECKOUT = "CheckoutService.PlaceOrder (1 unit, EUR to DE, sandbox card; +1 untimed AddCartItem)"
# Rows in table order: (load.py workload, label, database); the first is the ceiling the others
# are compared with.
RPCS = (
    ("echo", "echo (bare grpcio ceiling)", SQLITE),
    ("ListSigningKeys", "IdentityService.ListSigningKeys (public, no DB)", SQLITE),
    ("GetCurrentUser", "IdentityService.GetCurrentUser (token + 1 query)", SQLITE),
    ("GetProduct", "CatalogService.GetProduct (random seeded ids)", SQLITE),
    ("ListProducts", "CatalogService.ListProducts (page_size 50)", SQLITE),
    ("SearchProducts", "CatalogService.SearchProducts (8 queries)", SQLITE),
    ("PlaceOrder", f"{CHECKOUT}, SQLite", SQLITE),
    ("GetCurrentUser", "IdentityService.GetCurrentUser (token + 1 query), PostgreSQL", POSTGRES),
    ("PlaceOrder", f"{CHECKOUT}, PostgreSQL", POSTGRES),
)
CUSTOMER_PASSWORD = "bench customer password"  # noqa: S105 (throwaway accounts in a temp db)
CHECKOUT_STOCK = 1_000_000
WORKER_THREADS = 16  # STOREFRONT_WORKER_THREADS' default; the echo server uses the same
MAX_CONCURRENT_RPCS = 64  # STOREFRONT_MAX_CONCURRENT_RPCS' default
START_SECONDS = 30.0


def free_port() -> int:
    """Returns a TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinning(enabled: bool) -> tuple[list[str], list[str]]:
    """Returns the command prefixes for the servers (CPU 0) and the load generator (CPU 1)."""
    taskset = shutil.which("taskset")
    if not enabled or taskset is None or len(os.sched_getaffinity(0)) < 2:
        return [], []
    return [taskset, "-c", "0"], [taskset, "-c", "1"]


def process_tree(pid: int) -> list[int]:
    """Returns `pid` and its living descendants (`serve --workers N`: the supervisor, its
    workers and its metrics child), from /proc."""
    tree, index = [pid], 0
    while index < len(tree):
        for children in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                tree.extend(int(child) for child in children.read_text().split())
        index += 1
    return tree


def peak_rss_mib(pid: int) -> float:
    """Returns the largest peak resident set size (VmHWM) in MiB among the process and its
    descendants: with `--workers N`, that of the biggest worker."""
    peak = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def reset_peak_rss(pid: int) -> None:
    """Resets the peak RSS (VmHWM) of the process and its descendants, so that setup (e.g. the
    argon2 hashes of registering the checkout customers) does not count as what the RPCs need."""
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


def cpu_model() -> str:
    """Returns the first CPU model name in /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """Returns the commit the working tree is on, with "+dirty" when it has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def storefront_env(data_dir: Path, address: str) -> dict[str, str]:
    """Returns the environment for `storefront` commands: defaults except where, how loud and the
    rate limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    env.update(
        STOREFRONT_DATA_DIR=str(data_dir),
        STOREFRONT_GRPC_ADDRESS=address,
        STOREFRONT_METRICS_ADDRESS="",
        STOREFRONT_SHUTDOWN_GRACE_SECONDS="2",
        # One benchmark client is one caller: at the default limits it would measure refusals.
        STOREFRONT_RATE_LIMIT_READ="100000000/minute",
        STOREFRONT_RATE_LIMIT_WRITE="100000000/minute",
        STOREFRONT_RATE_LIMIT_CHECKOUT="100000000/minute",
        STOREFRONT_RATE_LIMIT_SIGN_IN="100000000/minute",
    )
    return env


def run_command(args: Sequence[str], env: dict[str, str]) -> None:
    """Runs a setup command; exits with its output if it fails."""
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


def wait_until_serving(target: str, process: subprocess.Popen[Any], log: Path) -> None:
    """Waits for the health check to report SERVING; exits if the server dies or is too slow."""
    deadline = time.monotonic() + START_SECONDS
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                sys.exit(f"bench: the server exited:\n{log.read_text()}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    sys.exit(f"bench: no SERVING from {target} within {START_SECONDS}s:\n{log.read_text()}")


def wait_for_echo(process: subprocess.Popen[str]) -> int:
    """Returns the echo server's port from its first line of output."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("echo serving on "):
        sys.exit(f"bench: the echo server did not start: {line!r}")
    return int(line.split()[-1])


@contextmanager
def running(args: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """Starts a process and stops it (SIGTERM, then SIGKILL) on the way out."""
    process = subprocess.Popen(args, **popen)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def demo_admin(data_dir: Path) -> tuple[str, str]:
    """Returns the email and password `storefront seed` wrote."""
    fields = dict(
        line.split(": ", 1)
        for line in (data_dir / "demo-admin-credentials.txt").read_text().splitlines()
        if line
    )
    return fields["email"], fields["password"]


def seeded_product_ids(client: StorefrontClient) -> list[str]:
    """Returns the ids of the active products in the seeded database, sorted."""
    ids: list[str] = []
    token = ""
    while True:
        page = client.catalog.ListProducts(
            catalog_service_pb2.ListProductsRequest(page_size=100, page_token=token)
        )
        ids.extend(product.id for product in page.products)
        token = page.next_page_token
        if not token:
            return sorted(ids)


@dataclass
class Prepared:
    """What the workloads need from a seeded server."""

    admin_token: str
    customer_tokens: list[str]
    product_ids: list[str]


def prepare(target: str, data_dir: Path, customers: int, stocked: int = 1) -> Prepared:
    """Signs in the demo admin, stocks the first `stocked` products for checkouts and registers
    one customer per caller (each with their own cart)."""
    with StorefrontClient(target) as admin:
        admin.login(*demo_admin(data_dir))
        product_ids = seeded_product_ids(admin)
        for product_id in product_ids[:stocked]:
            admin.inventory.AdjustStock(
                inventory_service_pb2.AdjustStockRequest(
                    product_id=product_id,
                    delta=CHECKOUT_STOCK,
                    reason="bench checkouts",
                    request_id=str(uuid.uuid4()),
                )
            )
        session = admin.session
        assert session is not None
        admin_token = session.access_token

    def customer_token(index: int) -> str:
        with StorefrontClient(target) as client:
            email = f"bench-{index}-{uuid.uuid4().hex[:8]}@example.com"
            client.register(email, CUSTOMER_PASSWORD, f"Bench {index}")
            client.login(email, CUSTOMER_PASSWORD)
            assert client.session is not None
            return client.session.access_token

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(customer_token, range(customers)))
    return Prepared(admin_token, tokens, product_ids)


def redacted(url: str) -> str:
    """Returns `url` without its password, for reports."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def postgres_database_url(admin_url: str, name: str) -> str:
    """Returns `admin_url` pointing at database `name` instead."""
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Creates a fresh database on the server of `admin_url`, yields its URL, then drops it."""
    import psycopg

    name = f"storefront_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_database_url(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def storefront_server(
    prefix: list[str],
    data_dir: Path,
    database_url: str | None,
    *serve_args: str,
    variables: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[Any], Path]]:
    """Migrates and seeds the database, serves it (`storefront serve *serve_args`, with the
    extra STOREFRONT_* `variables`); yields (target, process, log file)."""
    env = storefront_env(data_dir, "127.0.0.1:0")
    if database_url:
        env["STOREFRONT_DATABASE_URL"] = database_url
    run_command([str(STOREFRONT), "migrate"], env)
    run_command([str(STOREFRONT), "seed"], env)
    with serving(prefix, data_dir, database_url, *serve_args, variables=variables) as served:
        yield served


@contextmanager
def serving(
    prefix: list[str],
    data_dir: Path,
    database_url: str | None,
    *serve_args: str,
    variables: Mapping[str, str] | None = None,
    log_name: str = "server.log",
) -> Iterator[tuple[str, subprocess.Popen[Any], Path]]:
    """Serves an already migrated database until the block ends; yields (target, process,
    log file <data_dir>/<log_name>)."""
    target = f"127.0.0.1:{free_port()}"
    env = storefront_env(data_dir, target)
    if database_url:
        env["STOREFRONT_DATABASE_URL"] = database_url
    env.update(variables or {})
    server_log = data_dir / log_name
    with (
        server_log.open("w") as log,
        running(
            [*prefix, str(STOREFRONT), "serve", *serve_args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,  # the JSON access log, one line per RPC, as in production
        ) as server,
    ):
        wait_until_serving(target, server, server_log)
        yield target, server, server_log


def measure(
    prefix: list[str],
    rpc: str,
    target: str,
    server_pid: int | Sequence[int],
    options: argparse.Namespace,
    ids_file: Path,
    token: str,
    channels: int = 1,
    *,
    proxy_pids: Sequence[int] = (),
    product_per_caller: bool = False,
) -> dict[str, Any]:
    """Runs bench/load.py for one RPC against the server process (or several: replicas) and
    returns its figures plus the peak RSS of the biggest server process."""
    servers = [server_pid] if isinstance(server_pid, int) else list(server_pid)
    measured = [member for pid in servers for member in process_tree(pid)]
    result = subprocess.run(
        [
            *prefix,
            sys.executable,
            str(BENCH / "load.py"),
            f"--target={target}",
            f"--rpc={rpc}",
            f"--server-pids={','.join(map(str, measured))}",
            f"--proxy-pids={','.join(map(str, proxy_pids))}",
            f"--channels={channels}",
            f"--concurrency={options.concurrency}",
            f"--duration={options.duration}",
            f"--warmup={options.warmup}",
            f"--product-ids={ids_file}",
            *(["--product-per-caller"] if product_per_caller else []),
        ],
        env={**os.environ, "BENCH_ACCESS_TOKEN": token},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"bench: load.py --rpc={rpc} failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout)
    figures["server_peak_rss_mib"] = max(peak_rss_mib(pid) for pid in servers)
    return figures


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Returns the results as a Markdown table."""
    lines = [
        "| RPC | calls/s | vs echo | p50 ms | p90 ms | p99 ms | errors "
        "| server CPU ms/call | server CPU | client CPU | server peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        latency = row["latency_ms"]
        errors = ", ".join(f"{n} {code}" for code, n in sorted(row["errors"].items())) or "0"
        per_call = row["server_cpu_ms_per_call"]
        lines.append(
            f"| {row['label']} | {row['throughput_per_s']:,.0f} | {row['ratio_to_echo']:.0%} "
            f"| {latency['p50']:.2f} | {latency['p90']:.2f} | {latency['p99']:.2f} | {errors} "
            f"| {'-' if per_call is None else f'{per_call:.3f}'} "
            f"| {row['server_cpu_utilisation']:.0%} | {row['client_cpu_utilisation']:.0%} "
            f"| {row['server_peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


# Rows of the scaling table: the same RPC with 1 and with 2 worker processes, none pinned (the load
# generator shares the two CPUs), the callers spread over SCALING_CHANNELS connections.
SCALING_RPCS = ("GetProduct", "PlaceOrder")
SCALING_WORKERS = (1, 2)
SCALING_CHANNELS = 8


def measure_scaling(
    options: argparse.Namespace, tmp: Path, rpcs: Sequence[str]
) -> list[dict[str, Any]]:
    """Measures `rpcs` against `storefront serve --workers N` on SQLite for each N in
    SCALING_WORKERS; each row also gets its throughput and p99 relative to one worker's."""
    rows: list[dict[str, Any]] = []
    for workers in SCALING_WORKERS:
        data_dir = tmp / f"workers-{workers}"
        data_dir.mkdir()
        serve_args = ("--workers", str(workers))
        with storefront_server([], data_dir, None, *serve_args) as (target, server, _):
            prepared = prepare(target, data_dir, options.concurrency)
            reset_peak_rss(server.pid)
            ids_file = data_dir / "product-ids.txt"
            ids_file.write_text("\n".join(prepared.product_ids) + "\n")
            for rpc in rpcs:
                print(f"bench: {rpc} with --workers {workers} ...", file=sys.stderr, flush=True)
                tokens = prepared.customer_tokens if rpc == "PlaceOrder" else [prepared.admin_token]
                figures = measure(
                    [],
                    rpc,
                    target,
                    server.pid,
                    options,
                    ids_file,
                    ",".join(tokens),
                    channels=SCALING_CHANNELS,
                )
                rows.append({"rpc": rpc, "workers": workers, **figures})
    for row in rows:
        [one] = [r for r in rows if r["rpc"] == row["rpc"] and r["workers"] == 1]
        row["ratio_to_one_worker"] = row["throughput_per_s"] / (one["throughput_per_s"] or 1.0)
        row["p99_ratio_to_one_worker"] = row["latency_ms"]["p99"] / (
            one["latency_ms"]["p99"] or 1.0
        )
    return rows


def scaling_table(rows: list[dict[str, Any]]) -> str:
    """Returns the scaling rows as a Markdown table."""
    lines = [
        "| RPC (SQLite, not pinned) | workers | calls/s | vs 1 worker | p50 ms | p99 ms "
        "| p99 vs 1 worker | errors | server CPU ms/call | peak RSS MiB (biggest process) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        latency = row["latency_ms"]
        errors = ", ".join(f"{n} {code}" for code, n in sorted(row["errors"].items())) or "0"
        per_call = row["server_cpu_ms_per_call"]
        lines.append(
            f"| {row['rpc']} | {row['workers']} | {row['throughput_per_s']:,.0f} "
            f"| {row['ratio_to_one_worker']:.2f}x | {latency['p50']:.2f} | {latency['p99']:.2f} "
            f"| {row['p99_ratio_to_one_worker']:.2f}x | {errors} "
            f"| {'-' if per_call is None else f'{per_call:.3f}'} "
            f"| {row['server_peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def measure_replicas(options: argparse.Namespace, chosen: set[str]) -> list[dict[str, Any]]:
    """The 1 vs 3 replicas behind nginx rows (bench/cluster_bench.py), or none where they are
    not wanted or cannot run (no nginx, no PostgreSQL)."""
    if options.no_replicas or options.no_postgres:
        return []
    from bench.cluster_bench import RPCS as REPLICA_RPCS
    from bench.cluster_bench import cluster_rows
    from deploy import cluster

    rpcs = [rpc for rpc in REPLICA_RPCS if rpc in chosen]
    if not rpcs:
        return []
    if cluster.nginx_executable() is None:
        print("bench: no nginx, so no replica rows (Debian: nginx-light)", file=sys.stderr)
        return []
    return cluster_rows(
        postgres_url=options.postgres_url,
        concurrency=options.concurrency,
        duration=options.duration,
        warmup=options.warmup,
        rpcs=rpcs,
    )


def measure_events(
    options: argparse.Namespace, server_prefix: list[str], load_prefix: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The outbox events rows (bench/events_bench.py, at its default sizes) and those sizes, or
    none with --no-events."""
    if options.no_events:
        return [], {}
    from bench import events_bench

    sizes = events_bench.parser().parse_args([])
    rows = events_bench.events_rows(
        postgres_url=None if options.no_postgres else options.postgres_url,
        options=sizes,
        server_prefix=server_prefix,
        load_prefix=load_prefix,
    )
    return rows, events_bench.sizes_of(sizes)


def measure_reports(options: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The reports rows (bench/reports_bench.py, at its default sizes) and those sizes, or none
    with --no-reports."""
    if options.no_reports:
        return [], {}
    from bench import reports_bench

    sizes = reports_bench.parser().parse_args(
        [
            "--postgres-url",
            options.postgres_url,
            *(["--no-postgres"] if options.no_postgres else []),
        ]
    )
    return reports_bench.reports_rows(sizes), reports_bench.sizes_of(sizes)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and writes its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="callers in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per RPC")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per RPC")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--rpc",
        action="append",
        choices=sorted({name for name, _, _ in RPCS}),
        help="measure only these (repeatable); echo is always measured",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOREFRONT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where a throwaway database may be created (default: %(default)s)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL rows")
    parser.add_argument("--no-scaling", action="store_true", help="skip the --workers 1 vs 2 table")
    parser.add_argument(
        "--no-replicas",
        action="store_true",
        help="skip the 1 vs 3 replicas behind nginx table (skipped anyway without nginx)",
    )
    parser.add_argument(
        "--no-events",
        action="store_true",
        help="skip the outbox events tables (dispatcher throughput, delivery lag, open streams)",
    )
    parser.add_argument(
        "--no-reports",
        action="store_true",
        help="skip the reports table (ReportService over 100,000 orders, with and without indexes)",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    options = parser.parse_args(argv)
    chosen = {"echo", *(options.rpc or [name for name, _, _ in RPCS])}
    wanted = [
        (rpc, label, database)
        for rpc, label, database in RPCS
        if rpc in chosen and not (database == POSTGRES and options.no_postgres)
    ]
    server_prefix, load_prefix = pinning(not options.no_pin)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="storefront-bench-") as tmp,
        running(
            [
                *server_prefix,
                sys.executable,
                str(BENCH / "echo_server.py"),
                f"--worker-threads={WORKER_THREADS}",
                f"--max-concurrent-rpcs={MAX_CONCURRENT_RPCS}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        ) as echo,
    ):
        echo_target = f"127.0.0.1:{wait_for_echo(echo)}"
        for database in (SQLITE, POSTGRES):
            mine = [(rpc, label) for rpc, label, db in wanted if db == database]
            if not mine or (
                mine == [("echo", "echo (bare grpcio ceiling)")] and database != SQLITE
            ):
                continue
            data_dir = Path(tmp) / database
            data_dir.mkdir()
            with contextlib.ExitStack() as stack:
                url = None
                if database == POSTGRES:
                    url = stack.enter_context(postgres_database(options.postgres_url))
                target, server, _ = stack.enter_context(
                    storefront_server(server_prefix, data_dir, url)
                )
                prepared = prepare(target, data_dir, options.concurrency)
                reset_peak_rss(server.pid)
                ids_file = data_dir / "product-ids.txt"
                ids_file.write_text("\n".join(prepared.product_ids) + "\n")
                for rpc, label in mine:
                    print(f"bench: {label} ...", file=sys.stderr, flush=True)
                    if rpc == "echo":
                        where, pid = echo_target, echo.pid
                    else:
                        where, pid = target, server.pid
                    tokens = (
                        prepared.customer_tokens if rpc == "PlaceOrder" else [prepared.admin_token]
                    )
                    figures = measure(
                        load_prefix, rpc, where, pid, options, ids_file, ",".join(tokens)
                    )
                    rows.append({"label": label, "database": database, **figures})
        product_count = len(prepared.product_ids) if rows else 0
        scaling_rpcs = [rpc for rpc in SCALING_RPCS if rpc in chosen]
        scaling = [] if options.no_scaling else measure_scaling(options, Path(tmp), scaling_rpcs)
    replicas = measure_replicas(options, chosen)
    events, event_sizes = measure_events(options, server_prefix, load_prefix)
    reports, report_sizes = measure_reports(options)

    ceiling = rows[0]["throughput_per_s"] or 1.0
    for row in rows:
        row["ratio_to_echo"] = row["throughput_per_s"] / ceiling
    machine = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    report: dict[str, Any] = {
        "started": started.isoformat().replace("+00:00", "Z"),
        "command": " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "revision": git_revision(),
        "settings": {
            "concurrency": options.concurrency,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "pinned": bool(server_prefix),
            "databases": {
                SQLITE: "SQLite (WAL) in a temporary directory",
                POSTGRES: f"a throwaway database on {redacted(options.postgres_url)}",
            },
            "products": product_count,
            "worker_threads": WORKER_THREADS,
            "events": event_sizes or None,
            "reports": report_sizes or None,
        },
        "results": rows,
        "scaling": scaling,
        "replicas": replicas,
        "events": events,
        "reports": reports,
    }
    table = markdown_table(rows)
    if scaling:
        table += (
            f"\n\nWith worker processes (`serve --workers N`), callers on {SCALING_CHANNELS} "
            "connections:\n\n" + scaling_table(scaling)
        )
    if replicas:
        from bench.cluster_bench import markdown_table as replicas_table

        table += (
            "\n\nReplicas on PostgreSQL behind nginx (deploy/cluster.py), not pinned, a product "
            "per caller:\n\n" + replicas_table(replicas)
        )
    if events:
        from bench.events_bench import markdown_tables as events_tables

        table += "\n\n## Outbox events (bench/events_bench.py)\n\n" + events_tables(
            events, event_sizes
        )
    if reports:
        from bench.reports_bench import markdown_table as reports_table

        table += "\n\n## Reports (bench/reports_bench.py)\n\n" + reports_table(
            reports, report_sizes
        )
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    pinned = "servers on CPU 0, load on CPU 1" if server_prefix else "not pinned"
    header = (
        f"# storefront bench {report['started']}\n\n"
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, revision "
        f"{report['revision']}; {options.concurrency} callers, {options.warmup:g} s warm-up + "
        f"{options.duration:g} s per RPC, {pinned}; {product_count} seeded products; PostgreSQL "
        f"{'skipped' if options.no_postgres else 'on ' + redacted(options.postgres_url)}.\n\n"
    )
    (options.results_dir / f"{stamp}.md").write_text(header + table + "\n")
    print(header + table)
    print(f"\nbench: wrote {options.results_dir / stamp}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
