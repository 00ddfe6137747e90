"""Password hashing with argon2id, at bounded concurrency."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import argon2

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
# glibc's mallopt parameter, and the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def return_hash_memory_to_the_os() -> bool:
    """Makes each argon2 work area (19 MiB) its own mapping, given back to the OS when freed.

    glibc raises its mmap threshold after the first such area is freed, so later ones come from
    the calling thread's heap arena and stay resident: measured, 64 hashes on 16 threads left a
    process at 326 MiB instead of 15 MiB. A fixed threshold stops that. Returns False where it
    cannot be set (not glibc).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


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
