"""`storefront serve --workers N`: a supervisor and N forked workers sharing the gRPC port.

The supervisor builds the app once (`create_app`: settings, schema check, keys, rules, payment
gateway; no gRPC object), so a bad setting stops it with the line and exit status of a single
`storefront serve`, and development keys are generated once. It closes every database connection,
then forks. Each worker builds and binds its own grpc.Server after the fork (`Runtime.start`) with
`grpc.so_reuseport` on, so gRPC's C core is never initialised in the supervisor and the kernel
spreads new connections over the workers; connections are aged out (GOAWAY after
STOREFRONT_MAX_CONNECTION_AGE_SECONDS) so that long-lived clients spread as well.

The supervisor stays single-threaded and holds no socket: every fork, restarts included, copies a
process in which no other thread can be holding a lock. That is why /metrics is served by a child
of its own (the metrics child) rather than by a thread of the supervisor.

- Boot: each child reports through a pipe the port it serves, or the exception that stopped it.
  A failed boot (the port taken, say) stops the other children and is raised here, so the command
  prints that one line and exits as `storefront serve` would (2 for a configuration error). This
  holds for a replacement too: a worker that cannot boot again means the machine changed.
- A child that dies after booting is replaced; after RESTART_DELAY_SECONDS if it lived less
  than STABLE_SECONDS, so that a crash loop does not spin.
- SIGTERM/SIGINT: every worker drains as a single process does (health NOT_SERVING, the drain
  period, in-flight calls finish, the pool closes); the metrics child stops after the last
  worker, so the final counts can still be scraped; the supervisor exits 0. A child still running
  STOP_MARGIN_SECONDS after drain and grace is killed. Workers get SIGTERM if the supervisor dies.
- Every worker runs the background jobs: what a pass works on is leased to one process at a
  time (domain/work_leases.py), and each worker is a live instance (domain/instances.py) whose
  idempotency claims are taken over within seconds if it is killed.
- Metrics: prometheus_client's multiprocess mode. Every process writes its values to files in
  `<data dir>/metrics-multiproc` (emptied at start); the metrics child serves their sum with
  MultiProcessCollector under the same names as one process; a dead worker's live gauges are
  dropped (`mark_process_dead`), its counters stay in the sums.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from prometheus_client import CollectorRegistry, multiprocess, values

from server.app import App, create_app
from server.config import ConfigError, Settings
from server.db import close_database
from server.runtime import start_metrics_endpoint

log = logging.getLogger("storefront")

METRICS_DIR_NAME = "metrics-multiproc"
# A child that served at least this long is replaced at once; a younger one after the delay.
STABLE_SECONDS = 10.0
RESTART_DELAY_SECONDS = 1.0
# On top of the drain and grace periods: what a worker does after its server stopped (jobs and
# the health watch joined, the pool closed).
STOP_MARGIN_SECONDS = 15.0
# The slot of the metrics child; workers are 0..N-1.
METRICS_SLOT = -1
_PR_SET_PDEATHSIG = 1

Announce = Callable[[Settings, int, int | None], None]


def serve(settings: Settings, announce: Announce) -> int:
    """Serves with `settings.workers` processes until SIGTERM/SIGINT drained them; returns 0.

    `announce(settings, port, metrics_port)` is called once every child serves. Raises what
    stopped the app or a child from booting, as a single `storefront serve` would.
    """
    if int(settings.grpc_address.rpartition(":")[2]) == 0:
        raise ConfigError(
            f"STOREFRONT_GRPC_ADDRESS: several workers share one port; got {settings.grpc_address}"
        )
    metrics_dir = use_multiprocess_metrics(settings.data_dir / METRICS_DIR_NAME)
    app = create_app(settings)
    # Each process opens its own connections: none may be shared across the fork.
    close_database()
    return Supervisor(app, metrics_dir).run(announce)


def use_multiprocess_metrics(directory: Path) -> Path:
    """Makes every metric value created from now on live in a file of `directory` (emptied).

    prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported, which the command has
    done already; setting the value class has that effect on every value created afterwards, in
    this process and in the workers (who create theirs, per pid, at their first call).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


