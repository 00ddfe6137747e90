"""Outbox events: dispatcher throughput, webhook delivery lag under checkouts, open streams.

For each database (SQLite in a temporary directory; PostgreSQL in a throwaway database on
--postgres-url), with e-mail off and webhooks allowed to a plain-http loopback receiver in this
process (a ThreadingHTTPServer that answers 200 at once and notes each `webhook-id` and when it
arrived):

1. Backlog. A server with its dispatcher off (interval 0) registers one endpoint for every order
   event, then takes --backlog-orders paid orders (2 events each) from --callers customers.
2. Throughput. The server restarts with the dispatcher on (--dispatch-interval; each commit wakes
   it as well): the backlog over the time from its first fan-out to its last successful delivery
   (the server's own times, from ListWebhookDeliveries), so that start-up does not count.
3. Lag. On that server, bench/load.py places orders (--callers, --lag-warmup + --lag-duration);
   each event made after the warm-up counts receive time - event time (the body's `timestamp`,
   the event's create time), until deliveries stop.
4. Streams. With STOREFRONT_MAX_OPEN_STREAMS at the largest of --streams, ADMIN opens WatchOrder
   streams on the backlog's orders up to each count (100 a connection) and reads each first
   message; the server's RSS and threads before and with them open give the cost per stream, and
   its CPU while they idle the cost of their polling. A GetProduct must succeed meanwhile, and at
   the cap one stream more must get RESOURCE_EXHAUSTED.

`events_rows()` is what bench/run.py calls; `python -m bench.events_bench` (or
`python bench/events_bench.py`) prints the tables, `--json` writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from argparse import Namespace
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make `bench` and `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from storefront.v1 import (
    cart_service_pb2,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    checkout_service_pb2,
    order_pb2,
    order_service_pb2,
    order_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

from bench.load import percentile, place_order_request, processes_cpu_seconds
from bench.run import (
    POSTGRES,
    SQLITE,
    Prepared,
    measure,
    pinning,
    postgres_database,
    prepare,
    process_tree,
    redacted,
    serving,
    storefront_server,
)
from server.domain import webhooks

# Every order event type an endpoint may ask for.
ORDER_EVENT_TYPES = tuple(sorted(t for t in webhooks.EVENT_TYPES if t.startswith("order.")))
EVENTS_PER_PAID_ORDER = 2  # order.placed, order.payment_captured
BACKLOG_ORDERS = 200
CALLERS = 8
DISPATCH_INTERVAL_SECONDS = 0.2
LAG_WARMUP_SECONDS = 1.0
LAG_DURATION_SECONDS = 5.0
STREAM_COUNTS = (100, 1000)
STREAMS_PER_CONNECTION = 100
IDLE_SECONDS = 1.0  # how long the server's CPU is watched with the streams open and idle
DRAIN_TIMEOUT_SECONDS = 60.0
QUIET_SECONDS = 1.0  # no delivery for this long after the load: the dispatcher has caught up
STREAM_DEADLINE_SECONDS = 600.0
CALL_TIMEOUT_SECONDS = 10.0
CHECKOUT = "/storefront.v1.CheckoutService/PlaceOrder"
# The options that shape the measurements (reported with them).
SIZES = (
    "backlog_orders",
    "callers",
    "dispatch_interval",
    "lag_warmup",
    "lag_duration",
    "streams",
    "idle_seconds",
)


# --- the webhook receiver -----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """The first arrival of one event at the receiver, times in seconds since the epoch."""

    event_id: str
    event_type: str
    event_time: float
    receive_time: float


class Receiver:
    """A loopback HTTP server that answers every POST 200 and keeps each event's first arrival
    (Standard Webhooks deliver at least once: a repeated `webhook-id` only counts as such)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._deliveries: dict[str, Delivery] = {}
        self.repeats = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received = time.time()
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                receiver.record(
                    Delivery(
                        event_id=self.headers["webhook-id"],
                        event_type=body["type"],
                        event_time=dt.datetime.fromisoformat(body["timestamp"]).timestamp(),
                        receive_time=received,
                    )
                )

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per delivery on stderr would drown the bench's own

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL to register as a webhook endpoint."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/webhooks"

    def record(self, delivery: Delivery) -> None:
        """Keeps the delivery, unless its event arrived before."""
        with self._arrived:
            if delivery.event_id in self._deliveries:
                self.repeats += 1
            else:
                self._deliveries[delivery.event_id] = delivery
            self._arrived.notify_all()

    def deliveries(self) -> list[Delivery]:
        """Returns the deliveries kept so far, in arrival order."""
        with self._lock:
            return sorted(self._deliveries.values(), key=lambda d: d.receive_time)

    def forget(self) -> None:
        """Drops what was received so far (the repeats count too)."""
        with self._lock:
            self._deliveries.clear()
            self.repeats = 0

    def wait_for(self, count: int, timeout: float) -> bool:
        """Waits until `count` events have arrived; returns whether they did in time."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._deliveries) >= count, timeout)

    def wait_until_quiet(self, quiet: float, timeout: float) -> None:
        """Waits until nothing has arrived for `quiet` seconds, or `timeout` has passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                last = max((d.receive_time for d in self._deliveries.values()), default=0.0)
            if time.time() - last >= quiet:
                return
            time.sleep(0.1)

    def __enter__(self) -> Receiver:
        """Starts answering."""
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stops answering."""
        self._server.shutdown()
        self._server.server_close()


# --- helpers --------------------------------------------------------------------------------------


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that authenticates with `token`."""
    return (("authorization", f"Bearer {token}"),)


