from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from libs.events import LATENCY_BUCKETS_SECONDS
from services.router.metrics import RouterCollector
from services.router.table import Replica, Route


def route() -> Route:
    return Route("d1", project="p", slug="iris")


def replica(replica_id: str, revision_id: str) -> Replica:
    return Replica(replica_id, revision_id, "http://127.0.0.1:1", 0)


def test_a_window_counts_requests_errors_and_latency_buckets() -> None:
    r = route()
    r.stats.observe(0.003, 200)
    r.stats.observe(0.005, 200)  # on a bound: that bucket (le)
    r.stats.observe(0.2, 500)
    r.stats.observe(30.0, 503)
    report = r.stats.close_window(r, 5.0)
    assert report is not None
    assert (report.requests, report.errors, report.window_seconds) == (4, 2, 5.0)
    assert report.latency_buckets[0] == 2 and report.latency_buckets[LATENCY_BUCKETS_SECONDS.index(0.25)] == 1
    assert report.latency_buckets[-1] == 1 and sum(report.latency_buckets) == 4
    assert abs(report.latency_sum_seconds - 30.208) < 1e-9


def test_a_window_is_also_split_by_the_revision_that_answered_and_starts_empty_again() -> None:
    r = route()
    r.stats.observe(0.003, 200, replica("a", "stable"))
    r.stats.observe(0.2, 500, replica("b", "canary"))
    r.stats.observe(0.004, 503)  # no replica reached (503): the deployment's count only
    report = r.stats.close_window(r, 1.0)
    assert report is not None and (report.requests, report.errors) == (3, 2)
    parts = {p.revision_id: p for p in report.revisions}
    assert set(parts) == {"stable", "canary"}
    assert (parts["canary"].requests, parts["canary"].errors) == (1, 1)
    assert parts["canary"].latency_buckets[LATENCY_BUCKETS_SECONDS.index(0.25)] == 1
    assert (parts["stable"].requests, parts["stable"].errors, parts["stable"].latency_buckets[0]) == (1, 0, 1)
    r.stats.observe(0.003, 200, replica("a", "stable"))
    following = r.stats.close_window(r, 1.0)
    assert following is not None and [(p.revision_id, p.requests) for p in following.revisions] == [("stable", 1)]


def test_client_errors_upstream_failures_and_replicas_are_counted_apart() -> None:
    r = route()
    slow, fast = replica("slow", "rev1"), replica("fast", "rev1")
    r.stats.observe(0.003, 404, fast)  # 4xx: a client error, not an error
    r.stats.observe(0.003, 200, fast)
    r.stats.observe(0.7, 500, slow)  # the replica answered 500: an error, not an upstream failure
    r.stats.observe(0.7, 502, slow, answered=False)  # the router answered for it: both
    r.stats.observe(0.001, 503)  # no ready replica: both
    report = r.stats.close_window(r, 1.0)
    assert report is not None
    assert (report.requests, report.errors, report.client_errors, report.upstream_failures) == (5, 3, 1, 2)
    parts = {p.replica_id: p for p in report.replicas}
    assert (parts["fast"].requests, parts["fast"].errors, parts["fast"].revision_id) == (2, 0, "rev1")
    assert (parts["slow"].requests, parts["slow"].errors) == (2, 2)
    assert parts["slow"].latency_buckets[LATENCY_BUCKETS_SECONDS.index(1.0)] == 2
    empty = r.stats.close_window(r, 1.0)
    assert empty is not None and (empty.client_errors, empty.upstream_failures, empty.replicas) == (0, 0, [])


def test_a_quiet_deployment_gets_one_zero_report_then_none() -> None:
    r = route()
    assert r.stats.close_window(r, 1.0) is None
    r.stats.observe(0.01, 200)
    assert r.stats.close_window(r, 1.0).requests == 1  # type: ignore[union-attr]
    zero = r.stats.close_window(r, 1.0)
    assert zero is not None and zero.requests == 0 and sum(zero.latency_buckets) == 0
    assert r.stats.close_window(r, 1.0) is None
    r.stats.in_flight = 1  # a long request still running keeps the reports coming
    assert r.stats.close_window(r, 1.0) is not None


def test_prometheus_sees_totals_plus_the_open_window() -> None:
    r = route()
    r.stats.observe(0.01, 200)
    r.stats.close_window(r, 1.0)
    r.stats.observe(0.02, 500)
    registry = CollectorRegistry()
    registry.register(RouterCollector(lambda: [r], lambda: 3))
    text = generate_latest(registry).decode()
    assert 'berth_router_requests_total{deployment="iris",project="p"} 2.0' in text
    assert 'berth_router_errors_total{deployment="iris",project="p"} 1.0' in text
    assert 'berth_router_request_duration_seconds_bucket{deployment="iris",le="0.01",project="p"} 1.0' in text
    assert 'berth_router_request_duration_seconds_bucket{deployment="iris",le="+Inf",project="p"} 2.0' in text
    assert "berth_router_unrouted_requests_total 3.0" in text
