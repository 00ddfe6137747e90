"""In-process cache of product reads: bounded LRU, TTL, invalidated by this process's writes.

GetProduct and BatchGetProducts read through it; ListProducts takes a product from it only at
the version its page query just read (products.list_), so lists are never stale.

The TTL is the staleness bound across processes and replicas: a write made elsewhere is seen here
at most `ttl_seconds` later. Writes made in this process invalidate at once: each emits an outbox
event, and `on_committed` (subscribed by the app) drops the product as the write commits.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from server.domain import outbox

DEFAULT_TTL_SECONDS = 5.0
DEFAULT_MAX_SIZE = 10_000

# Every live cache in the process, so a write anywhere in it reaches all of them.
_caches: weakref.WeakSet[ProductCache] = weakref.WeakSet()
_caches_lock = threading.Lock()


def invalidate(product_ids: Iterable[str]) -> None:
    """Drops the given products from every cache in this process."""
    ids = list(product_ids)
    if not ids:
        return
    with _caches_lock:
        caches = list(_caches)
    for cache in caches:
        cache.invalidate(ids)


def on_committed(event: outbox.Event) -> None:
    """Outbox consumer: a committed product change drops the product from every cache here."""
    if event.aggregate_type == outbox.PRODUCT:
        invalidate([event.aggregate_id])


class ProductCache:
    """A thread-safe LRU of product id -> value with a time-to-live and hit/miss counters."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_size: int = DEFAULT_MAX_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds < 0 or max_size < 1:
            raise ValueError("need ttl_seconds >= 0 and max_size >= 1")
        self.ttl_seconds = ttl_seconds
        self.max_size = max_size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        # Bumped by every invalidation: a load that began before one must not be stored, or a
        # value read just before a write commits could outlive the write's invalidation.
        self._generation = 0
        requests = Counter(
            "storefront_product_cache_requests_total",
            "Product reads answered from the in-process cache (hit) or the database (miss).",
            ("result",),
            registry=registry,
        )
        self._hits = requests.labels("hit")
        self._misses = requests.labels("miss")
        with _caches_lock:
            _caches.add(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def generation(self) -> int:
        """Returns the invalidation count; give it to `put` with a value loaded after reading it."""
        with self._lock:
            return self._generation

    def get(self, product_id: str) -> Any | None:
        """Returns the cached value, or None (counted as a miss) if absent or expired."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(product_id)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(product_id)
                self._hits.inc()
                return entry[1]
            if entry is not None:
                del self._entries[product_id]
            self._misses.inc()
            return None

    def put(self, product_id: str, value: Any, *, generation: int) -> None:
        """Stores a value loaded after `generation()` returned `generation`, unless since stale."""
        if self.ttl_seconds == 0:
            return
        expires = self._clock() + self.ttl_seconds
        with self._lock:
            if generation != self._generation:
                return
            self._entries[product_id] = (expires, value)
            self._entries.move_to_end(product_id)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def get_or_load(self, product_id: str, load: Callable[[str], Any | None]) -> Any | None:
        """Returns the cached value or `load(product_id)`, caching what is not None."""
        value = self.get(product_id)
        if value is not None:
            return value
        generation = self.generation()
        value = load(product_id)
        if value is not None:
            self.put(product_id, value, generation=generation)
        return value

    def invalidate(self, product_ids: Collection[str]) -> None:
        """Drops the given products."""
        with self._lock:
            self._generation += 1
            for product_id in product_ids:
                self._entries.pop(product_id, None)

    def clear(self) -> None:
        """Drops everything."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
