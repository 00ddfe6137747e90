"""Load generator: one RPC, closed loop, N concurrent callers on K grpc.aio channels (one
connection each, so that `serve --workers` and load balancers can spread them; default 1).

Prints one JSON object: calls, errors by status code, latency percentiles, and the CPU time the
server's processes (--server-pids, read from /proc) and this process used in the measured window.
Requests are serialised once up front and responses are not parsed, so the client spends its CPU
on gRPC itself. The access tokens for authenticated RPCs come from BENCH_ACCESS_TOKEN
(comma-separated: caller i uses token i modulo their number, so each checkout caller is its own
customer with its own cart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from storefront.v1 import (
    cart_service_pb2,
    catalog_service_pb2,
    checkout_service_pb2,
    identity_service_pb2,
    order_pb2,
)

ECHO_METHOD = "/bench.v1.EchoService/Echo"
ECHO_PAYLOAD = bytes(range(64))
TOKEN_VARIABLE = "BENCH_ACCESS_TOKEN"  # noqa: S105 (a variable's name)
SEARCH_QUERIES = (
    "coffee",
    "pour-over coffee",
    "stainless steel",
    "led lamp",
    "cast iron",
    "teak",
    "garden",
    "cotton towels",
)
CALL_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Workload:
    """One RPC: its method path, the requests to choose from, and whether it needs a token."""

    method: str
    requests: list[bytes]
    authenticated: bool = False
    # Builds each request afresh (e.g. with a new request_id) instead of choosing from `requests`.
    make_request: Callable[[], bytes] | None = None
    # An unmeasured call (method, requests) each caller makes before every measured one; caller i
    # sends requests[i modulo their number].
    before_each: tuple[str, list[bytes]] | None = None
    # Caller i always sends requests[i modulo their number] instead of a random one.
    per_caller: bool = False


def place_order_request() -> bytes:
    """A PlaceOrder with a new request_id, shipped to Germany (shipping and 19% tax), in EUR."""
    return checkout_service_pb2.PlaceOrderRequest(
        request_id=str(uuid.uuid4()),
        shipping_address=order_pb2.Address(
            recipient_name="Bench Customer",
            line1="Torstrasse 1",
            city="Berlin",
            postal_code="10119",
            country_code="DE",
        ),
        currency_code="EUR",
        payment_method_token="tok_visa",  # noqa: S106 (the sandbox's always-succeeding token)
    ).SerializeToString()


def workloads(
    product_ids: list[str], *, per_caller: bool = False
) -> dict[str, Callable[[], Workload]]:
    """Returns how to build each workload, by the name used on the command line. With
    `per_caller`, caller i reads (GetProduct) or buys (PlaceOrder) product i (modulo their
    number) only, so that checkouts do not all queue on one stock row."""
    identity = "/storefront.v1.IdentityService/"
    catalog = "/storefront.v1.CatalogService/"
    checkout = "/storefront.v1.CheckoutService/"
    cart = "/storefront.v1.CartService/"
    # Unknown ids if the database has none, so the run still reports something (NOT_FOUND).
    ids = product_ids or ["00000000-0000-4000-8000-000000000000"]
    return {
        "echo": lambda: Workload(ECHO_METHOD, [ECHO_PAYLOAD]),
        "ListSigningKeys": lambda: Workload(
            identity + "ListSigningKeys",
            [identity_service_pb2.ListSigningKeysRequest().SerializeToString()],
        ),
        "GetCurrentUser": lambda: Workload(
            identity + "GetCurrentUser",
            [identity_service_pb2.GetCurrentUserRequest().SerializeToString()],
            authenticated=True,
        ),
        "GetProduct": lambda: Workload(
            catalog + "GetProduct",
            [
                catalog_service_pb2.GetProductRequest(product_id=pid).SerializeToString()
                for pid in ids
            ],
            per_caller=per_caller,
        ),
        "ListProducts": lambda: Workload(
            catalog + "ListProducts",
            [catalog_service_pb2.ListProductsRequest(page_size=50).SerializeToString()],
        ),
        "SearchProducts": lambda: Workload(
            catalog + "SearchProducts",
            [
                catalog_service_pb2.SearchProductsRequest(query=q, page_size=20).SerializeToString()
                for q in SEARCH_QUERIES
            ],
        ),
        # Each call checks out one unit of the first product (or the caller's own); the caller's
        # AddCartItem that fills the cart again is not timed, but its server CPU is in the
        # per-call figure.
        "PlaceOrder": lambda: Workload(
            checkout + "PlaceOrder",
            [],
            authenticated=True,
            make_request=place_order_request,
            before_each=(
                cart + "AddCartItem",
                [
                    cart_service_pb2.AddCartItemRequest(
                        product_id=pid, quantity=1
                    ).SerializeToString()
                    for pid in (ids if per_caller else ids[:1])
                ],
            ),
        ),
    }


def processes_cpu_seconds(pids: list[int]) -> float:
    """Returns the user + system CPU time of the processes `pids` (all threads) from /proc."""
    total = 0
    for member in pids:
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        # The command name (field 2) may contain spaces; the fields after its ")" are fixed.
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """What the callers saw in the measured window."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_details: dict[str, str] = field(default_factory=dict)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Returns the nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def run(args: argparse.Namespace, workload: Workload) -> dict[str, Any]:
    """Drives the workload for warmup + duration seconds; returns the measured window's figures."""
    callers_metadata: list[tuple[tuple[str, str], ...]] = [()]
    if workload.authenticated:
        tokens = [t for t in os.environ.get(TOKEN_VARIABLE, "").split(",") if t]
        if not tokens:
            raise SystemExit(f"{TOKEN_VARIABLE} is needed for {args.rpc}")
        callers_metadata = [(("authorization", f"Bearer {token}"),) for token in tokens]
    rng = random.Random(args.seed)
    tally = Tally()
    async with contextlib.AsyncExitStack() as stack:
        channels = []
        for _ in range(args.channels):
            # A local subchannel pool: each channel opens a connection of its own.
            channel = grpc.aio.insecure_channel(
                args.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await stack.enter_async_context(channel)
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            channels.append(channel)
        loop = asyncio.get_running_loop()
        start = loop.time() + args.warmup
        end = start + args.duration

        async def caller(index: int) -> None:
            channel = channels[index % len(channels)]
            metadata = callers_metadata[index % len(callers_metadata)]
            # No (de)serialisers: the requests are bytes already and responses stay bytes.
            call = channel.unary_unary(workload.method)
            prepare, preparation = None, b""
            if workload.before_each is not None:
                prepare = channel.unary_unary(workload.before_each[0])
                preparation = workload.before_each[1][index % len(workload.before_each[1])]
            own = workload.requests[index % len(workload.requests)] if workload.per_caller else None
            while loop.time() < end:
                if prepare is not None:
                    try:
                        await prepare(
                            preparation,
                            metadata=metadata,
                            timeout=CALL_TIMEOUT_SECONDS,
                        )
                    except grpc.aio.AioRpcError as exc:
                        # Counted like the measured call's errors, so the run goes on and says so.
                        code = f"prepare:{exc.code().name}"
                        tally.error_details.setdefault(code, exc.details() or "")
                        if loop.time() >= start:
                            tally.errors[code] += 1
                        continue
                if workload.make_request is not None:
                    request = workload.make_request()
                elif own is not None:
                    request = own
                else:
                    request = rng.choice(workload.requests)
                began = loop.time()
                code = "OK"
                try:
                    await call(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    tally.error_details.setdefault(code, exc.details() or "")
                finished = loop.time()
                if began >= start and finished <= end:
                    if code == "OK":
                        tally.latencies.append(finished - began)
                    else:
                        tally.errors[code] += 1

        def cpu_now() -> tuple[float, float, float]:
            return (
                processes_cpu_seconds(args.server_pids),
                processes_cpu_seconds(args.proxy_pids),
                time.process_time(),
            )

        async def clock() -> tuple[float, float, float]:
            await asyncio.sleep(max(0.0, start - loop.time()))
            before = cpu_now()
            await asyncio.sleep(max(0.0, end - loop.time()))
            after = cpu_now()
            server, proxy, client = (b - a for a, b in zip(before, after, strict=True))
            return server, proxy, client

        measured = asyncio.create_task(clock())
        await asyncio.gather(*(caller(index) for index in range(args.concurrency)))
        server_cpu, proxy_cpu, client_cpu = await measured

    latencies = sorted(tally.latencies)
    calls = len(latencies)
    errors = sum(tally.errors.values())
    return {
        "rpc": args.rpc,
        "method": workload.method,
        "calls": calls,
        "errors": dict(tally.errors),
        "error_details": tally.error_details,
        "duration_s": args.duration,
        "throughput_per_s": calls / args.duration,
        "latency_ms": {
            "p50": percentile(latencies, 0.50) * 1000,
            "p90": percentile(latencies, 0.90) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "max": (latencies[-1] if latencies else 0.0) * 1000,
        },
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_call": server_cpu * 1000 / (calls + errors) if calls + errors else None,
        "server_cpu_utilisation": server_cpu / args.duration,
        "proxy_cpu_utilisation": proxy_cpu / args.duration,
        "client_cpu_utilisation": client_cpu / args.duration,
    }


def main() -> int:
    """Runs one workload and prints its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--rpc", required=True, choices=list(workloads([])))
    parser.add_argument(
        "--server-pids",
        type=lambda text: [int(pid) for pid in text.split(",")],
        required=True,
        help="the server's processes to measure, comma-separated",
    )
    parser.add_argument(
        "--proxy-pids",
        type=lambda text: [int(pid) for pid in text.split(",") if pid],
        default=[],
        help="a load balancer's processes between us and the server, measured apart",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1, help="connections to spread over")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--product-ids", type=Path, help="file with one product id per line")
    parser.add_argument("--seed", type=int, default=1, help="random seed choosing requests")
    parser.add_argument(
        "--product-per-caller",
        action="store_true",
        help="caller i reads or buys product i of --product-ids only (modulo their number)",
    )
    args = parser.parse_args()
    product_ids = args.product_ids.read_text().split() if args.product_ids else []
    workload = workloads(product_ids, per_caller=args.product_per_caller)[args.rpc]()
    result = asyncio.run(run(args, workload))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
