"""Background jobs: one loop that runs a pass every interval seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("storefront")

T = TypeVar("T")


@dataclass
class Job(Generic[T]):
    """Calls `run_once` every `interval` seconds on a thread of its own, until stopped.

    A pass that raises is logged and the next one runs on time: a provider or a database that is
    down now may be back by then. An interval of 0 (or less) turns the loop off; `run_once` can
    still be called directly (the `storefront reconcile` command does). `wake` runs the next pass
    at once, but never sooner than `min_pause` after the last one ended (wake-ups in between make
    one pass).
    """

    name: str
    interval: float
    run_once: Callable[[], T]
    min_pause: float = 0.0
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _woken: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def enabled(self) -> bool:
        """Whether `start` runs the loop."""
        return self.interval > 0

    def start(self) -> None:
        """Starts the loop (if enabled); the first pass runs one interval from now."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Asks for a pass now rather than at the end of the interval."""
        self._woken.set()

    def stop(self) -> None:
        """Asks the loop to end; a pass in progress finishes first (see `join`)."""
        self._stopping.set()
        self._woken.set()

    def join(self, timeout: float | None = None) -> None:
        """Waits up to `timeout` seconds for the loop to end after `stop`."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self._woken.wait(self.interval)
            if self._stopping.is_set():
                return
            self._woken.clear()
            try:
                self.run_once()
            except Exception:
                log.exception("%s: pass failed; retrying next interval", self.name)
            if self._stopping.wait(self.min_pause):
                return
