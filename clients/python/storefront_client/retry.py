"""Retries unary-unary calls that failed with UNAVAILABLE, with jittered exponential backoff."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import grpc

from storefront_client._call_details import CallDetails


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently UNAVAILABLE unary calls are retried."""

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        """Rejects settings that would retry forever or never wait sensibly."""
        if not 1 <= self.max_attempts <= 10:
            raise ValueError("max_attempts must be between 1 and 10")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def backoff(self, retry: int, rand: float) -> float:
        """Returns the pause before retry number `retry` (1-based) for a `rand` in [0, 1)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return ceiling * rand  # "full jitter", as in gRPC's own retry design


class RetryInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Retries UNAVAILABLE unary-unary calls within the call's own deadline.

    Streaming calls never pass through it. A retried call waits for each attempt's outcome, so a
    `.future()` call made through it blocks until its result is known.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates the interceptor; `sleep`, `rand` and `monotonic` are replaceable in tests."""
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._rand = rand
        self._monotonic = monotonic

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        """Makes the call, repeating it while it fails with UNAVAILABLE and attempts remain."""
        details = CallDetails.of(client_call_details)
        deadline = None if details.timeout is None else self._monotonic() + details.timeout
        attempt = 1
        while True:
            outcome = continuation(details, request)
            if outcome.code() is not grpc.StatusCode.UNAVAILABLE:
                return outcome
            if attempt >= self._policy.max_attempts:
                return outcome
            pause = self._policy.backoff(attempt, self._rand())
            if deadline is not None:
                remaining = deadline - self._monotonic() - pause
                if remaining <= 0:
                    return outcome  # no time left for another attempt: report the real failure
                details = details.replace(timeout=remaining)
            self._sleep(pause)
            attempt += 1
