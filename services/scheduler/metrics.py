"""Prometheus metrics of the scheduler, served on /metrics of its ops port: its own work, and per
deployment what it observes (replicas desired and ready, the spec version in force) and per replica
(restarts, readiness, CPU and memory), within the bounds of libs/prom.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from libs.events import DeploymentStatusChanged
from libs.prom import (
    DEFAULT_MAX_DEPLOYMENTS,
    DEPLOYMENT_LABELS,
    MAX_REPLICAS_PER_DEPLOYMENT,
    OVERFLOW_LABELS,
    REPLICA_LABELS,
    split_capped,
)
from libs.runtime.base import Usage

RECONCILE_SECONDS = Histogram(
    "berth_scheduler_reconcile_duration_seconds",
    "Duration of one reconcile of one deployment.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_ERRORS = Counter("berth_scheduler_reconcile_errors_total", "Reconciles that raised.")
EVENTS_PUBLISHED = Counter("berth_scheduler_events_published_total", "Events published, by kind.", ["kind"])
DEPLOYMENTS = Gauge("berth_scheduler_deployments", "Deployments with a desired state.")

# (the last status published, the spec version in force or None) per deployment
Observed = tuple[DeploymentStatusChanged, int | None]


class DeploymentCollector(Collector):
    """Per deployment and replica figures from the scheduler's last published statuses and the
    runtime's last usage samples. Deployments past `max_deployments` are summed as `_overflow`
    (their replicas are not shown); a deployment shows at most MAX_REPLICAS_PER_DEPLOYMENT replicas."""

    def __init__(
        self,
        observed: Callable[[], Iterable[Observed]],
        usage: Callable[[], Mapping[str, Usage]],
        max_deployments: int = DEFAULT_MAX_DEPLOYMENTS,
    ) -> None:
        self._observed = observed
        self._usage = usage
        self._max_deployments = max_deployments

    def describe(self) -> list[GaugeMetricFamily]:
        # Nothing to check for clashes: two schedulers in one process (tests) each register one.
        return []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        desired = GaugeMetricFamily(
            "berth_deployment_replicas_desired", "Replicas the deployment should have.", labels=DEPLOYMENT_LABELS
        )
        ready = GaugeMetricFamily(
            "berth_deployment_replicas_ready", "Replicas passing their readiness probe.", labels=DEPLOYMENT_LABELS
        )
        version = GaugeMetricFamily(
            "berth_deployment_spec_version", "The newest spec version of the deployment.", labels=DEPLOYMENT_LABELS
        )
        restarts = CounterMetricFamily(
            "berth_replica_restarts", "Times the replica's process was restarted.", labels=REPLICA_LABELS
        )
        replica_ready = GaugeMetricFamily(
            "berth_replica_ready", "1 when the replica passes its readiness probe.", labels=REPLICA_LABELS
        )
        cpu = GaugeMetricFamily(
            "berth_replica_cpu_usage_ratio",
            "CPU used, as a fraction of the cores the replica was given (of one core when none were).",
            labels=REPLICA_LABELS,
        )
        memory = GaugeMetricFamily(
            "berth_replica_memory_usage_ratio",
            "Memory used, as a fraction of the memory the replica was given (of the machine when none was).",
            labels=REPLICA_LABELS,
        )
        memory_bytes = GaugeMetricFamily(
            "berth_replica_memory_usage_bytes", "Resident memory of the replica's processes.", labels=REPLICA_LABELS
        )
        gpu = GaugeMetricFamily(
            "berth_replica_gpu_usage_ratio", "GPU utilisation (only where a GPU is visible).", labels=REPLICA_LABELS
        )
        usage = self._usage()
        shown, rest = split_capped(
            (o for o in self._observed() if o[0].phase != "Deleted"), lambda o: (o[0].project, o[0].slug), self._max_deployments
        )
        for status, spec_version in shown:
            values = [status.project, status.slug]
            desired.add_metric(values, status.desired_replicas)
            ready.add_metric(values, status.ready_replicas)
            if spec_version is not None:
                version.add_metric(values, spec_version)
            for replica in sorted(status.replicas, key=lambda r: r.replica_id)[:MAX_REPLICAS_PER_DEPLOYMENT]:
                labels = [*values, replica.revision_id, replica.replica_id]
                restarts.add_metric(labels, replica.restart_count)
                replica_ready.add_metric(labels, float(replica.ready))
                sample = usage.get(replica.replica_id)
                if sample is None:
                    continue  # not sampled yet, or not running: no series rather than a false zero
                cpu.add_metric(labels, sample.cpu_percent / 100)
                memory.add_metric(labels, sample.memory_percent / 100)
                memory_bytes.add_metric(labels, sample.memory_bytes)
                if sample.gpu_percent is not None:
                    gpu.add_metric(labels, sample.gpu_percent / 100)
        if rest:
            desired.add_metric(OVERFLOW_LABELS, sum(s.desired_replicas for s, _ in rest))
            ready.add_metric(OVERFLOW_LABELS, sum(s.ready_replicas for s, _ in rest))
        yield from (desired, ready, version, restarts, replica_ready, cpu, memory, memory_bytes, gpu)
