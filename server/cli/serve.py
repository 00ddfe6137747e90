"""`storefront serve`: builds the app, serves until SIGTERM/SIGINT, then drains."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from server import supervisor
from server.app import create_app
from server.config import VARIABLES, Settings, variables_help

log = logging.getLogger("storefront")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `serve` to the command line."""
    parser = commands.add_parser(
        "serve",
        help="serve gRPC (and metrics) until SIGTERM/SIGINT",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="processes serving the gRPC port under a supervisor (auto: one per CPU); "
        "overrides STOREFRONT_WORKERS",
    )
    parser.set_defaults(run=serve)


def _workers(text: str) -> int:
    [workers] = [v for v in VARIABLES if v.name == "STOREFRONT_WORKERS"]
    try:
        value: int = workers.kind.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Serves until a signal has drained and stopped the server.

    An out-of-date schema or a bad setting found while building or binding raises (main turns
    it into one line and exit status 1 or 2). With several workers, server/supervisor.py serves.
    """
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
    if settings.workers > 1:
        return supervisor.serve(settings, _announce)
    runtime = create_app(settings).runtime
    runtime.start()
    runtime.stop_on_signals()
    _announce(settings, runtime.port, runtime.metrics_port)
    runtime.wait()
    return 0


def _announce(settings: Settings, port: int, metrics_port: int | None) -> None:
    """Logs where the server listens and prints how to call it."""
    host = settings.grpc_address.rpartition(":")[0]
    target = f"{host}:{port}"
    scheme = "https" if settings.tls_enabled else "http"
    metrics = (
        f"http://{settings.metrics_address.rpartition(':')[0]}:{metrics_port}/metrics"
        if metrics_port
        else None
    )
    log.info(
        "storefront is serving gRPC on %s",
        target,
        extra={
            "grpc.address": target,
            "metrics.url": metrics,
            "database": settings.database_url.split("@")[-1],
        },
    )
    # For the person at the terminal: stdout, so stderr stays a JSON log stream.
    print(
        f"\nstorefront is serving gRPC on {target}"
        + (f", metrics on {metrics}" if metrics else "")
        + "\n\nTry it (buf comes with the development tools: make venv):\n"
        f"  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
        f"{scheme}://{target}/storefront.v1.IdentityService/ListSigningKeys\n"
        f"  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge --list-methods "
        f"{scheme}://{target}\n",
        flush=True,
    )