def process_status(pid: int, name: str) -> float:
    """Returns a /proc/<pid>/status figure (VmRSS in KiB, Threads...) summed over the process
    and its descendants."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(f"{name}:"):
                    total += float(line.split()[1])
    return total


def rss_mib(pid: int) -> float:
    """Returns the resident set size of the server's processes in MiB."""
    return process_status(pid, "VmRSS") / 1024


def milliseconds(seconds: float) -> float:
    """Seconds as milliseconds, rounded to microseconds."""
    return round(seconds * 1000, 3)


def register_endpoint(target: str, admin_token: str, url: str) -> str:
    """Registers `url` for every order event; returns the endpoint's id."""
    with grpc.insecure_channel(target) as channel:
        response = webhook_service_pb2_grpc.WebhookServiceStub(channel).CreateWebhookEndpoint(
            webhook_service_pb2.CreateWebhookEndpointRequest(
                endpoint=webhook_service_pb2.WebhookEndpoint(
                    url=url, description="bench receiver", event_types=ORDER_EVENT_TYPES
                )
            ),
            metadata=bearer(admin_token),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        endpoint_id: str = response.endpoint.id
        return endpoint_id


def place_orders(target: str, prepared: Prepared, count: int) -> list[str]:
    """Places `count` paid orders of one unit of the first product, the customers taking turns
    (one thread each); returns the orders' ids."""
    product_id = prepared.product_ids[0]
    callers = len(prepared.customer_tokens)
    with grpc.insecure_channel(target) as channel:
        add_item = channel.unary_unary(
            "/storefront.v1.CartService/AddCartItem",
            request_serializer=cart_service_pb2.AddCartItemRequest.SerializeToString,
        )
        # The request comes serialised from bench/load.py; the response is read for its id.
        place = channel.unary_unary(
            CHECKOUT, response_deserializer=checkout_service_pb2.PlaceOrderResponse.FromString
        )

        def buy(caller: int) -> list[str]:
            metadata = bearer(prepared.customer_tokens[caller])
            placed = []
            for _ in range(caller, count, callers):
                add_item(
                    cart_service_pb2.AddCartItemRequest(product_id=product_id, quantity=1),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                response = place(
                    place_order_request(), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
                if response.order.state != order_pb2.ORDER_STATE_PAID:  # 2 events each, counted on
                    sys.exit(f"bench: a backlog order is not PAID: {response.order}")
                placed.append(response.order.id)
            return placed

        with ThreadPoolExecutor(max_workers=callers) as pool:
            return [order_id for ids in pool.map(buy, range(callers)) for order_id in ids]


# --- the measurements -----------------------------------------------------------------------------


def delivery_times(target: str, admin_token: str, endpoint_id: str) -> list[tuple[float, float]]:
    """Returns (create time, delivered time) of each of the endpoint's delivered deliveries, in
    seconds since the epoch on the server's clock: the fan-out that wrote it and its success."""
    times: list[tuple[float, float]] = []
    token = ""
    with grpc.insecure_channel(target) as channel:
        stub = webhook_service_pb2_grpc.WebhookServiceStub(channel)
        while True:
            page = stub.ListWebhookDeliveries(
                webhook_service_pb2.ListWebhookDeliveriesRequest(
                    endpoint_id=endpoint_id, page_size=100, page_token=token
                ),
                metadata=bearer(admin_token),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            times.extend(
                (d.create_time.ToNanoseconds() / 1e9, d.delivered_time.ToNanoseconds() / 1e9)
                for d in page.deliveries
                if d.HasField("delivered_time")
            )
            token = page.next_page_token
            if not token:
                return times


def drain_figures(
    receiver: Receiver, expected: int, target: str, admin_token: str, endpoint_id: str
) -> dict[str, Any]:
    """Waits for the backlog's deliveries; returns the dispatcher's throughput, from the first
    fan-out to the last success (the server's times, ListWebhookDeliveries)."""
    complete = receiver.wait_for(expected, DRAIN_TIMEOUT_SECONDS)
    received = receiver.deliveries()
    times = delivery_times(target, admin_token, endpoint_id)
    figures: dict[str, Any] = {
        "events": expected,
        "received": len(received),
        "complete": complete,
        "repeats": receiver.repeats,
    }
    if len(received) < 2 or not times:
        return figures
    fanned_out = min(created for created, _ in times)
    finished = max(delivered for _, delivered in times)
    first, last = received[0].receive_time, received[-1].receive_time
    return figures | {
        "dispatch_s": round(finished - fanned_out, 3),
        "events_per_s": len(times) / (finished - fanned_out),
        # First receipt to last: mostly sending, the first fan-out being over.
        "sending_events_per_s": (len(received) - 1) / (last - first),
    }


def lag_figures(
    receiver: Receiver, load: dict[str, Any], measured_from: float, load_ended: float
) -> dict[str, Any]:
    """Returns the delivery lag of the events made from `measured_from` on, how fast events
    were made and delivered until `load_ended`, and the load's checkout figures."""
    receiver.wait_until_quiet(QUIET_SECONDS, DRAIN_TIMEOUT_SECONDS)
    measured = [d for d in receiver.deliveries() if d.event_time >= measured_from]
    lags = sorted(d.receive_time - d.event_time for d in measured)
    window = load_ended - measured_from
    return {
        "checkouts_per_s": load["throughput_per_s"],
        "checkout_p99_ms": load["latency_ms"]["p99"],
        "checkout_errors": load["errors"],
        "deliveries": len(lags),
        "repeats": receiver.repeats,
        "made_per_s": sum(d.event_time < load_ended for d in measured) / window,
        "delivered_per_s_under_load": sum(d.receive_time < load_ended for d in measured) / window,
        # A dispatcher that fell behind catches up once the checkouts stop.
        "last_delivery_after_load_s": round(
            max((d.receive_time for d in measured), default=load_ended) - load_ended, 3
        ),
        "lag_ms": {
            "p50": milliseconds(percentile(lags, 0.50)),
            "p99": milliseconds(percentile(lags, 0.99)),
            "max": milliseconds(lags[-1] if lags else 0.0),
        },
    }


@dataclass
class OpenStreams:
    """WatchOrder streams held open, over connections of STREAMS_PER_CONNECTION each."""

    target: str
    token: str
    order_ids: Sequence[str]
    channels: list[grpc.Channel] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)

    def open_up_to(self, count: int) -> None:
        """Opens streams until `count` are open, each once its first message (the order as it
        is) has arrived."""
        opened = []
        while len(self.calls) < count:
            if len(self.calls) >= len(self.channels) * STREAMS_PER_CONNECTION:
                self.channels.append(grpc.insecure_channel(self.target))
            call = self.open(
                self.channels[-1], self.order_ids[len(self.calls) % len(self.order_ids)]
            )
            self.calls.append(call)
            opened.append(call)
        for call in opened:
            next(call)

    def open(self, channel: grpc.Channel, order_id: str) -> Any:
        """Starts one WatchOrder stream (its messages are read by the caller)."""
        return order_service_pb2_grpc.OrderServiceStub(channel).WatchOrder(
            order_service_pb2.WatchOrderRequest(order_id=order_id),
            metadata=bearer(self.token),
            timeout=STREAM_DEADLINE_SECONDS,
        )

    def refused_beyond(self) -> str:
        """Opens one more stream; returns the status code it ended with ("OK" if it opened)."""
        call = self.open(self.channels[-1], self.order_ids[0])
        try:
            next(call)
        except grpc.RpcError as exc:
            return str(exc.code().name)
        call.cancel()
        return "OK"

    def close(self) -> None:
        """Cancels every stream and closes the connections."""
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()
        self.calls.clear()
        self.channels.clear()


def unary_while_open(target: str, product_id: str) -> dict[str, Any]:
    """Calls GetProduct on a connection of its own; returns its status and milliseconds."""
    with grpc.insecure_channel(target) as channel:
        began = time.monotonic()
        try:
            catalog_service_pb2_grpc.CatalogServiceStub(channel).GetProduct(
                catalog_service_pb2.GetProductRequest(product_id=product_id),
                timeout=CALL_TIMEOUT_SECONDS,
            )
            code = "OK"
        except grpc.RpcError as exc:
            code = str(exc.code().name)
        return {"code": code, "ms": milliseconds(time.monotonic() - began)}


def stream_rows(
    target: str,
    server_pid: int,
    prepared: Prepared,
    order_ids: Sequence[str],
    counts: Sequence[int],
    idle_seconds: float,
) -> list[dict[str, Any]]:
    """Opens streams up to each of `counts` in turn; returns one row per count."""
    cap = max(counts)
    time.sleep(0.5)  # let the load's last calls and deliveries settle before the baseline
    base_rss, base_threads = rss_mib(server_pid), process_status(server_pid, "Threads")
    streams = OpenStreams(target, prepared.admin_token, order_ids)
    rows: list[dict[str, Any]] = []
    try:
        for count in sorted(counts):
            began = time.monotonic()
            streams.open_up_to(count)
            opened_s = time.monotonic() - began
            idle_from, cpu_before = (
                time.monotonic(),
                processes_cpu_seconds(process_tree(server_pid)),
            )
            time.sleep(idle_seconds)
            idle_cpu = processes_cpu_seconds(process_tree(server_pid)) - cpu_before
            idle_s = time.monotonic() - idle_from
            rss = rss_mib(server_pid)
            rows.append(
                {
                    "streams": count,
                    "connections": len(streams.channels),
                    "open_s": round(opened_s, 3),
                    "rss_before_mib": round(base_rss, 1),
                    "rss_open_mib": round(rss, 1),
                    "rss_added_mib": round(rss - base_rss, 1),
                    "kib_per_stream": round((rss - base_rss) * 1024 / count, 1),
                    "threads_before": int(base_threads),
                    "threads_open": int(process_status(server_pid, "Threads")),
                    "idle_server_cpu_utilisation": idle_cpu / idle_s,
                    "unary": unary_while_open(target, prepared.product_ids[0]),
                    "beyond_cap": streams.refused_beyond() if count == cap else None,
                }
            )
    finally:
        streams.close()
    time.sleep(1.0)
    rows[-1]["rss_after_close_mib"] = round(rss_mib(server_pid), 1)
    rows[-1]["threads_after_close"] = int(process_status(server_pid, "Threads"))
    return rows


def database_row(
    database: str,
    database_url: str | None,
    data_dir: Path,
    options: Namespace,
    server_prefix: list[str],
    load_prefix: list[str],
    log: Any,
) -> dict[str, Any]:
    """Runs the four measurements on one database; returns their figures."""
    webhooks_allowed = {
        "STOREFRONT_EMAIL_TRANSPORT": "off",
        "STOREFRONT_WEBHOOK_ALLOW_HTTP": "true",
        "STOREFRONT_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    }
    with Receiver() as receiver:
        print(f"bench: events on {database}: backlog ...", file=log, flush=True)
        with storefront_server(
            server_prefix,
            data_dir,
            database_url,
            variables={**webhooks_allowed, "STOREFRONT_DISPATCH_INTERVAL_SECONDS": "0"},
        ) as (target, _, _):
            prepared = prepare(target, data_dir, options.callers)
            endpoint_id = register_endpoint(target, prepared.admin_token, receiver.url)
            order_ids = place_orders(target, prepared, options.backlog_orders)
        dispatching = {
            **webhooks_allowed,
            "STOREFRONT_DISPATCH_INTERVAL_SECONDS": str(options.dispatch_interval),
            "STOREFRONT_MAX_OPEN_STREAMS": str(max(options.streams)),
        }
        print(f"bench: events on {database}: dispatch ...", file=log, flush=True)
        with serving(
            server_prefix, data_dir, database_url, variables=dispatching, log_name="dispatch.log"
        ) as (target, server, _):
            dispatch = drain_figures(
                receiver,
                EVENTS_PER_PAID_ORDER * len(order_ids),
                target,
                prepared.admin_token,
                endpoint_id,
            )
            print(f"bench: events on {database}: lag under checkouts ...", file=log, flush=True)
            receiver.forget()
            ids_file = data_dir / "product-ids.txt"
            ids_file.write_text("\n".join(prepared.product_ids) + "\n")
            load_options = Namespace(
                concurrency=options.callers,
                duration=options.lag_duration,
                warmup=options.lag_warmup,
            )
            # load.py's warm-up starts once it has connected, a little after this.
            measured_from = time.time() + options.lag_warmup
            load = measure(
                load_prefix,
                "PlaceOrder",
                target,
                server.pid,
                load_options,
                ids_file,
                ",".join(prepared.customer_tokens),
            )
            lag = lag_figures(receiver, load, measured_from, time.time())
            print(f"bench: events on {database}: open streams ...", file=log, flush=True)
            streams = stream_rows(
                target, server.pid, prepared, order_ids, options.streams, options.idle_seconds
            )
    return {"database": database, "dispatch": dispatch, "lag": lag, "streams": streams}


def events_rows(
    *,
    postgres_url: str | None,
    options: Namespace | None = None,
    server_prefix: Sequence[str] = (),
    load_prefix: Sequence[str] = (),
    log: Any = sys.stderr,
) -> list[dict[str, Any]]:
    """Measures each database (PostgreSQL only with a `postgres_url`); returns one row each.
    `options` holds the sizes (the defaults of `parser()` when None)."""
    options = options or parser().parse_args([])
    rows = []
    with tempfile.TemporaryDirectory(prefix="storefront-events-bench-") as tmp:
        for database in (SQLITE, POSTGRES):
            if database == POSTGRES and not postgres_url:
                continue
            data_dir = Path(tmp) / database
            data_dir.mkdir()
            with contextlib.ExitStack() as stack:
                url = None
                if database == POSTGRES:
                    assert postgres_url is not None
                    url = stack.enter_context(postgres_database(postgres_url))
                rows.append(
                    database_row(
                        database,
                        url,
                        data_dir,
                        options,
                        list(server_prefix),
                        list(load_prefix),
                        log,
                    )
                )
    return rows


# --- the report -----------------------------------------------------------------------------------


def sizes_of(options: Namespace) -> dict[str, Any]:
    """The options that shape the measurements, for reports."""
    return {name: getattr(options, name) for name in SIZES}


def markdown_tables(rows: Sequence[dict[str, Any]], sizes: dict[str, Any]) -> str:
    """Returns the rows as three Markdown tables (throughput, lag, streams); `sizes` is what
    `sizes_of` says of the options they were measured with."""
    options = Namespace(**sizes)
    throughput = [
        f"Dispatcher throughput: a backlog of {options.backlog_orders} paid orders' events to "
        f"one loopback endpoint, dispatcher interval {options.dispatch_interval:g} s:",
        "",
        "| database | events | received | repeats | first fan-out to last delivery s "
        "| events/s | events/s sending |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lag = [
        f"Webhook delivery lag (receipt - event time) under checkout load: {options.callers} "
        f"PlaceOrder callers, {options.lag_warmup:g} s warm-up + {options.lag_duration:g} s:",
        "",
        "| database | checkouts/s | checkout p99 ms | events made/s | delivered/s meanwhile "
        "| deliveries | lag p50 ms | lag p99 ms | lag max ms | last delivery after the load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    streams = [
        "Open WatchOrder streams in one server process "
        f"({STREAMS_PER_CONNECTION} a connection), idle for {options.idle_seconds:g} s:",
        "",
        "| database | streams | open s | RSS before MiB | RSS open MiB | added MiB | KiB/stream "
        "| threads | server CPU idle | GetProduct meanwhile | one beyond the cap "
        "| after closing them |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        database, dispatch = row["database"], row["dispatch"]
        if "events_per_s" in dispatch:
            throughput.append(
                f"| {database} | {dispatch['events']} | {dispatch['received']} "
                f"| {dispatch['repeats']} | {dispatch['dispatch_s']:.2f} "
                f"| {dispatch['events_per_s']:,.0f} | {dispatch['sending_events_per_s']:,.0f} |"
            )
        else:
            throughput.append(
                f"| {database} | {dispatch['events']} | {dispatch['received']} "
                f"| {dispatch['repeats']} | - | - | - |"
            )
        figures = row["lag"]
        latency = figures["lag_ms"]
        lag.append(
            f"| {database} | {figures['checkouts_per_s']:,.0f} | {figures['checkout_p99_ms']:.0f} "
            f"| {figures['made_per_s']:,.0f} | {figures['delivered_per_s_under_load']:,.0f} "
            f"| {figures['deliveries']} | {latency['p50']:.0f} | {latency['p99']:.0f} "
            f"| {latency['max']:.0f} | {figures['last_delivery_after_load_s']:.2f} |"
        )
        for stream in row["streams"]:
            unary = stream["unary"]
            after = "-"
            if "rss_after_close_mib" in stream:
                after = (
                    f"{stream['rss_after_close_mib']:.0f} MiB, "
                    f"{stream['threads_after_close']} threads"
                )
            streams.append(
                f"| {database} | {stream['streams']} | {stream['open_s']:.2f} "
                f"| {stream['rss_before_mib']:.0f} | {stream['rss_open_mib']:.0f} "
                f"| {stream['rss_added_mib']:.1f} | {stream['kib_per_stream']:.0f} "
                f"| {stream['threads_before']} → {stream['threads_open']} "
                f"| {stream['idle_server_cpu_utilisation']:.0%} "
                f"| {unary['code']} in {unary['ms']:.1f} ms "
                f"| {stream['beyond_cap'] or '-'} | {after} |"
            )
    return "\n\n".join("\n".join(table) for table in (throughput, lag, streams))


def parser() -> argparse.ArgumentParser:
    """The options of the events measurements (bench/run.py uses their defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backlog-orders",
        type=int,
        default=BACKLOG_ORDERS,
        help=f"paid orders in the backlog, {EVENTS_PER_PAID_ORDER} events each "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--callers", type=int, default=CALLERS, help="customers placing orders at once"
    )
    parser.add_argument(
        "--dispatch-interval",
        type=float,
        default=DISPATCH_INTERVAL_SECONDS,
        help="STOREFRONT_DISPATCH_INTERVAL_SECONDS once dispatching (default: %(default)s)",
    )
    parser.add_argument(
        "--lag-warmup",
        type=float,
        default=LAG_WARMUP_SECONDS,
        help="seconds of checkouts before the lag counts",
    )
    parser.add_argument(
        "--lag-duration", type=float, default=LAG_DURATION_SECONDS, help="seconds of checkouts"
    )
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=list(STREAM_COUNTS),
        help="stream counts to open in turn; the largest is the cap (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=IDLE_SECONDS,
        help="how long the server's CPU is measured with the streams idle",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOREFRONT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where throwaway databases may be created (default: %(default)s)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measures and prints the tables."""
    options = parser().parse_args(argv)
    server_prefix, load_prefix = pinning(not options.no_pin)
    rows = events_rows(
        postgres_url=None if options.no_postgres else options.postgres_url,
        options=options,
        server_prefix=server_prefix,
        load_prefix=load_prefix,
    )
    pinned = "servers on CPU 0, load on CPU 1" if server_prefix else "not pinned"
    where = "" if options.no_postgres else f"; PostgreSQL on {redacted(options.postgres_url)}"
    print(f"{os.cpu_count()} CPUs, {pinned}{where}\n\n" + markdown_tables(rows, sizes_of(options)))
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
