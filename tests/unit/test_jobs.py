"""Job: a pass every interval until stopped; a failing pass is logged and the loop goes on."""

from __future__ import annotations

import logging
import threading

import pytest

from server.jobs import Job

WAIT_SECONDS = 10.0


class Passes:
    """A run_once that counts its passes, fails the ones asked to, and signals each one."""

    def __init__(self, failing: set[int] | None = None, wanted: int = 3) -> None:
        self.count = 0
        self.failing = failing or set()
        self.wanted = wanted
        self.enough = threading.Event()

    def __call__(self) -> int:
        self.count += 1
        if self.count >= self.wanted:
            self.enough.set()
        if self.count in self.failing:
            raise RuntimeError(f"pass {self.count} failed")
        return self.count


def test_a_job_runs_a_pass_every_interval_until_stopped() -> None:
    passes = Passes()
    job = Job("counter", 0.001, passes)
    job.start()
    assert passes.enough.wait(WAIT_SECONDS)
    job.stop()
    job.join(WAIT_SECONDS)
    assert job._thread is not None and not job._thread.is_alive()
    assert passes.count >= 3


def test_a_failing_pass_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    passes = Passes(failing={1, 2})
    job = Job("flaky", 0.001, passes)
    with caplog.at_level(logging.ERROR):
        job.start()
        assert passes.enough.wait(WAIT_SECONDS)
        job.stop()
        job.join(WAIT_SECONDS)
    failures = [
        r for r in caplog.records if r.getMessage() == "flaky: pass failed; retrying next interval"
    ]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_an_interval_of_zero_runs_no_loop_but_a_pass_can_be_run_directly() -> None:
    passes = Passes()
    job = Job("off", 0, passes)
    assert not job.enabled
    job.start()
    job.stop()
    job.join(WAIT_SECONDS)
    assert passes.count == 0
    assert job.run_once() == 1


def test_stop_before_the_first_interval_runs_no_pass() -> None:
    passes = Passes()
    job = Job("slow", 3600, passes)
    job.start()
    job.stop()
    job.join(WAIT_SECONDS)
    assert job._thread is not None and not job._thread.is_alive()
    assert passes.count == 0


def test_wake_runs_a_pass_at_once_and_wakes_during_the_pause_make_one_pass() -> None:
    passes = Passes(wanted=1)
    job = Job("woken", 3600, passes, min_pause=0.3)
    job.start()
    job.wake()
    assert passes.enough.wait(WAIT_SECONDS)  # long before the hour is up
    for _ in range(5):
        job.wake()  # all within the pause after the first pass
    second = Passes(wanted=1)
    job.run_once = second
    assert second.enough.wait(WAIT_SECONDS)
    job.stop()
    job.join(WAIT_SECONDS)
    assert job._thread is not None and not job._thread.is_alive()
    assert (passes.count, second.count) == (1, 1)
