"""Request metrics per deployment: a window published as RequestMetricsReported every few seconds
(for the autoscaler and the console), and running totals served to Prometheus on /_berth/metrics.

The hot path only bumps integers on a `Stats`; everything else happens when a window closes or when
Prometheus scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from libs.events import LATENCY_BUCKETS_SECONDS, ReplicaRequests, RequestMetricsReported, RevisionRequests
from libs.prom import (
    DEFAULT_MAX_DEPLOYMENTS,
    DEPLOYMENT_LABELS,
    MAX_REVISIONS_PER_DEPLOYMENT,
    OVERFLOW_LABELS,
    REVISION_LABELS,
    split_capped,
)
from libs.logging import get_logger

if TYPE_CHECKING:
    from services.router.table import Replica, Route

log = get_logger("router.metrics")

_BUCKET_COUNT = len(LATENCY_BUCKETS_SECONDS)


class Stats:
    """Counters of one deployment. `latency_buckets` counts each request once, in the first bucket
    whose upper bound holds its latency (not cumulative)."""

    __slots__ = (
        "_had_traffic",
        "buckets",
        "client_errors",
        "errors",
        "in_flight",
        "latency_sum",
        "replicas",
        "requests",
        "revisions",
        "total_buckets",
        "total_errors",
        "total_latency_sum",
        "total_requests",
        "upstream_failures",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.in_flight = self.client_errors = self.upstream_failures = 0
        self.latency_sum = 0.0
        self.buckets = [0] * _BUCKET_COUNT
        self.revisions: dict[str, list[int]] = {}  # revision -> [requests, errors, *buckets] this window
        self.replicas: dict[str, tuple[str, list[int]]] = {}  # replica -> (revision, [requests, errors, *buckets])
        self.total_requests = self.total_errors = 0
        self.total_latency_sum = 0.0
        self.total_buckets = [0] * _BUCKET_COUNT
        self._had_traffic = False

    def observe(self, seconds: float, status: int, replica: Replica | None = None, answered: bool = True) -> None:
        """Count a request the client got `status` for. `replica`: the one that answered, or that was
        tried last (None: none was reached); `answered` False: the router answered for it (a failed
        connection, a timeout), which counts as an upstream failure. Errors are >= 500, client errors 4xx."""
        self.requests += 1
        error = status >= 500
        if error:
            self.errors += 1
            if replica is None or not answered:
                self.upstream_failures += 1
        elif status >= 400:
            self.client_errors += 1
        self.latency_sum += seconds
        bucket = bisect_left(LATENCY_BUCKETS_SECONDS, seconds)
        self.buckets[bucket] += 1
        if replica is not None:
            counts = self.revisions.get(replica.revision_id)
            if counts is None:
                counts = self.revisions[replica.revision_id] = [0] * (_BUCKET_COUNT + 2)
            counts[0] += 1
            counts[1] += error
            counts[2 + bucket] += 1
            entry = self.replicas.get(replica.replica_id)
            if entry is None:
                entry = self.replicas[replica.replica_id] = (replica.revision_id, [0] * (_BUCKET_COUNT + 2))
            counts = entry[1]
            counts[0] += 1
            counts[1] += error
            counts[2 + bucket] += 1

    def close_window(self, route: Route, window_seconds: float, reporter: str = "") -> RequestMetricsReported | None:
        """The window's report (from `reporter`, this process), or None when neither it nor the previous window saw traffic (a
        deployment that went quiet gets one report of zeros, then nothing)."""
        busy = bool(self.requests or self.in_flight)
        if not busy and not self._had_traffic:
            return None
        self._had_traffic = busy
        report = RequestMetricsReported(
            deployment_id=route.deployment_id, project=route.project, slug=route.slug,
            window_seconds=window_seconds, requests=self.requests, errors=self.errors,
            latency_sum_seconds=self.latency_sum, latency_buckets=self.buckets, in_flight=self.in_flight,
            revisions=[
                RevisionRequests(revision_id=r, requests=c[0], errors=c[1], latency_buckets=c[2:])
                for r, c in self.revisions.items()
            ],
            client_errors=self.client_errors, upstream_failures=self.upstream_failures,
            replicas=[
                ReplicaRequests(replica_id=r, revision_id=rev, requests=c[0], errors=c[1], latency_buckets=c[2:])
                for r, (rev, c) in self.replicas.items()
            ],
            reporter=reporter,
        )
        self.total_requests += self.requests
        self.total_errors += self.errors
        self.total_latency_sum += self.latency_sum
        self.total_buckets = [t + w for t, w in zip(self.total_buckets, self.buckets, strict=True)]
        self.requests = self.errors = self.client_errors = self.upstream_failures = 0
        self.latency_sum = 0.0
        self.buckets = [0] * _BUCKET_COUNT
        self.revisions = {}
        self.replicas = {}
        return report


class MetricsReporter:
    """Closes every deployment's window and publishes it; `report` is run every few seconds."""

    def __init__(
        self,
        routes: Callable[[], Iterable[Route]],
        publish: Callable[[RequestMetricsReported], Awaitable[None]],
        reporter: str = "",
    ) -> None:
        self._routes = routes
        self._publish = publish
        self._reporter = reporter
        self._opened = time.monotonic()

    async def report(self) -> None:
        now = time.monotonic()
        window, self._opened = now - self._opened, now
        for route in list(self._routes()):
            report = route.stats.close_window(route, window, self._reporter)
            if report is None:
                continue
            try:
                await self._publish(report)
            except Exception:  # the bus being away must not stop the data plane
                log.warning("request metrics not published", deployment_id=route.deployment_id, exc_info=True)


