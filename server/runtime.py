"""Running a built App: start serving, watch the database, run the jobs, drain and stop.

The gRPC server is built (App.build_server) only when `Runtime.start` runs, so a process may
fork after `create_app` and before any gRPC object exists.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import peewee
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, start_http_server

from server.config import ConfigError
from server.db import close_database, close_idle_connections, database_reachable
from server.domain import instances, outbox
from server.jobs import Job

if TYPE_CHECKING:
    from server.app import App, BuiltServer
    from server.services.health_service import HealthServicer

log = logging.getLogger("storefront")


def start_metrics_endpoint(address: str, registry: CollectorRegistry) -> Any:
    """Serves `registry` on http://address/metrics from a thread; returns the HTTP server.

    Raises ConfigError when the address cannot be listened on.
    """
    host, _, port = address.rpartition(":")
    try:
        httpd, _ = start_http_server(int(port), host.strip("[]"), registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"STOREFRONT_METRICS_ADDRESS: cannot listen on {address} ({exc.strerror})"
        ) from None
    return httpd


class Runtime:
    """Serves one App: metrics endpoint, gRPC server, outbox consumers, health watch and jobs.

    `stop` drains in the order load balancers need: health NOT_SERVING, the drain period,
    `server.stop(grace)` (in-flight calls finish, new ones are refused), then the pool closes.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.metrics_port: int | None = None
        self._built: BuiltServer | None = None
        self._metrics_httpd: Any = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None
        self._subscriptions: list[outbox.Subscription] = []
        self._instance_id: str | None = None
        self._heartbeat: Job[None] | None = None

    @property
    def port(self) -> int:
        """The port the gRPC server is bound to."""
        return self._server().port

    @property
    def health(self) -> HealthServicer:
        """The health servicer."""
        return self._server().health

    def start(self) -> None:
        """Builds and binds the server, then starts metrics, consumers, RPCs, health watch, jobs.

        Raises ConfigError when the gRPC or metrics address cannot be listened on.
        """
        settings = self.app.settings
        self._built = self.app.build_server()
        self._register_instance()
        self.set_serving(True)
        if settings.metrics_address:
            self._metrics_httpd = start_metrics_endpoint(
                settings.metrics_address, self.app.metrics.registry
            )
            self.metrics_port = self._metrics_httpd.server_port
        self._subscriptions = [
            outbox.subscribe(name, consumer) for name, consumer in self.app.consumers.items()
        ]
        self.app.listener.start()
        self._built.server.start()
        self._watcher = threading.Thread(target=self._watch_database, name="db-health", daemon=True)
        self._watcher.start()
        for job in self.app.jobs:
            job.start()

    def stop(self, grace: float | None = None) -> None:
        """Drains and stops: health NOT_SERVING, drain period, stop(grace), close the pool."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        settings = self.app.settings
        for job in self.app.jobs:
            job.stop()
        grace = settings.shutdown_grace_seconds if grace is None else grace
        if self._built is not None:
            self._built.health.enter_graceful_shutdown()
            # Load balancers and clients watching health move away during the drain period,
            # before the server starts refusing new RPCs.
            if settings.drain_seconds:
                time.sleep(settings.drain_seconds)
            # Streams never end on their own: end them now (clients reconnect elsewhere), so
            # they neither hold up the grace period nor read from a database being closed.
            self.app.dependencies.order_streams.close(timeout=grace + 1)
            self._built.server.stop(grace).wait()
        # After the server: the calls that finished during the grace period had their events seen.
        for subscription in self._subscriptions:
            outbox.unsubscribe(subscription)
        self.app.listener.stop()
        if self._watcher is not None:
            self._watcher.join(timeout=settings.health_check_seconds + 1)
        for job in self.app.jobs:
            # A pass in progress may be waiting on the payment provider; it is safe to abandon.
            job.join(timeout=grace + 1)
        self._retire_instance()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        close_database()
        self._stopped.set()

    def stop_on_signals(self) -> None:
        """Drains and stops on the first SIGTERM or SIGINT (on a thread: a handler must return)."""
        requested = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if not requested.is_set():
                requested.set()
                log.info("signal %s: draining", signal.Signals(signum).name)
                threading.Thread(target=self.stop, name="shutdown").start()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self._server().server.wait_for_termination()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Blocks until `stop` has finished (jobs joined, pool closed); False on timeout."""
        return self._stopped.wait(timeout)

    def set_serving(self, serving: bool) -> None:
        """Reports SERVING (or NOT_SERVING) for "" and every storefront service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.app.service_names):
            self.health.set(name, status)

    def _register_instance(self) -> None:
        """Registers this process as a live instance and keeps its heartbeat (domain/instances):
        the claims it makes are taken over within seconds if it dies."""
        db = self.app.db
        with db.connection_context():
            instance_id = instances.register()

        def beat() -> None:
            # While the database is down the health watch says so; a missed beat needs no line.
            with contextlib.suppress(peewee.PeeweeException), db.connection_context():
                instances.heartbeat(instance_id)

        self._instance_id = instance_id
        self._heartbeat = Job("instance-heartbeat", instances.HEARTBEAT_SECONDS, beat)
        self._heartbeat.start()

    def _retire_instance(self) -> None:
        """Stops the heartbeat and deletes the instance, now that its calls have finished."""
        if self._heartbeat is None or self._instance_id is None:
            return
        self._heartbeat.stop()
        self._heartbeat.join(timeout=self.app.settings.health_check_seconds + 1)
        # Best effort: an instance left behind is dead once its heartbeat is old.
        with contextlib.suppress(Exception), self.app.db.connection_context():
            instances.retire(self._instance_id)

    def _server(self) -> BuiltServer:
        if self._built is None:
            raise RuntimeError("the server is built when the runtime starts")
        return self._built

    def _watch_database(self) -> None:
        """Reports NOT_SERVING while the database is unreachable, SERVING when it is back."""
        settings, db = self.app.settings, self.app.db
        serving = True
        while not self._stopping.wait(settings.health_check_seconds):
            healthy = database_reachable(db)
            if not healthy:
                # Idle pooled connections may be dead (or, on SQLite, still open on a file that
                # is gone): drop them so calls reconnect and fail or recover honestly.
                close_idle_connections(db)
            if healthy != serving and not self._stopping.is_set():
                log.warning("database %s", "reachable again" if healthy else "unreachable")
                self.set_serving(healthy)
                serving = healthy
