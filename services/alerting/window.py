"""What the alerting service keeps of one deployment's recent figures, and each rule metric computed
from it at an instant (pure: every function takes `now`, so tests simulate time).

The router's RequestMetricsReported carries the counts of one window each (deltas). Added up, they
are the counters the router exposes on /metrics (`berth_router_requests_total`, ...), sampled at the
end of each window, and at its start when no window ended there (after a quiet spell). Rates are
Prometheus' `rate()` of those counters over the rule's window (promql/functions.go
`extrapolatedRate`), so `error_rate_percent` is `100 * rate(errors[w]) / rate(requests[w])`. One
difference, said in docs/monitoring.md: the counters' zero point is unknown here (they are rebuilt
from the last hour), so the extrapolation is never clamped at zero.

Quantiles are `histogram_quantile` (libs/quantiles.py) of the latency buckets of the windows that
end within the range. `restarts` is the exact number of restarts within the range (restart counts of
the status reports; a count going down is a new process, as a counter reset). `ready_below_desired`
is the newest status's desired minus ready. cpu_percent and memory_percent are `avg_over_time` of the
replicas' mean utilisation (the scheduler's ReplicaUsageReported).

Memory is bounded: only deployments with rules keep figures, and only for their longest window.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from libs.events import DeploymentStatusChanged, ReplicaUsageReported, RequestMetricsReported
from libs.quantiles import add_buckets, histogram_quantile

QUANTILES = {"latency_p50_seconds": 0.5, "latency_p95_seconds": 0.95, "latency_p99_seconds": 0.99}
MAX_SAMPLES = 4096  # per kind and deployment: an hour of reports every second, whatever the interval


class Requests(NamedTuple):
    end: float  # unix seconds
    start: float
    requests: int
    errors: int
    client_errors: int
    buckets: tuple[int, ...]
    reporter: str = ""  # the router worker: several report windows ending at the same time


class Status(NamedTuple):
    at: float
    desired: int
    ready: int
    deleted: bool
    restarts: tuple[tuple[str, int], ...]  # (replica_id, restart_count)


class Usage(NamedTuple):
    at: float
    cpu: float | None
    memory: float | None


Count = Callable[[Requests], float]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass
class Window:
    """The figures of one deployment, each list sorted by time."""

    requests: list[Requests] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)

    def add(self, event: RequestMetricsReported | DeploymentStatusChanged | ReplicaUsageReported) -> None:
        """Keep the event's figures; one already held (same time) is not added twice (a replay)."""
        at = event.occurred_at.timestamp()
        if isinstance(event, RequestMetricsReported):
            _insert(self.requests, Requests(
                at, at - event.window_seconds, event.requests, event.errors, event.client_errors,
                tuple(event.latency_buckets), event.reporter,
            ))  # fmt: skip
        elif isinstance(event, DeploymentStatusChanged):
            restarts = tuple((r.replica_id, r.restart_count) for r in event.replicas)
            _insert(self.statuses, Status(
                at, event.desired_replicas, event.ready_replicas, event.phase == "Deleted", restarts
            ))  # fmt: skip
        else:
            cpu = _mean([r.cpu_percent for r in event.replicas])
            memory = _mean([r.memory_percent for r in event.replicas])
            _insert(self.usage, Usage(at, cpu, memory))

    def prune(self, before: float) -> None:
        """Forget what ended before `before`; the newest status before it stays (the state at `before`)."""
        self.requests = [r for r in self.requests if r.end >= before]
        self.usage = [u for u in self.usage if u.at >= before]
        older = [s for s in self.statuses if s.at < before]
        self.statuses = older[-1:] + [s for s in self.statuses if s.at >= before]

    def value(self, metric: str, window: float, now: float) -> float | None:
        """The metric over (now - window, now]; None when there is no data (Prometheus: no sample)."""
        start = now - window
        if metric == "request_rate":
            return self._rate(lambda r: r.requests, start, now)
        if metric == "error_rate_percent":
            return self._ratio(lambda r: r.errors, start, now)
        if metric == "client_error_rate_percent":
            return self._ratio(lambda r: r.client_errors, start, now)
        if metric in QUANTILES:
            buckets = [r.buckets for r in self.requests if start < r.end <= now]
            return histogram_quantile(QUANTILES[metric], add_buckets(buckets)) if buckets else None
        if metric == "ready_below_desired":
            latest = next((s for s in reversed(self.statuses) if s.at <= now), None)
            return None if latest is None or latest.deleted else float(latest.desired - latest.ready)
        if metric == "restarts":
            return self._restarts(start, now)
        if metric in ("cpu_percent", "memory_percent"):
            values = [u.cpu if metric == "cpu_percent" else u.memory for u in self.usage if start < u.at <= now]
            return _mean(values)
        raise ValueError(f"unknown metric {metric}")

    def _counter(self, count: Count) -> list[tuple[float, float]]:
        """The counter the reports add up to, as (time, value) samples."""
        samples: list[tuple[float, float]] = []
        total = 0.0
        for report in self.requests:
            # A window that does not start where the previous one ended follows a quiet spell: the
            # counter stood still until the window's start.
            if not samples or report.start - samples[-1][0] > (report.end - report.start) / 2:
                samples.append((report.start, total))
            total += count(report)
            samples.append((report.end, total))
        return samples

    def _rate(self, count: Count, start: float, end: float) -> float | None:
        return extrapolated_rate(self._counter(count), start, end)

    def _ratio(self, count: Count, start: float, end: float) -> float | None:
        requests = self._rate(lambda r: r.requests, start, end)
        part = self._rate(count, start, end)
        if requests is None or part is None or requests == 0:
            return None  # 0/0 is NaN in PromQL: no sample
        return 100.0 * part / requests

    def _restarts(self, start: float, end: float) -> float | None:
        in_range = [s for s in self.statuses if start < s.at <= end]
        if not in_range:
            return None
        before = next((s for s in reversed(self.statuses) if s.at <= start), None)
        last: dict[str, int] = dict(before.restarts) if before else {}
        total = 0
        for status in in_range:
            for replica, count in status.restarts:
                previous = last.get(replica)
                if previous is not None:
                    total += count - previous if count >= previous else count  # lower: a reset
                last[replica] = count
        return float(total)


