"""Password hashing with argon2id, at bounded concurrency."""

from __future__ import annotations

import threading

import argon2

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128


class PasswordHasher:
    """Hashes and verifies passwords with OWASP's argon2id parameters (19 MiB, t=2, p=1).

    Each hash takes ~19 MiB and tens of milliseconds of CPU, so at most `concurrency` run at once
    per process; a burst of logins queues instead of exhausting memory and starving other RPCs.
    """

    def __init__(
        self, *, concurrency: int = 2, time_cost: int = 2, memory_cost_kib: int = 19 * 1024
    ) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=1, type=argon2.Type.ID
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> str:
        """Returns the argon2id hash of `password`."""
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """Whether `password` matches `password_hash`."""
        with self._slots:
            try:
                return bool(self._hasher.verify(password_hash, password))
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

    def verify_nothing(self, password: str) -> None:
        """Spends the time of one verification, so an unknown user answers like a wrong password."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hash("storefront-timing-equaliser")
        self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with older parameters and should be replaced."""
        return bool(self._hasher.check_needs_rehash(password_hash))
