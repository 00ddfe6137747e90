"""storefront_webhook_* metrics: attempts by outcome, delivery lag and parked deliveries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# From a fraction of a second (the dispatcher's own pace) to the hours of the retry schedule.
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000)


class WebhookMetrics:
    """The dispatcher's metrics, in a server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "storefront_webhook_attempts_total",
            "Webhook requests tried, by outcome: succeeded, http_status (a non-2xx answer), "
            "connection (no answer), refused (an address the policy forbids).",
            ("outcome",),
            registry=registry,
        )
        self.lag = Histogram(
            "storefront_webhook_delivery_lag_seconds",
            "From an event's commit to its successful delivery to an endpoint.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.parked = Counter(
            "storefront_webhook_parked_total",
            "Deliveries parked after their last attempt failed (RedeliverWebhookEvent re-drives "
            "them).",
            registry=registry,
        )
