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

    def close_window(self, route: Route, window_seconds: float) -> RequestMetricsReported | None:
        """The window's report, or None when neither it nor the previous window saw traffic (a
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

    def __init__(self, routes: Callable[[], Iterable[Route]], publish: Callable[[RequestMetricsReported], Awaitable[None]]) -> None:
        self._routes = routes
        self._publish = publish
        self._opened = time.monotonic()

    async def report(self) -> None:
        now = time.monotonic()
        window, self._opened = now - self._opened, now
        for route in list(self._routes()):
            report = route.stats.close_window(route, window)
            if report is None:
                continue
            try:
                await self._publish(report)
            except Exception:  # the bus being away must not stop the data plane
                log.warning("request metrics not published", deployment_id=route.deployment_id, exc_info=True)


class RouterCollector(Collector):
    """Prometheus view of the routing table: totals so far plus the open window."""

    def __init__(self, routes: Callable[[], Iterable[Route]], unrouted: Callable[[], int]) -> None:
        self._routes = routes
        self._unrouted = unrouted

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = ["project", "deployment"]
        requests = CounterMetricFamily("berth_router_requests", "Requests proxied per deployment.", labels=labels)
        errors = CounterMetricFamily(
            "berth_router_errors", "Responses >= 500 and upstream failures per deployment.", labels=labels
        )
        latency = HistogramMetricFamily(
            "berth_router_request_duration_seconds", "Time to answer a request, as the router saw it.", labels=labels
        )
        in_flight = GaugeMetricFamily("berth_router_in_flight", "Requests being proxied now.", labels=labels)
        ready = GaugeMetricFamily("berth_router_ready_replicas", "Ready replicas the router knows.", labels=labels)
        generation = GaugeMetricFamily(
            "berth_router_traffic_generation", "Generation of the traffic assignment applied.", labels=labels
        )
        for route in self._routes():
            stats, values = route.stats, [route.project, route.slug]
            requests.add_metric(values, stats.total_requests + stats.requests)
            errors.add_metric(values, stats.total_errors + stats.errors)
            cumulative, buckets = 0, []
            for bound, total, window in zip(LATENCY_BUCKETS_SECONDS, stats.total_buckets, stats.buckets, strict=True):
                cumulative += total + window
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            latency.add_metric(values, buckets, stats.total_latency_sum + stats.latency_sum)
            in_flight.add_metric(values, stats.in_flight)
            ready.add_metric(values, len(route.replicas))
            generation.add_metric(values, route.generation)
        unrouted = CounterMetricFamily(
            "berth_router_unrouted_requests", "Requests that named no known deployment (404)."
        )
        unrouted.add_metric([], self._unrouted())
        yield from (requests, errors, latency, in_flight, ready, generation, unrouted)
