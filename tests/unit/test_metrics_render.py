"""What the CLI prints of the metrics: `deployments get`'s last-minute figures, and the table with
sparklines of `deployments metrics`."""

from __future__ import annotations

from typing import Any

from berth.render import deployment_detail, metrics_table, show, sparkline

DEPLOYMENT: Any = {
    "name": "iris", "deployment_id": "d1", "spec_version": 2, "spec_id": "s" * 26, "project": "default",
    "slug": "iris", "endpoint": "/default/iris", "environment": "development",
    "spec": {"image": "python:3.11", "resources": {"ports": [8000]}},
}  # fmt: skip


def test_get_shows_rate_error_rate_and_quantiles(capsys: Any) -> None:
    summary = {"at": "2026-12-01T13:00:00+00:00", "window_seconds": 60, "request_rate": 12.5, "error_rate": 0.0125,
               "client_error_rate": 0.5, "latency_p50": 0.0123, "latency_p95": 0.3, "latency_p99": 2.5,
               "in_flight": 3, "cpu_percent": 41.0, "memory_percent": None, "gpu_percent": None}  # fmt: skip
    deployment_detail(DEPLOYMENT, {"phase": "Ready", "replicas": [], "metrics": summary})
    out = " ".join(capsys.readouterr().out.split())
    assert "Request rate 12.50/s" in out
    assert "Error rate 1.25 % (4xx 50.00 %)" in out
    assert "Latency p50 / p95 / p99 12 ms / 300 ms / 2.50 s" in out
    assert "Usage (mean of replicas) CPU 41 %" in out


def test_get_before_any_figures_says_so(capsys: Any) -> None:
    deployment_detail(DEPLOYMENT, {"phase": "Ready", "replicas": [], "metrics": None})
    assert "none yet" in capsys.readouterr().out


def test_sparklines_scale_between_min_and_max_and_leave_gaps() -> None:
    assert sparkline([[t, v] for t, v in enumerate([0, 1, 2, 3, 4, 5, 6, 7])]) == "▁▂▃▄▅▆▇█"
    assert sparkline([[0, 1.0], [1, None], [2, 3.0]]) == "▁ █"
    assert sparkline([[0, None]]) == ""
    assert sparkline([[t, 5] for t in range(60)], width=10) == "▁" * 10


def test_the_metrics_table_has_a_row_per_series_and_replica(capsys: Any) -> None:
    points = [[60 * i, float(i)] for i in range(1, 6)]
    answer = {"window_seconds": 300, "step_seconds": 60, "version": 3,
              "series": {"request_rate": points, "latency_p99": [[60, None], [120, 0.25]]},
              "replicas": [{"replica_id": "r-slow", "revision_id": "rev",
                            "series": {"request_rate": points, "latency_p99": [[60, 0.4]]}}]}  # fmt: skip
    show(metrics_table(answer))
    lines = capsys.readouterr().out.splitlines()
    assert "version 3" in lines[0]
    requests = next(line for line in lines if line.strip().startswith("Requests/s")).split()
    assert requests[1:4] == ["5.00", "1.00", "5.00"] and requests[4] == "▁▃▅▆█"  # (v - 1) / 4 of 7 steps, rounded
    assert any("Latency p99" in line and "250 ms" in line for line in lines)
    assert any("replica r-slow p99" in line and "400 ms" in line for line in lines)
