"""A bare grpcio server echoing bytes: the ceiling storefront's RPCs are measured against.

Same executor size, concurrency limit and port options as `storefront serve`; no interceptors, no
database, no protobuf parsing. Prints "echo serving on PORT" once ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from types import FrameType
from typing import Any

import grpc

ECHO_METHOD = "/bench.v1.EchoService/Echo"


def _echo(request: bytes, context: Any) -> bytes:
    return request


def main() -> int:
    """Serves the echo method until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port to listen on")
    parser.add_argument("--worker-threads", type=int, default=16)
    parser.add_argument("--max-concurrent-rpcs", type=int, default=64)
    args = parser.parse_args()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.worker_threads, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=args.max_concurrent_rpcs,
        options=[("grpc.so_reuseport", 0)],
    )
    service, _, method = ECHO_METHOD.strip("/").partition("/")
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(_echo)}
            )
        ]
    )
    port = server.add_insecure_port(args.address)
    server.start()
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopped.is_set():
            stopped.set()
            threading.Thread(target=lambda: server.stop(1), name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo serving on {port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
