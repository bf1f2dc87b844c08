"""What the metrics service does with events, and how it answers: open slots in memory, flushed to
the store as they close; downsampling and retention; series and summaries.

Memory holds only the open slots (one per series that reported in the current slot, at most a few
late ones), the last minute of each deployment's closed slots (for the summary), the replicas' last
restart counts and the spec version -> revision map: a bound proportional to the number of
deployments and replicas, whatever the retention.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libs.events import (
    DeploymentDeleted,
    DeploymentMetricsSummarized,
    DeploymentStatusChanged,
    Event,
    MetricsSummary,
    ReplicaUsageReported,
    RequestMetricsReported,
    TrafficAssigned,
)
from libs.quantiles import histogram_quantile
from services.metrics.store import DOWNSAMPLED, RAW, SeriesKey, Slot, Store, StoredSlot, merge

SUMMARY_WINDOW_SECONDS = 60
MAX_POINTS = 11_000  # as Prometheus' range queries: more points than this is refused
DEPLOYMENT = ""  # the replica_id of a deployment's own series

Clock = Callable[[], float]


@dataclass(frozen=True)
class Retention:
    resolution_seconds: int = 10
    raw_seconds: int = 24 * 3600
    downsampled_step_seconds: int = 300
    downsampled_seconds: int = 30 * 24 * 3600


class QueryError(ValueError):
    """A query the history cannot answer as asked: `field` names the parameter, `rule` what it must be."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field, self.rule = field, rule


@dataclass
class _Deployment:
    project: str
    slug: str
    recent: deque[tuple[int, Slot]] = field(default_factory=deque)  # closed slots of the last minute
    in_flight: dict[str, tuple[float, int]] = field(default_factory=dict)  # reporter -> (reported at, in flight)
    usage: dict[str, tuple[float | None, float | None, float | None]] = field(default_factory=dict)
    last_activity: float = 0.0
    replicas_desired: int = 0


