"""Rate limits per caller and per class of method, in storage every process can share.

The caller is the principal of a valid access token, else the client's address. This
interceptor sits before the database scope and auth, so a refused call never takes a database
connection, and so it cannot use the principal auth sets: it verifies the token itself, which
costs one signature check and no query. A token whose signature and claims are valid counts
for its subject even if its session was revoked since (auth refuses the call right after); any
other token counts for the address, like an anonymous call.

Counters live where STOREFRONT_RATE_LIMIT_STORAGE_URL says: memory:// for one process, redis://
for several, which then share each caller's budget. The sliding-window counter is used: two
counters per key and O(1) work per call whatever the limit (a moving window keeps one entry per
call), and no burst of twice the limit across a window boundary as a fixed window would allow;
the previous window's count is weighted by how much of it still overlaps, so the limit holds
approximately over any rolling window. If the storage cannot be reached the call is let
through (fail open): an outage of the limiter's storage should not take the whole API down.
Each such call counts in storefront_rate_limit_storage_errors_total, and a WARNING is logged at
most every STORAGE_WARNING_INTERVAL_SECONDS.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import CollectorRegistry, Counter

from server.domain.tokens import TokenService
from server.errors import DomainError, ResourceExhausted
from server.interceptors.auth import PUBLIC_INFRASTRUCTURE_SERVICES, bearer_token
from server.interceptors.base import Call, MethodInfo, ScopeInterceptor
from server.interceptors.client_address import peer_address

log = logging.getLogger("storefront.rate_limit")

# Redis is asked on every call: an unreachable one must cost little before the call goes on.
STORAGE_TIMEOUT_SECONDS = 0.25
STORAGE_WARNING_INTERVAL_SECONDS = 10.0


class MethodClass(enum.StrEnum):
    """Classes of RPC with a budget of their own."""

    SIGN_IN = "sign_in"
    READ = "read"
    WRITE = "write"
    CHECKOUT = "checkout"


# Calls that check a password or a credential: the guessing surface.
SIGN_IN_METHODS = frozenset(
    {
        "/storefront.v1.IdentityService/Login",
        "/storefront.v1.IdentityService/RegisterUser",
        "/storefront.v1.IdentityService/RefreshSession",
        "/storefront.v1.IdentityService/IssueServiceToken",
        "/storefront.v1.IdentityService/ChangePassword",
        "/storefront.v1.IdentityService/RequestPasswordReset",
        "/storefront.v1.IdentityService/ResetPassword",
        "/storefront.v1.IdentityService/VerifyEmail",
    }
)
CHECKOUT_SERVICE = "storefront.v1.CheckoutService"
READ_METHOD_PREFIXES = ("Get", "List", "Search", "BatchGet", "Convert")


def method_class(full_name: str) -> MethodClass:
    """Returns the class of "/package.Service/Method" (computed once per RPC at start-up)."""
    service, _, method = full_name.lstrip("/").rpartition("/")
    if full_name in SIGN_IN_METHODS:
        return MethodClass.SIGN_IN
    if service == CHECKOUT_SERVICE:
        return MethodClass.CHECKOUT
    if method.startswith(READ_METHOD_PREFIXES):
        return MethodClass.READ
    return MethodClass.WRITE


def method_classes(full_names: Iterable[str]) -> dict[str, MethodClass]:
    """Returns the class of every RPC named."""
    return {name: method_class(name) for name in full_names}


class RateLimitMetrics:
    """Refused calls by class, and calls let through because the storage failed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.limited = Counter(
            "storefront_rate_limited_total",
            "Calls refused with RESOURCE_EXHAUSTED (RATE_LIMITED), by method class.",
            ("limit_class",),
            registry=registry,
        )
        self.storage_errors = Counter(
            "storefront_rate_limit_storage_errors_total",
            "Calls let through unchecked because the rate-limit storage failed.",
            registry=registry,
        )


class RateLimiter:
    """Counts calls per (class, caller) in the configured storage; fails open."""

    def __init__(
        self,
        *,
        storage_url: str,
        key_prefix: str,
        limits: Mapping[MethodClass, str],
        metrics: RateLimitMetrics,
    ) -> None:
        options: dict[str, float | str | bool] = {}
        if storage_url.startswith("redis"):
            options = {
                "key_prefix": key_prefix,
                "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
                "socket_timeout": STORAGE_TIMEOUT_SECONDS,
            }
        self.storage = storage_from_string(storage_url, wrap_exceptions=True, **options)
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self.items: dict[MethodClass, RateLimitItem] = {
            cls: parse(text) for cls, text in limits.items()
        }
        self.key_prefix = key_prefix
        self.metrics = metrics
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def hit(self, method_class: MethodClass, caller: str) -> float | None:
        """Counts one call; returns None if it is allowed, else the seconds until it would be."""
        item = self.items[method_class]
        identifiers = (self.key_prefix, method_class.value, caller)
        try:
            if self.strategy.hit(item, *identifiers):
                return None
            reset_time, _ = self.strategy.get_window_stats(item, *identifiers)
        except StorageError as exc:
            self._storage_failed(exc)
            return None
        self.metrics.limited.labels(method_class.value).inc()
        # Whole milliseconds, never 0: a caller told to wait 0 s would retry at once.
        return max(math.ceil((reset_time - time.time()) * 1000) / 1000, 0.001)

    def _storage_failed(self, exc: StorageError) -> None:
        self.metrics.storage_errors.inc()
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < STORAGE_WARNING_INTERVAL_SECONDS:
                return
            self._warned_at = now
        log.warning(
            "rate-limit storage failed; letting calls through unchecked: %s",
            exc.storage_error,
        )


class RateLimitInterceptor(ScopeInterceptor):
    """Refuses a call over its caller's budget for its class with RESOURCE_EXHAUSTED
    (RATE_LIMITED) and a RetryInfo; health and reflection are exempt."""

    def __init__(
        self,
        limiter: RateLimiter,
        classes: Mapping[str, MethodClass],
        tokens: TokenService,
    ) -> None:
        self.limiter = limiter
        self.classes = classes
        self.tokens = tokens

    def applies_to(self, method: MethodInfo) -> bool:
        return method.service not in PUBLIC_INFRASTRUCTURE_SERVICES

    def enter(self, call: Call) -> None:
        # An RPC without a class has no access rule either: auth refuses it, counted as a write.
        limit_class = self.classes.get(call.method.full_name, MethodClass.WRITE)
        delay = self.limiter.hit(limit_class, self._caller(call))
        if delay is not None:
            raise ResourceExhausted(
                "Too many requests; retry later.",
                reason="RATE_LIMITED",
                metadata={"limit_class": limit_class.value},
                retry_delay_seconds=delay,
            )

    def _caller(self, call: Call) -> str:
        """Returns "principal:<subject>" for a valid token, else "address:<client address>"."""
        try:
            token = bearer_token(call.context)
            if token is not None:
                return f"principal:{self.tokens.verify(token).subject}"
        except DomainError:
            pass  # a bad token: auth refuses the call; until then it counts for the address
        address = call.info.client_address if call.info is not None else ""
        return f"address:{address or peer_address(call.context.peer() or '')}"
