"""A thread-safe circuit breaker: fail fast while a dependency keeps failing, probe it at times."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("storefront.payments")

# The state machine, in one place:
#   CLOSED    every call is allowed; `failure_threshold` consecutive failures -> OPEN.
#             A success resets the count.
#   OPEN      no call is allowed until `reset_seconds` have passed since it opened; the first
#             allow() after that -> HALF_OPEN and is the one trial call.
#   HALF_OPEN only the trial call is allowed. Its success -> CLOSED, its failure -> OPEN again
#             (a new cool-down). A trial that never reports back is replaced by a new one after
#             `reset_seconds`, so a lost result cannot wedge the breaker.
# Results of calls that started before the breaker opened are ignored while it is OPEN.
# Every allowed call must end in record_success() or record_failure().


class CircuitState(enum.Enum):
    """Where the breaker is in its state machine."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures and refuses calls while the dependency is presumed down."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "payment-provider",
        on_state_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_seconds <= 0:
            raise ValueError("reset_seconds must be positive")
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.name = name
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started_at: float | None = None

    @property
    def state(self) -> CircuitState:
        """Returns the current state (OPEN stays OPEN until a call is attempted after cool-down)."""
        with self._lock:
            return self._state

    @property
    def consecutive_failures(self) -> int:
        """Returns the failures counted since the last success."""
        with self._lock:
            return self._failures

    def seconds_until_trial(self) -> float:
        """Returns how long until an OPEN breaker lets a trial call through (0 otherwise)."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def allow(self) -> bool:
        """Tells whether a call may go ahead now; in HALF_OPEN, grants the single trial."""
        with self._lock:
            now = self._clock()
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.OPEN:
                if now - self._opened_at < self.reset_seconds:
                    return False
                changed = self._set(CircuitState.HALF_OPEN)
                self._trial_started_at = now
            elif (
                self._trial_started_at is None or now - self._trial_started_at >= self.reset_seconds
            ):
                changed = None
                self._trial_started_at = now
            else:
                return False
        self._notify(changed)
        return True

    def record_success(self) -> None:
        """Records a call that reached a working dependency."""
        with self._lock:
            if self._state is CircuitState.OPEN:
                return
            self._failures = 0
            self._trial_started_at = None
            changed = self._set(CircuitState.CLOSED)
        self._notify(changed)

    def record_failure(self) -> None:
        """Records a call that failed because of the dependency (timeout, refused, 5xx)."""
        with self._lock:
            if self._state is CircuitState.OPEN:
                return
            self._failures += 1
            if self._state is CircuitState.CLOSED and self._failures < self.failure_threshold:
                return
            self._opened_at = self._clock()
            self._trial_started_at = None
            changed = self._set(CircuitState.OPEN)
        self._notify(changed)

    def _set(self, state: CircuitState) -> CircuitState | None:
        """Moves to `state`; returns it if that is a change (to report once the lock is free)."""
        if state is self._state:
            return None
        self._state = state
        return state

    def _notify(self, state: CircuitState | None) -> None:
        if state is None:
            return
        level = logging.WARNING if state is CircuitState.OPEN else logging.INFO
        log.log(
            level,
            "circuit breaker %s is now %s",
            self.name,
            state.value,
            extra={"breaker": self.name, "breaker.state": state.value},
        )
        if self._on_state_change is not None:
            self._on_state_change(state)
