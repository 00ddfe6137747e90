"""1 vs 3 storefront replicas behind nginx on PostgreSQL: GetProduct and PlaceOrder per caller.

For each replica count, a fresh database is created on --postgres-url, migrated and seeded
(`storefront seed`), the replicas and nginx start (deploy/cluster.py) and one closed-loop caller
per --concurrency calls through nginx: caller i reads (anonymously, as `make bench` does) or buys
one unit of seeded product i, its own (so checkouts do not queue on one stock row; callers beyond
the 70 seeded products share them), as customer i with a cart of its own; the AddCartItem before
each checkout is not timed. Nothing is pinned: three replicas confined to one CPU could not show
what a second one gives.

`cluster_rows()` is what bench/run.py calls; `python -m bench.cluster_bench` (or
`python bench/cluster_bench.py`) prints the rows as a Markdown table, `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    STOREFRONT,
    Prepared,
    measure,
    postgres_database,
    prepare,
    process_tree,
    redacted,
    reset_peak_rss,
    run_command,
    storefront_env,
)
from deploy import cluster

RPCS = ("GetProduct", "PlaceOrder")
REPLICA_COUNTS = (1, 3)
# As in `make bench`: one benchmark caller must not be measured against its rate limits.
UNLIMITED = "100000000/minute"


def replica_variables() -> dict[str, str]:
    """Settings of the benchmarked replicas: defaults, but for the rate limits and the grace."""
    return {
        "STOREFRONT_RATE_LIMIT_READ": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_WRITE": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_CHECKOUT": UNLIMITED,
        "STOREFRONT_RATE_LIMIT_SIGN_IN": UNLIMITED,
        "STOREFRONT_SHUTDOWN_GRACE_SECONDS": "2",
    }


def measure_through_nginx(
    running: cluster.Cluster, rpc: str, prepared: Prepared, ids_file: Path, options: Namespace
) -> dict[str, Any]:
    """Drives one RPC through nginx (bench/load.py, caller i with product i); returns its
    figures with the replicas' CPU as the server's and nginx's apart."""
    replica_pids = [r.process.pid for r in running.replicas if r.process is not None]
    assert running.nginx.process is not None
    for pid in replica_pids:
        reset_peak_rss(pid)
    tokens = prepared.customer_tokens if rpc == "PlaceOrder" else [prepared.admin_token]
    return measure(
        [],
        rpc,
        running.address,
        replica_pids,
        options,
        ids_file,
        ",".join(tokens),
        proxy_pids=process_tree(running.nginx.process.pid),
        product_per_caller=True,
    )


def cluster_rows(
    *,
    postgres_url: str,
    concurrency: int = 32,
    duration: float = 10.0,
    warmup: float = 2.0,
    replica_counts: Sequence[int] = REPLICA_COUNTS,
    rpcs: Sequence[str] = RPCS,
    log: Any = sys.stderr,
) -> list[dict[str, Any]]:
    """Measures each RPC through nginx with each replica count; returns one row per pair, with
    `ratio_to_first` (throughput against the first replica count's row of the same RPC)."""
    rows: list[dict[str, Any]] = []
    options = Namespace(concurrency=concurrency, duration=duration, warmup=warmup)
    for replicas in replica_counts:
        with (
            tempfile.TemporaryDirectory(prefix="storefront-cluster-bench-") as tmp,
            postgres_database(postgres_url) as url,
        ):
            directory = Path(tmp)
            seeding = directory / "seed"
            seeding.mkdir()
            env = storefront_env(seeding, "127.0.0.1:0")
            env["STOREFRONT_DATABASE_URL"] = url
            cluster.migrate(url, env)
            run_command([str(STOREFRONT), "seed"], env)
            with cluster.running_cluster(
                url, directory / "cluster", replicas=replicas, variables=replica_variables()
            ) as running:
                prepared = prepare(running.address, seeding, concurrency, stocked=concurrency)
                ids_file = directory / "product-ids.txt"
                ids_file.write_text("\n".join(prepared.product_ids) + "\n")
                for rpc in rpcs:
                    print(
                        f"bench: {rpc} through nginx, {replicas} replica(s) ...",
                        file=log,
                        flush=True,
                    )
                    row = measure_through_nginx(running, rpc, prepared, ids_file, options)
                    row["replicas"] = replicas
                    row["label"] = (
                        f"{rpc}, {replicas} replica{'s' if replicas > 1 else ''} behind nginx, "
                        "PostgreSQL, a product per caller"
                    )
                    rows.append(row)
    first: dict[str, float] = {}
    for row in rows:
        first.setdefault(row["rpc"], row["throughput_per_s"] or 1.0)
        row["ratio_to_first"] = row["throughput_per_s"] / first[row["rpc"]]
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Returns the rows as a Markdown table."""
    lines = [
        "| RPC | replicas | calls/s | vs 1 replica | p50 ms | p90 ms | p99 ms | errors "
        "| replicas' CPU | nginx CPU | client CPU | peak RSS per replica MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        latency = row["latency_ms"]
        errors = ", ".join(f"{n} {code}" for code, n in sorted(row["errors"].items())) or "0"
        lines.append(
            f"| {row['rpc']} | {row['replicas']} | {row['throughput_per_s']:,.0f} "
            f"| {row['ratio_to_first']:.2f}x | {latency['p50']:.1f} | {latency['p90']:.1f} "
            f"| {latency['p99']:.1f} | {errors} | {row['server_cpu_utilisation']:.0%} "
            f"| {row['proxy_cpu_utilisation']:.0%} | {row['client_cpu_utilisation']:.0%} "
            f"| {row['server_peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measures and prints the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="callers in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per row")
    parser.add_argument(
        "--replicas",
        type=int,
        action="append",
        help=f"replica counts to compare (repeatable; default: {REPLICA_COUNTS})",
    )
    parser.add_argument("--rpc", action="append", choices=RPCS, help="RPCs (default: both)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOREFRONT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where throwaway databases may be created (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    options = parser.parse_args(argv)
    if cluster.nginx_executable() is None:
        parser.error("nginx is not installed (Debian: nginx-light)")
    rows = cluster_rows(
        postgres_url=options.postgres_url,
        concurrency=options.concurrency,
        duration=options.duration,
        warmup=options.warmup,
        replica_counts=options.replicas or REPLICA_COUNTS,
        rpcs=options.rpc or RPCS,
    )
    header = (
        f"{os.cpu_count()} CPUs, {options.concurrency} callers, {options.warmup:g} s warm-up + "
        f"{options.duration:g} s per row, not pinned; PostgreSQL on "
        f"{redacted(options.postgres_url)}\n\n"
    )
    print(header + markdown_table(rows))
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
