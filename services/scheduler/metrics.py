"""Prometheus metrics of the scheduler, served on /metrics of its ops port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "berth_scheduler_reconcile_seconds",
    "Duration of one reconcile of one deployment.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_ERRORS = Counter("berth_scheduler_reconcile_errors_total", "Reconciles that raised.")
EVENTS_PUBLISHED = Counter("berth_scheduler_events_published_total", "Events published, by kind.", ["kind"])
DEPLOYMENTS = Gauge("berth_scheduler_deployments", "Deployments with a desired state.")