def _insert(samples: list[Any], sample: Requests | Status | Usage) -> None:
    if any(_same(held, sample) for held in samples[-64:]):
        return
    insort(samples, sample)
    if len(samples) > MAX_SAMPLES:
        del samples[0]


def _same(held: Requests | Status | Usage, sample: Requests | Status | Usage) -> bool:
    """The same event again (a replay): same time, and for requests the same reporter."""
    if isinstance(sample, Requests):
        return held[0] == sample[0] and held[-1] == sample.reporter
    return held[0] == sample[0]


def extrapolated_rate(samples: Sequence[tuple[float, float]], range_start: float, range_end: float) -> float | None:
    """Prometheus' `rate()` of a counter over the left-open range (range_start, range_end], per second
    (promql/functions.go extrapolatedRate, with counter resets; no zero-point clamp, see above).
    None when fewer than two samples fall in the range."""
    points = [(t, v) for t, v in samples if range_start < t <= range_end]
    if len(points) < 2:
        return None
    result = points[-1][1] - points[0][1]
    previous = points[0][1]
    for _, value in points[1:]:
        if value < previous:
            result += previous
        previous = value
    sampled = points[-1][0] - points[0][0]
    if sampled <= 0:
        return None
    average = sampled / (len(points) - 1)
    threshold = average * 1.1
    to_start = points[0][0] - range_start
    to_end = range_end - points[-1][0]
    if to_start >= threshold:
        to_start = average / 2
    if to_end >= threshold:
        to_end = average / 2
    factor = (sampled + to_start + to_end) / sampled / (range_end - range_start)
    return result * factor
