"""Prometheus metrics of the health-monitor, served on /metrics of its ops port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROBES = Counter(
    "berth_health_probes_total", "Probes sent to replicas, by kind and result.", ["kind", "result"]
)
PROBE_SECONDS = Histogram("berth_health_probe_duration_seconds", "Duration of one probe.", ["kind"])
RESTARTS_REQUESTED = Counter(
    "berth_health_restarts_requested_total", "Replica restarts requested, by failing probe.", ["kind"]
)
REPLICAS_WATCHED = Gauge("berth_health_replicas_watched", "Replica processes the monitor tracks.")