@dataclass
class _Child:
    slot: int
    pid: int
    started: float
    # Open until the child has said which port it serves, or why it could not.
    report: Connection | None

    @property
    def name(self) -> str:
        return "metrics endpoint" if self.slot == METRICS_SLOT else f"worker {self.slot}"


class Supervisor:
    """Forks the workers and the metrics child, replaces the dead and drains them on a signal."""

    def __init__(self, app: App, metrics_dir: Path) -> None:
        self.app = app
        self.settings = app.settings
        self.metrics_dir = metrics_dir
        self._children: dict[int, _Child] = {}
        self._ports: dict[int, int] = {}
        self._restarts: dict[int, float] = {}
        self._stop_signal: int | None = None
        self._failure: BaseException | None = None
        self._deadline: float | None = None
        self._metrics_stopped = False
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._pid = os.getpid()

    def run(self, announce: Announce) -> int:
        """Supervises until stopped; returns 0, or raises what stopped a child's boot."""
        self._catch_signals()
        slots = list(range(self.settings.workers))
        if self.settings.metrics_address:
            slots.append(METRICS_SLOT)
        log.info("supervising %d workers", self.settings.workers, extra={"pid": os.getpid()})
        try:
            for slot in slots:
                self._spawn(slot)
            announced = False
            while True:
                if self._deadline is None and (self._stop_signal or self._failure):
                    self._begin_stop()
                if self._deadline is not None:
                    if not any(c.slot != METRICS_SLOT for c in self._children.values()):
                        self._stop_metrics_child()
                    if not self._children:
                        if self._failure is not None:
                            raise self._failure
                        return 0
                    if time.monotonic() >= self._deadline:
                        self._kill_remaining()
                        self._deadline = math.inf
                elif not announced and self._serving(slots):
                    announce(self.settings, self._ports[0], self._ports.get(METRICS_SLOT))
                    announced = True
                self._wait_for_news()
                self._read_reports()
                self._reap()
                self._restart_due()
        finally:
            self._kill_remaining()
            self._release_signals()

    # --- the supervisor's side ----------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        reader, writer = Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:
            reader.close()
            self._run_child(slot, writer)
        writer.close()
        self._children[pid] = _Child(slot, pid, time.monotonic(), reader)

    def _catch_signals(self) -> None:
        """Turns SIGCHLD, SIGTERM and SIGINT into bytes on the wake-up pipe the loop waits on."""
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _release_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _begin_stop(self) -> None:
        settings = self.settings
        self._deadline = time.monotonic() + (
            settings.drain_seconds + settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        )
        self._restarts.clear()
        if self._stop_signal is not None:
            log.info(
                "signal %s: draining %d workers",
                signal.Signals(self._stop_signal).name,
                settings.workers,
            )
        for child in self._children.values():
            if child.slot != METRICS_SLOT:
                _signal(child.pid, signal.SIGTERM)

    def _stop_metrics_child(self) -> None:
        if self._metrics_stopped:
            return
        self._metrics_stopped = True
        for child in self._children.values():
            _signal(child.pid, signal.SIGTERM)

    def _kill_remaining(self) -> None:
        for child in self._children.values():
            log.warning("%s (pid %d) did not stop in time: killed", child.name, child.pid)
            _signal(child.pid, signal.SIGKILL)

    def _serving(self, slots: list[int]) -> bool:
        """Whether every slot has a child that reported its port (none is waiting for one)."""
        reported = {c.slot for c in self._children.values() if c.report is None}
        return reported == set(slots) and not self._restarts

    def _wait_for_news(self) -> None:
        """Waits for a signal, a child's report or the next timer (restart or stop deadline)."""
        timers = [*self._restarts.values()]
        if self._deadline is not None and self._deadline != math.inf:
            timers.append(self._deadline)
        timeout = max(0.0, min(timers) - time.monotonic()) if timers else None
        reports = [c.report for c in self._children.values() if c.report is not None]
        wait([self._wakeup_r, *reports], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    def _read_reports(self) -> None:
        for child in list(self._children.values()):
            if child.report is not None and child.report.poll():
                self._take_report(child)

    def _take_report(self, child: _Child) -> BaseException | None:
        """Reads the child's report: records its port, or returns what stopped its boot."""
        assert child.report is not None
        try:
            message: Any = child.report.recv()
        except EOFError:
            return None  # it died without a word: reaping it says how
        except Exception as exc:
            message = ChildProcessError(f"{child.name} could not boot: {exc!r}")
        child.report.close()
        child.report = None
        if isinstance(message, BaseException):
            self._fail(message)
            return message
        self._ports[child.slot] = message
        log.info("%s serving", child.name, extra={"pid": child.pid})
        return None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                continue
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            ended = _describe(status)
            if child.report is not None and self._take_report(child) is not None:
                continue  # it said why it could not boot
            if child.report is not None:
                child.report.close()
                if self._deadline is None:
                    self._fail(
                        ChildProcessError(f"{child.name} (pid {pid}) {ended} before serving")
                    )
            elif self._deadline is not None:
                log.info("%s (pid %d) %s", child.name, pid, ended)
            else:
                lived = time.monotonic() - child.started
                delay = 0.0 if lived >= STABLE_SECONDS else RESTART_DELAY_SECONDS
                log.warning("%s (pid %d) %s; replacing it", child.name, pid, ended)
                self._restarts[child.slot] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._restarts.items()):
            if due <= now and self._deadline is None:
                del self._restarts[slot]
                self._spawn(slot)

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error

    # --- the child's side ---------------------------------------------------------------------

    def _run_child(self, slot: int, report: Connection) -> NoReturn:
        """Runs a worker or the metrics child in the forked process; never returns."""
        code = 1
        try:
            self._leave_supervisor()
            if slot == METRICS_SLOT:
                code = self._serve_metrics(report)
            else:
                code = self._serve_worker(slot, report)
        except BaseException:
            log.exception("%s failed", "metrics endpoint" if slot == METRICS_SLOT else "worker")
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _leave_supervisor(self) -> None:
        """Drops what the fork copied of the supervisor: its signal handling and pipes."""
        signal.set_wakeup_fd(-1)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        # Until the runtime handles them, SIGTERM and SIGINT end a booting child at once.
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for sibling in self._children.values():
            if sibling.report is not None:
                sibling.report.close()
        _die_with_parent(self._pid)

    def _serve_worker(self, slot: int, report: Connection) -> int:
        app = dataclasses.replace(
            self.app,
            # The metrics child serves every worker's metrics.
            settings=dataclasses.replace(self.settings, metrics_address=""),
        )
        runtime = app.runtime
        try:
            runtime.start()
        except Exception as exc:
            _send(report, exc)
            return 1
        runtime.stop_on_signals()
        _send(report, runtime.port)
        runtime.wait()
        runtime.wait_stopped()
        return 0

    def _serve_metrics(self, report: Connection) -> int:
        # Blocked before the HTTP thread starts, so that only sigwait below receives them.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        try:
            httpd = start_metrics_endpoint(self.settings.metrics_address, registry)
        except ConfigError as exc:
            _send(report, exc)
            return 1
        _send(report, httpd.server_port)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        httpd.shutdown()
        httpd.server_close()
        return 0


def _send(report: Connection, message: object) -> None:
    """Sends the child's report and closes the pipe; an unpicklable error is sent as text."""
    try:
        report.send(message)
    except Exception:
        report.send(ChildProcessError(str(message)))
    report.close()


def _die_with_parent(parent: int) -> None:
    """Asks Linux to SIGTERM this child when the supervisor dies: no orphan keeps the port."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that only makes the signal reach the wake-up pipe."""
