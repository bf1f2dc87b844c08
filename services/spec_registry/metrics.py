"""Prometheus metrics of the registry (process-wide, like the default prometheus-client registry)."""

from __future__ import annotations

from prometheus_client import Counter, Enum, Gauge

REQUESTS = Counter(
    "berth_registry_requests_total", "HTTP requests answered, by route template and status.", ["method", "route", "status"]
)
SPEC_VERSIONS_ACCEPTED = Counter("berth_registry_spec_versions_accepted_total", "Spec versions committed.")
OUTBOX_LAG = Gauge("berth_registry_outbox_lag", "Outbox events committed but not yet published.")
EVENTS_PUBLISHED = Counter("berth_registry_events_published_total", "Outbox events published to JetStream.")
OUTBOX_SET_ASIDE = Gauge(
    "berth_registry_outbox_set_aside", "Outbox events set aside: they cannot be published (see docs/operations.md)."
)
EVENTS_SET_ASIDE = Counter(
    "berth_registry_events_set_aside_total", "Outbox events set aside since the start, by kind of reason.", ["kind"]
)
OUTBOX_RELAY = Enum(
    "berth_registry_outbox_relay",
    "Whether this registry relays the outbox or stands by (another one holds the relay lock).",
    states=["starting", "relaying", "standby"],
)
