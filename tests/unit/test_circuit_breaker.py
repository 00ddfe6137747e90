"""The circuit breaker's state machine, step by step on a fake clock."""

from __future__ import annotations

import logging
import threading

import pytest

from server.payments.circuit_breaker import CircuitBreaker, CircuitState

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Steps: "fail"/"ok" record a result, "allow"/"deny" assert what allow() answers, "+N" moves the
# clock N seconds. Each step is paired with the state expected right after it.
# The breaker opens after 3 consecutive failures and offers a trial after 30 seconds.
OPENED = [("fail", CLOSED), ("fail", CLOSED), ("fail", OPEN)]
HALF_OPENED = [*OPENED, ("+30", OPEN), ("allow", HALF_OPEN)]

SCENARIOS: dict[str, list[tuple[str, CircuitState]]] = {
    "starts closed and allows calls": [("allow", CLOSED), ("ok", CLOSED), ("allow", CLOSED)],
    "opens after the threshold of consecutive failures": [*OPENED, ("deny", OPEN)],
    "a success resets the failure count": [
        ("fail", CLOSED),
        ("fail", CLOSED),
        ("ok", CLOSED),
        ("fail", CLOSED),
        ("fail", CLOSED),
        ("allow", CLOSED),
    ],
    "stays open for the whole cool-down": [*OPENED, ("+29.9", OPEN), ("deny", OPEN)],
    "after the cool-down lets exactly one trial through": [*HALF_OPENED, ("deny", HALF_OPEN)],
    "a successful trial closes it": [*HALF_OPENED, ("ok", CLOSED), ("allow", CLOSED)],
    "a successful trial resets the count": [
        *HALF_OPENED,
        ("ok", CLOSED),
        ("fail", CLOSED),
        ("fail", CLOSED),
        ("allow", CLOSED),
    ],
    "a failed trial opens it for a new cool-down": [
        *HALF_OPENED,
        ("+10", HALF_OPEN),
        ("fail", OPEN),
        ("+29", OPEN),
        ("deny", OPEN),
        ("+1", OPEN),
        ("allow", HALF_OPEN),
    ],
    "a trial that never reports is replaced after the cool-down": [
        *HALF_OPENED,
        ("+29", HALF_OPEN),
        ("deny", HALF_OPEN),
        ("+1", HALF_OPEN),
        ("allow", HALF_OPEN),
        ("deny", HALF_OPEN),
    ],
    "late results of calls started before it opened are ignored": [
        *OPENED,
        ("ok", OPEN),
        ("fail", OPEN),
        ("+30", OPEN),  # the late failure did not restart the cool-down
        ("allow", HALF_OPEN),
    ],
}


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_circuit_breaker_state_machine(steps: list[tuple[str, CircuitState]]) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=30, clock=clock)
    for number, (step, expected) in enumerate(steps, start=1):
        if step == "fail":
            breaker.record_failure()
        elif step == "ok":
            breaker.record_success()
        elif step in ("allow", "deny"):
            assert breaker.allow() is (step == "allow"), f"step {number}: {step}"
        else:
            clock.now += float(step)
        assert breaker.state is expected, f"step {number}: {step}"


def test_a_threshold_of_one_opens_on_the_first_failure() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=5, clock=FakeClock())
    breaker.record_failure()
    assert breaker.state is OPEN
    assert not breaker.allow()


def test_it_says_how_long_until_the_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=30, clock=clock)
    assert breaker.seconds_until_trial() == 0
    breaker.record_failure()
    clock.now += 12
    assert breaker.seconds_until_trial() == pytest.approx(18)
    clock.now += 20
    assert breaker.seconds_until_trial() == 0


def test_only_one_of_many_concurrent_callers_gets_the_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=30, clock=clock)
    breaker.record_failure()
    clock.now += 30
    start = threading.Barrier(32)
    answers: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait()
        allowed = breaker.allow()
        with lock:
            answers.append(allowed)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers.count(True) == 1
    assert breaker.state is HALF_OPEN


def test_concurrent_failures_open_it_once(caplog: pytest.LogCaptureFixture) -> None:
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(
        failure_threshold=5, reset_seconds=30, clock=FakeClock(), on_state_change=changes.append
    )
    caplog.set_level(logging.INFO, logger="storefront.payments")
    threads = [threading.Thread(target=breaker.record_failure) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.state is OPEN
    assert changes == [OPEN]
    opened = [r for r in caplog.records if "is now open" in r.getMessage()]
    assert len(opened) == 1
    assert opened[0].levelno == logging.WARNING


def test_state_changes_are_reported_in_order() -> None:
    clock = FakeClock()
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(
        failure_threshold=1, reset_seconds=1, clock=clock, on_state_change=changes.append
    )
    breaker.record_failure()
    clock.now += 1
    breaker.allow()
    breaker.record_success()
    assert changes == [OPEN, HALF_OPEN, CLOSED]


@pytest.mark.parametrize(("threshold", "reset"), [(0, 30.0), (-1, 30.0), (3, 0.0), (3, -1.0)])
def test_nonsense_settings_are_refused(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, reset_seconds=reset)