class History:
    def __init__(self, store: Store, retention: Retention, clock: Clock = time.time) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock
        # deployment -> (series, slot start) -> its open slot
        self._open: dict[str, dict[tuple[SeriesKey, int], Slot]] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._restarts: dict[tuple[str, str], int] = {}  # (deployment, replica) -> last restart count
        self._downsampled_until: int | None = None

    # -- ingest ---------------------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        """Fold one event into the open slots (the kit acknowledges it once this returns)."""
        if isinstance(event, RequestMetricsReported):
            self.requests_reported(event)
        elif isinstance(event, ReplicaUsageReported):
            self.usage_reported(event)
        elif isinstance(event, DeploymentStatusChanged):
            self.status_changed(event)
        elif isinstance(event, TrafficAssigned):
            self.traffic_assigned(event)
        elif isinstance(event, DeploymentDeleted):
            self.deleted(event.deployment_id)

    def _slot(self, key: SeriesKey, at: float) -> Slot:
        step = self.retention.resolution_seconds
        ts = int(at) - int(at) % step
        open_slots = self._open.get(key.deployment_id)
        if open_slots is None:
            open_slots = self._open[key.deployment_id] = {}
        slot = open_slots.get((key, ts))
        if slot is None:
            slot = open_slots[(key, ts)] = Slot()
        return slot

    def _deployment(self, event: Any) -> _Deployment:
        known = self._deployments.get(event.deployment_id)
        if known is None:
            known = self._deployments[event.deployment_id] = _Deployment(event.project, event.slug)
        known.last_activity = self.clock()
        return known

    def requests_reported(self, report: RequestMetricsReported) -> None:
        # The window ended at occurred_at; it belongs to the slot of its middle.
        at = report.occurred_at.timestamp() - report.window_seconds / 2
        deployment = self._deployment(report)
        # The router runs several workers (and replicas), each reporting its own requests: counts add
        # up as they are; in-flight is the sum over reporters of each one's latest (or mean).
        reported_at = report.occurred_at.timestamp()
        deployment.in_flight[report.reporter] = (reported_at, report.in_flight)
        for reporter in [r for r, (t, _) in deployment.in_flight.items() if t < reported_at - SUMMARY_WINDOW_SECONDS]:
            del deployment.in_flight[reporter]  # a worker gone (restarted, stopped)
        slot = self._slot(SeriesKey(report.deployment_id, DEPLOYMENT), at)
        slot.requests += report.requests
        slot.errors += report.errors
        slot.client_errors += report.client_errors
        slot.upstream_failures += report.upstream_failures
        slot.buckets = [a + b for a, b in zip(slot.buckets, report.latency_buckets, strict=False)]
        held, n = slot.in_flight_by.get(report.reporter, (0.0, 0))
        slot.in_flight_sum += (held + report.in_flight) / (n + 1) - (held / n if n else 0.0)
        slot.in_flight_by[report.reporter] = (held + report.in_flight, n + 1)
        slot.in_flight_n = 1
        for part in report.replicas:
            replica = self._slot(SeriesKey(report.deployment_id, part.replica_id, part.revision_id), at)
            replica.requests += part.requests
            replica.errors += part.errors
            replica.buckets = [a + b for a, b in zip(replica.buckets, part.latency_buckets, strict=False)]

    def usage_reported(self, report: ReplicaUsageReported) -> None:
        at = report.occurred_at.timestamp()
        deployment = self._deployment(report)
        whole = self._slot(SeriesKey(report.deployment_id, DEPLOYMENT), at)
        readings: dict[str, tuple[float | None, float | None, float | None]] = {}
        for usage in report.replicas:
            replica = self._slot(SeriesKey(report.deployment_id, usage.replica_id, usage.revision_id), at)
            readings[usage.replica_id] = (usage.cpu_percent, usage.memory_percent, usage.gpu_percent)
            for slot in (replica, whole):  # the deployment's figure is the mean over its replicas
                if usage.cpu_percent is not None:
                    slot.cpu_sum, slot.cpu_n = slot.cpu_sum + usage.cpu_percent, slot.cpu_n + 1
                if usage.memory_percent is not None:
                    slot.memory_sum, slot.memory_n = slot.memory_sum + usage.memory_percent, slot.memory_n + 1
                if usage.gpu_percent is not None:
                    slot.gpu_sum, slot.gpu_n = slot.gpu_sum + usage.gpu_percent, slot.gpu_n + 1
        deployment.usage = readings

    def status_changed(self, status: DeploymentStatusChanged) -> None:
        at = status.occurred_at.timestamp()
        deployment = self._deployment(status)
        deployment.replicas_desired = status.desired_replicas
        whole = self._slot(SeriesKey(status.deployment_id, DEPLOYMENT), at)
        whole.desired_sum += status.desired_replicas
        whole.ready_sum += status.ready_replicas
        whole.replicas_n += 1
        for replica in status.replicas:
            seen = self._restarts.get((status.deployment_id, replica.replica_id))
            self._restarts[(status.deployment_id, replica.replica_id)] = replica.restart_count
            # The first sight of a replica is its baseline: restarts before it were counted before
            # (or happened before this history began).
            if seen is not None and replica.restart_count > seen:
                added = replica.restart_count - seen
                whole.restarts += added
                self._slot(SeriesKey(status.deployment_id, replica.replica_id, replica.revision_id), at).restarts += added
        if status.phase == "Deleted":
            self.deleted(status.deployment_id)

    def traffic_assigned(self, traffic: TrafficAssigned) -> None:
        if traffic.deleted:
            self.deleted(traffic.deployment_id)
            return
        self.store.save_versions(
            traffic.deployment_id, {v: t.revision_id for t in traffic.targets for v in t.spec_versions}
        )

    def deleted(self, deployment_id: str) -> None:
        self._deployments.pop(deployment_id, None)
        self._open.pop(deployment_id, None)
        self._restarts = {k: v for k, v in self._restarts.items() if k[0] != deployment_id}
        self.store.forget(deployment_id)

    # -- timers ---------------------------------------------------------------------------------

    def flush(self, everything: bool = False) -> int:
        """Write the slots that have closed (all of them at stop); rows written."""
        step = self.retention.resolution_seconds
        now = self.clock()
        closed = []
        for deployment_id, open_slots in list(self._open.items()):
            ended = [(k, s) for k, s in open_slots.items() if everything or k[1] + step <= now]
            for key, _ in ended:
                del open_slots[key]
            if not open_slots:
                del self._open[deployment_id]
            closed += ended
        rows = [StoredSlot(series, ts, slot) for (series, ts), slot in closed]
        written = self.store.write(rows)
        # A late slot whose step was downsampled already goes there too (rows add up).
        if self._downsampled_until is not None:
            late = [r for r in rows if r.ts < self._downsampled_until]
            down = self.retention.downsampled_step_seconds
            self.store.write((StoredSlot(r.key, r.ts - r.ts % down, r.slot) for r in late), DOWNSAMPLED)
        horizon = now - SUMMARY_WINDOW_SECONDS - step
        for row in rows:
            if row.key.replica_id == DEPLOYMENT and row.ts >= horizon:
                deployment = self._deployments.get(row.key.deployment_id)
                if deployment is not None:
                    deployment.recent.append((row.ts, row.slot))
        for deployment in self._deployments.values():
            while deployment.recent and deployment.recent[0][0] < horizon:
                deployment.recent.popleft()
        return written

    def downsample(self) -> int:
        """Downsample every whole step that has ended since the last run; rows written."""
        down = self.retention.downsampled_step_seconds
        now = int(self.clock())
        # A step is downsampled once its last raw slot is surely written (one slot later).
        until = (now - self.retention.resolution_seconds) // down * down
        if self._downsampled_until is None:
            last = self.store.last_downsampled()
            oldest = until - self.retention.raw_seconds
            self._downsampled_until = max(last + down, oldest - oldest % down) if last is not None else until
        written = 0
        if until > self._downsampled_until:
            written = self.store.downsample(self._downsampled_until, until, down)
            self._downsampled_until = until
        return written

    def expire(self) -> int:
        """Delete what is older than the retention of its resolution; rows deleted."""
        now = int(self.clock())
        return self.store.expire(RAW, now - self.retention.raw_seconds) + self.store.expire(
            DOWNSAMPLED, now - self.retention.downsampled_seconds
        )

    def forget_idle(self, idle_seconds: float = 3600.0) -> None:
        """Bound memory: a deployment silent for an hour drops out (it comes back with its next event)."""
        now = self.clock()
        for deployment_id in [d for d, s in self._deployments.items() if now - s.last_activity > idle_seconds]:
            self._deployments.pop(deployment_id)
            self._restarts = {k: v for k, v in self._restarts.items() if k[0] != deployment_id}

    # -- answers --------------------------------------------------------------------------------

    def summaries(self) -> list[DeploymentMetricsSummarized]:
        """The current figures of every deployment with traffic or replicas in the last minute."""
        events = []
        now = self.clock()
        for deployment_id, deployment in self._deployments.items():
            if now - deployment.last_activity > SUMMARY_WINDOW_SECONDS and not deployment.replicas_desired:
                continue
            events.append(
                DeploymentMetricsSummarized(
                    deployment_id=deployment_id, project=deployment.project, slug=deployment.slug,
                    summary=self.summary(deployment_id),
                )
            )  # fmt: skip
        return events

    def summary(self, deployment_id: str) -> MetricsSummary:
        now = self.clock()
        deployment = self._deployments.get(deployment_id)
        at = datetime.fromtimestamp(now, UTC)
        if deployment is None:
            return MetricsSummary(at=at, window_seconds=SUMMARY_WINDOW_SECONDS)
        since = now - SUMMARY_WINDOW_SECONDS
        # Copies first (each atomic): queries run in a worker thread while the loop folds events in.
        slots = [s for ts, s in list(deployment.recent) if ts >= since]
        slots += [s for (k, ts), s in list(self._open.get(deployment_id, {}).items())
                  if k.replica_id == DEPLOYMENT and ts >= since]  # fmt: skip
        total = merge(slots)
        usage = list(deployment.usage.values())
        return MetricsSummary(
            at=at,
            window_seconds=SUMMARY_WINDOW_SECONDS,
            request_rate=total.requests / SUMMARY_WINDOW_SECONDS,
            error_rate=total.errors / total.requests if total.requests else 0.0,
            client_error_rate=total.client_errors / total.requests if total.requests else 0.0,
            latency_p50=histogram_quantile(0.5, total.buckets),
            latency_p95=histogram_quantile(0.95, total.buckets),
            latency_p99=histogram_quantile(0.99, total.buckets),
            in_flight=sum(n for t, n in list(deployment.in_flight.values()) if t >= since),
            cpu_percent=_mean(u[0] for u in usage),
            memory_percent=_mean(u[1] for u in usage),
            gpu_percent=_mean(u[2] for u in usage),
        )

    def series(self, deployment_id: str, window: int, step: int, version: int | None) -> dict[str, Any]:
        """The contract A answer (docs/api.md): one point per step, ending now."""
        retention = self.retention
        if step < retention.resolution_seconds:
            raise QueryError("step", f"must be at least {retention.resolution_seconds}s (the resolution kept)")
        if window < step:
            raise QueryError("window", "must be at least one step")
        if window // step > MAX_POINTS:
            raise QueryError("step", f"must give at most {MAX_POINTS} points over the window")
        if window > retention.downsampled_seconds:
            raise QueryError("window", f"must be at most {retention.downsampled_seconds}s (the retention)")
        resolution, grain = RAW, retention.resolution_seconds
        if window > retention.raw_seconds:
            resolution, grain = DOWNSAMPLED, retention.downsampled_step_seconds
            if step < grain:
                raise QueryError("step", f"must be at least {grain}s for a window beyond {retention.raw_seconds}s")
        revision: str | None = None
        if version is not None:
            revision = self.store.revision_of(deployment_id, version)
            if revision is None:
                raise QueryError("version", "must be a spec version that has run")
        now = self.clock()
        end = math.ceil(now / grain) * grain  # the open slot is the last one in
        points = window // step
        origin = end - points * step
        rows = self.store.read_steps(deployment_id, resolution, origin, end, step)  # ts: the step's index
        if resolution == RAW:
            rows += [StoredSlot(k, (ts - origin) // step, s) for (k, ts), s in list(self._open.get(deployment_id, {}).items())
                     if origin <= ts < end]  # fmt: skip
        whole: list[Slot] = [Slot() for _ in range(points)]
        chosen: list[Slot] = [Slot() for _ in range(points)] if revision is not None else whole
        replicas: dict[tuple[str, str], list[Slot]] = {}
        for row in rows:
            index = row.ts
            if row.key.replica_id == DEPLOYMENT:
                whole[index].add(row.slot)
                continue
            if revision is not None and row.key.revision_id != revision:
                continue
            if revision is not None:
                chosen[index].add(row.slot)
            per = replicas.get((row.key.replica_id, row.key.revision_id))
            if per is None:
                per = replicas[(row.key.replica_id, row.key.revision_id)] = [Slot() for _ in range(points)]
            per[index].add(row.slot)
        stamps = [origin + (i + 1) * step for i in range(points)]
        series = _series(chosen, stamps, step)
        if revision is not None:  # per-version: what the deployment's own rows hold and replicas do not
            for name in ("in_flight", "replicas_desired", "replicas_ready"):
                series[name] = _points(stamps, whole, _GAUGES[name])
        return {
            "deployment_id": deployment_id,
            "version": version,
            "window_seconds": window,
            "step_seconds": step,
            "start": datetime.fromtimestamp(stamps[0] - step, UTC).isoformat(),
            "end": datetime.fromtimestamp(stamps[-1], UTC).isoformat(),
            "series": series,
            "replicas": [
                {"replica_id": replica_id, "revision_id": revision_id,
                 "series": _series(per, stamps, step, _PER_REPLICA)}
                for (replica_id, revision_id), per in sorted(replicas.items())
            ],  # fmt: skip
            "current": self.summary(deployment_id).model_dump(mode="json"),
        }


_PER_REPLICA = {"request_rate", "error_rate", "latency_p99", "cpu_percent", "memory_percent", "gpu_percent", "restarts"}


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


_GAUGES: dict[str, Callable[[Slot], float | None]] = {
    "in_flight": lambda s: _ratio(s.in_flight_sum, s.in_flight_n),
    "replicas_desired": lambda s: _ratio(s.desired_sum, s.replicas_n),
    "replicas_ready": lambda s: _ratio(s.ready_sum, s.replicas_n),
}


def _points(stamps: list[int], slots: list[Slot], value: Callable[[Slot], float | None]) -> list[list[Any]]:
    return [[stamp, value(slot)] for stamp, slot in zip(stamps, slots, strict=True)]


def _series(slots: list[Slot], stamps: list[int], step: int, names: set[str] | None = None) -> dict[str, list[list[Any]]]:
    # A step nobody reported in is null, not zero: "no data" and "no requests" differ for a chart.
    def rate(s: Slot) -> float | None:
        return s.requests / step if (s.requests or s.in_flight_n) else None

    values: dict[str, Callable[[Slot], Any]] = {
        "request_rate": rate,
        "error_rate": lambda s: _ratio(s.errors, s.requests),
        "client_error_rate": lambda s: _ratio(s.client_errors, s.requests),
        "latency_p50": lambda s: histogram_quantile(0.5, s.buckets),
        "latency_p95": lambda s: histogram_quantile(0.95, s.buckets),
        "latency_p99": lambda s: histogram_quantile(0.99, s.buckets),
        **_GAUGES,
        "restarts": lambda s: s.restarts,
        "cpu_percent": lambda s: _ratio(s.cpu_sum, s.cpu_n),
        "memory_percent": lambda s: _ratio(s.memory_sum, s.memory_n),
        "gpu_percent": lambda s: _ratio(s.gpu_sum, s.gpu_n),
    }
    return {name: _points(stamps, slots, value) for name, value in values.items() if names is None or name in names}


def _mean(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
