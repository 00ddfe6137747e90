"""Payment and checkout metrics, and a gateway wrapper that times every provider call."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from server.payments.gateway import Charge, PaymentGateway, Refund

T = TypeVar("T")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class CommerceMetrics:
    """storefront_* domain metrics of one server, in its registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.orders_placed = Counter(
            "storefront_orders_placed_total",
            "Orders that reached PAID (at checkout, or settled later by the reconciler), by "
            "currency.",
            ("currency",),
            registry=registry,
        )
        self.checkout_failures = Counter(
            "storefront_checkout_failures_total",
            "PlaceOrder calls that failed, by error reason (OUT_OF_STOCK, PAYMENT_DECLINED...).",
            ("reason",),
            registry=registry,
        )
        self.payment_seconds = Histogram(
            "storefront_payment_provider_seconds",
            "Time spent in payment provider calls (retries included), by operation and outcome.",
            ("operation", "outcome"),
            buckets=_BUCKETS,
            registry=registry,
        )

    def observe_order_event(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """Counts an order that reached PAID, from its outbox event (`order.payment_captured`)."""
        if event_type == PAID_EVENT:
            self.orders_placed.labels(str(payload["currency"])).inc()


# The outbox event of an order reaching PAID (see domain.orders.outbox_event_type).
PAID_EVENT = "order.payment_captured"


class MeasuredGateway:
    """A PaymentGateway that records each call's duration and outcome, then delegates."""

    def __init__(self, gateway: PaymentGateway, metrics: CommerceMetrics) -> None:
        self.gateway = gateway
        self._seconds = metrics.payment_seconds

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return call()
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._seconds.labels(operation, outcome).observe(time.perf_counter() - start)

    def charge(
        self,
        *,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        payment_method_token: str,
        description: str,
    ) -> Charge:
        """Times PaymentGateway.charge."""
        return self._timed(
            "charge",
            lambda: self.gateway.charge(
                idempotency_key=idempotency_key,
                amount_minor=amount_minor,
                currency=currency,
                payment_method_token=payment_method_token,
                description=description,
            ),
        )

    def refund(self, *, idempotency_key: str, charge_id: str, amount_minor: int) -> Refund:
        """Times PaymentGateway.refund."""
        return self._timed(
            "refund",
            lambda: self.gateway.refund(
                idempotency_key=idempotency_key, charge_id=charge_id, amount_minor=amount_minor
            ),
        )

    def find_charge(self, *, idempotency_key: str) -> Charge | None:
        """Times PaymentGateway.find_charge."""
        return self._timed(
            "find_charge", lambda: self.gateway.find_charge(idempotency_key=idempotency_key)
        )
