"""`make bench`: storefront RPCs against a bare gRPC echo ceiling, measured in one run.

Migrates and seeds a SQLite database in a temporary directory, starts `storefront serve` and
bench/echo_server.py (pinned to CPU 0 when there are two CPUs and taskset), then runs
bench/load.py (pinned to CPU 1) once per RPC. Writes bench/results/<UTC time>.json and .md and
prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from storefront_client import StorefrontClient

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STOREFRONT = Path(sys.executable).with_name("storefront")
# Rows in table order; the first is the ceiling the others are compared with.
RPCS = (
    ("echo", "echo (bare grpcio ceiling)"),
    ("ListSigningKeys", "IdentityService.ListSigningKeys (public, no DB)"),
    ("GetCurrentUser", "IdentityService.GetCurrentUser (token + 1 query)"),
    ("GetProduct", "CatalogService.GetProduct (random seeded ids)"),
    ("ListProducts", "CatalogService.ListProducts (page_size 50)"),
    ("SearchProducts", "CatalogService.SearchProducts (8 queries)"),
)
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


def peak_rss_mib(pid: int) -> float:
    """Returns the process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
    """Returns the environment for `storefront` commands: defaults except where and how loud."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFRONT_")}
    env.update(
        STOREFRONT_DATA_DIR=str(data_dir),
        STOREFRONT_GRPC_ADDRESS=address,
        STOREFRONT_METRICS_ADDRESS="",
        STOREFRONT_SHUTDOWN_GRACE_SECONDS="2",
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


def seeded_product_ids(data_dir: Path) -> list[str]:
    """Returns the ids of the active products in the seeded database."""
    with sqlite3.connect(data_dir / "storefront.db") as connection:
        rows = connection.execute("SELECT id FROM products WHERE state = 'ACTIVE' ORDER BY id")
        return [row[0] for row in rows]


def measure(
    prefix: list[str],
    rpc: str,
    target: str,
    server_pid: int,
    options: argparse.Namespace,
    ids_file: Path,
    token: str,
) -> dict[str, Any]:
    """Runs bench/load.py for one RPC and returns its figures plus the server's peak RSS."""
    result = subprocess.run(
        [
            *prefix,
            sys.executable,
            str(BENCH / "load.py"),
            f"--target={target}",
            f"--rpc={rpc}",
            f"--server-pid={server_pid}",
            f"--concurrency={options.concurrency}",
            f"--duration={options.duration}",
            f"--warmup={options.warmup}",
            f"--product-ids={ids_file}",
        ],
        env={**os.environ, "BENCH_ACCESS_TOKEN": token},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"bench: load.py --rpc={rpc} failed:\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout)
    figures["server_peak_rss_mib"] = peak_rss_mib(server_pid)
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
        choices=[name for name, _ in RPCS],
        help="measure only these (repeatable); echo is always measured",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    options = parser.parse_args(argv)
    chosen = {"echo", *(options.rpc or [name for name, _ in RPCS])}
    server_prefix, load_prefix = pinning(not options.no_pin)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)

    with tempfile.TemporaryDirectory(prefix="storefront-bench-") as tmp:
        data_dir = Path(tmp)
        target = f"127.0.0.1:{free_port()}"
        env = storefront_env(data_dir, target)
        run_command([str(STOREFRONT), "migrate"], env)
        run_command([str(STOREFRONT), "seed"], env)
        product_ids = seeded_product_ids(data_dir)
        ids_file = data_dir / "product-ids.txt"
        ids_file.write_text("\n".join(product_ids) + "\n")
        server_log = data_dir / "server.log"

        with (
            server_log.open("w") as log,
            running(
                [*server_prefix, str(STOREFRONT), "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,  # the JSON access log, one line per RPC, as in production
            ) as server,
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
            wait_until_serving(target, server, server_log)
            with StorefrontClient(target) as client:
                client.login(*demo_admin(data_dir))
                session = client.session
                assert session is not None
                token = session.access_token
            rows = []
            for rpc, label in RPCS:
                if rpc not in chosen:
                    continue
                print(f"bench: {label} ...", file=sys.stderr, flush=True)
                if rpc == "echo":
                    figures = measure(
                        load_prefix, rpc, echo_target, echo.pid, options, ids_file, token
                    )
                else:
                    figures = measure(
                        load_prefix, rpc, target, server.pid, options, ids_file, token
                    )
                rows.append({"label": label, **figures})

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
            "database": "SQLite (WAL) in a temporary directory",
            "products": len(product_ids),
            "worker_threads": WORKER_THREADS,
        },
        "results": rows,
    }
    table = markdown_table(rows)
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    pinned = "servers on CPU 0, load on CPU 1" if server_prefix else "not pinned"
    header = (
        f"# storefront bench {report['started']}\n\n"
        f"{machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, revision "
        f"{report['revision']}; {options.concurrency} callers, {options.warmup:g} s warm-up + "
        f"{options.duration:g} s per RPC, {pinned}; SQLite, {len(product_ids)} products.\n\n"
    )
    (options.results_dir / f"{stamp}.md").write_text(header + table + "\n")
    print(header + table)
    print(f"\nbench: wrote {options.results_dir / stamp}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
