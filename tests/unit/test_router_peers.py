"""Two router workers' expositions merged into one /_berth/metrics answer."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.router.peers import merge

WORKER_A = """# HELP berth_router_requests_total Requests proxied per deployment.
# TYPE berth_router_requests_total counter
berth_router_requests_total{deployment="iris",project="default"} 30.0
# HELP berth_router_request_duration_seconds Time to answer a request, as the router saw it.
# TYPE berth_router_request_duration_seconds histogram
berth_router_request_duration_seconds_bucket{deployment="iris",le="0.005",project="default"} 20.0
berth_router_request_duration_seconds_bucket{deployment="iris",le="+Inf",project="default"} 30.0
berth_router_request_duration_seconds_count{deployment="iris",project="default"} 30.0
berth_router_request_duration_seconds_sum{deployment="iris",project="default"} 0.3
# HELP berth_router_in_flight_requests Requests being proxied now.
# TYPE berth_router_in_flight_requests gauge
berth_router_in_flight_requests{deployment="iris",project="default"} 2.0
# HELP berth_router_ready_replicas Ready replicas the router knows.
# TYPE berth_router_ready_replicas gauge
berth_router_ready_replicas{deployment="iris",project="default"} 3.0
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000.0
"""
WORKER_B = (
    WORKER_A.replace("} 30.0", "} 12.0").replace("} 20.0", "} 2.0").replace("} 0.3", "} 0.5")
    .replace("} 2.0\n# HELP berth_router_ready", "} 1.0\n# HELP berth_router_ready").replace("1000.0", "1002.0")
)


def values(text: bytes) -> dict[str, float]:
    return {
        sample.name + (f"/{sample.labels['le']}" if "le" in sample.labels else ""): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_counters_histograms_and_in_flight_add_up_and_shared_copies_do_not() -> None:
    merged = values(merge([WORKER_A, WORKER_B]))
    assert merged["berth_router_requests_total"] == 42  # 30 + 12
    assert merged["berth_router_request_duration_seconds_bucket/0.005"] == 22
    assert merged["berth_router_request_duration_seconds_bucket/+Inf"] == 42
    assert merged["berth_router_request_duration_seconds_sum"] == 0.8
    assert merged["berth_router_in_flight_requests"] == 3  # 2 + 1
    assert merged["berth_router_ready_replicas"] == 3  # each worker's copy of the table: not 6
    assert merged["process_start_time_seconds"] == 1000  # the earliest


def test_one_worker_is_its_own_exposition() -> None:
    assert values(merge([WORKER_A])) == values(WORKER_A.encode())