class RevisionTotals:
    """Running totals per revision, folded from the windows the reporter closes (the hot path keeps a
    revision's counts for the open window only). Revisions no longer in a deployment's route are
    forgotten at the next scrape: a retired revision's series end."""

    def __init__(self) -> None:
        self._totals: dict[str, dict[str, list[int]]] = {}  # deployment -> revision -> [requests, errors, *buckets]

    def fold(self, report: RequestMetricsReported) -> None:
        revisions = self._totals.setdefault(report.deployment_id, {})
        for part in report.revisions:
            counts = revisions.setdefault(part.revision_id, [0] * (_BUCKET_COUNT + 2))
            counts[0] += part.requests
            counts[1] += part.errors
            for i, n in enumerate(part.latency_buckets[:_BUCKET_COUNT]):
                counts[2 + i] += n

    def of(self, route: Route) -> dict[str, list[int]]:
        """The totals of the revisions `route` still lists, after forgetting the others."""
        totals = self._totals.get(route.deployment_id)
        if not totals:
            return {}
        live = {replica.revision_id for replica in route.replicas.values()}
        for retired in [r for r in totals if r not in live]:
            del totals[retired]
        return totals

    def prune(self, deployments: set[str]) -> None:
        for gone in [d for d in self._totals if d not in deployments]:
            del self._totals[gone]


