"""A bounded, thread-safe memo of values that stay right for their key: the oldest goes first."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """Remembers up to `max_size` values by key, dropping the oldest entry to make room.

    For results that a key fully determines (a verified token, a product version's message):
    there is nothing to invalidate, only memory to bound. Reads take no lock.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._values: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value remembered for `key`, or None."""
        return self._values.get(key)

    def put(self, key: K, value: V) -> None:
        """Remembers `value` for `key`."""
        with self._lock:
            if key not in self._values and len(self._values) >= self.max_size:
                del self._values[next(iter(self._values))]  # the oldest
            self._values[key] = value

    def __len__(self) -> int:
        return len(self._values)