def _cumulative(counts: Iterable[int]) -> list[tuple[str, float]]:
    buckets, running = [], 0
    for bound, count in zip(LATENCY_BUCKETS_SECONDS, counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
    return buckets


class RouterCollector(Collector):
    """Prometheus view of the routing table: per deployment, totals so far plus the open window; per
    revision, the closed windows. At most `max_deployments` deployments have series of their own (the
    rest are summed as `_overflow`) and at most MAX_REVISIONS_PER_DEPLOYMENT revisions each (those
    serving first); docs/monitoring.md states the bound."""

    def __init__(
        self,
        routes: Callable[[], Iterable[Route]],
        unrouted: Callable[[], int],
        revisions: RevisionTotals | None = None,
        max_deployments: int = DEFAULT_MAX_DEPLOYMENTS,
    ) -> None:
        self._routes = routes
        self._unrouted = unrouted
        self._revisions = revisions or RevisionTotals()
        self._max_deployments = max_deployments

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = DEPLOYMENT_LABELS
        requests = CounterMetricFamily("berth_router_requests", "Requests proxied per deployment.", labels=labels)
        errors = CounterMetricFamily(
            "berth_router_errors", "Responses >= 500 and upstream failures per deployment.", labels=labels
        )
        latency = HistogramMetricFamily(
            "berth_router_request_duration_seconds", "Time to answer a request, as the router saw it.", labels=labels
        )
        in_flight = GaugeMetricFamily("berth_router_in_flight_requests", "Requests being proxied now.", labels=labels)
        ready = GaugeMetricFamily("berth_router_ready_replicas", "Ready replicas the router knows.", labels=labels)
        generation = GaugeMetricFamily(
            "berth_router_traffic_generation", "Generation of the traffic assignment applied.", labels=labels
        )
        rev_requests = CounterMetricFamily(
            "berth_router_revision_requests",
            "Requests a replica of the revision answered (updated as each report window closes).",
            labels=REVISION_LABELS,
        )
        rev_errors = CounterMetricFamily(
            "berth_router_revision_errors", "Responses >= 500 from a replica of the revision.", labels=REVISION_LABELS
        )
        rev_latency = HistogramMetricFamily(
            "berth_router_revision_request_duration_seconds",
            "Time to answer a request a replica of the revision answered (buckets only).",
            labels=REVISION_LABELS,
        )
        routes = list(self._routes())
        self._revisions.prune({route.deployment_id for route in routes})
        shown, rest = split_capped(routes, lambda r: (r.project, r.slug), self._max_deployments)
        for route in shown:
            stats, values = route.stats, [route.project, route.slug]
            requests.add_metric(values, stats.total_requests + stats.requests)
            errors.add_metric(values, stats.total_errors + stats.errors)
            window = (t + w for t, w in zip(stats.total_buckets, stats.buckets, strict=True))
            latency.add_metric(values, _cumulative(window), stats.total_latency_sum + stats.latency_sum)
            in_flight.add_metric(values, stats.in_flight)
            ready.add_metric(values, len(route.replicas))
            generation.add_metric(values, route.generation)
            serving = {replica.revision_id for replica in route.serving}
            totals = self._revisions.of(route)
            for revision in sorted(totals, key=lambda r: (r not in serving, r))[:MAX_REVISIONS_PER_DEPLOYMENT]:
                counts, revision_values = totals[revision], [*values, revision]
                rev_requests.add_metric(revision_values, counts[0])
                rev_errors.add_metric(revision_values, counts[1])
                rev_latency.add_metric(revision_values, _cumulative(counts[2:]), None)
        if rest:
            self._overflow(rest, requests, errors, latency, in_flight, ready)
        unrouted = CounterMetricFamily(
            "berth_router_unrouted_requests", "Requests that named no known deployment (404)."
        )
        unrouted.add_metric([], self._unrouted())
        yield from (requests, errors, latency, in_flight, ready, generation, unrouted)
        yield from (rev_requests, rev_errors, rev_latency)

    @staticmethod
    def _overflow(
        routes: list[Route],
        requests: CounterMetricFamily,
        errors: CounterMetricFamily,
        latency: HistogramMetricFamily,
        in_flight: GaugeMetricFamily,
        ready: GaugeMetricFamily,
    ) -> None:
        """The deployments past the cap, summed as one (their revisions are not shown)."""
        buckets = [0] * _BUCKET_COUNT
        for route in routes:
            for i, (t, w) in enumerate(zip(route.stats.total_buckets, route.stats.buckets, strict=True)):
                buckets[i] += t + w
        requests.add_metric(OVERFLOW_LABELS, sum(r.stats.total_requests + r.stats.requests for r in routes))
        errors.add_metric(OVERFLOW_LABELS, sum(r.stats.total_errors + r.stats.errors for r in routes))
        latency_sum = sum(r.stats.total_latency_sum + r.stats.latency_sum for r in routes)
        latency.add_metric(OVERFLOW_LABELS, _cumulative(buckets), latency_sum)
        in_flight.add_metric(OVERFLOW_LABELS, sum(r.stats.in_flight for r in routes))
        ready.add_metric(OVERFLOW_LABELS, sum(len(r.replicas) for r in routes))
