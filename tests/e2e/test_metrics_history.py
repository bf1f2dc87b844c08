"""The metrics history end to end: the iris example with three replicas, one made slow on purpose,
under a known load through the router; the API's figures against what the test itself measured.

Two replicas answer after 0.6 s and one after 1.6 s (examples/iris/server.py test hooks), so the
client-side p50 lies in the (0.5, 1] bucket and p95/p99 in (1, 2.5], each far enough from a bound
that the client's own overhead (over 100 ms on a loaded machine) cannot move it to another bucket; a
Prometheus-style quantile from the router's histogram is only exact to its bucket, and that is what
is compared."""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest
import yaml

from libs.events import LATENCY_BUCKETS_SECONDS
from tests.e2e.conftest import iris_spec
from tests.e2e.load import steady_load
from tests.e2e.test_endpoint import SETOSA, create, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow

STEADY_SECONDS, SLOW_SECONDS = 0.6, 1.6
FAILED, INVALID = 6, 9


@pytest.fixture
def extra_services() -> tuple[str, ...]:
    return ("metrics",)


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"BERTH_ROUTER_METRICS_INTERVAL_SECONDS": "1", "BERTH_METRICS_SUMMARY_INTERVAL_SECONDS": "1",
            "BERTH_USAGE_REPORT_INTERVAL_SECONDS": "1"}


def bucket(seconds: float) -> int:
    """The histogram bucket holding a latency: the first upper bound >= it (Prometheus' `le`)."""
    return next(i for i, bound in enumerate(LATENCY_BUCKETS_SECONDS) if seconds <= bound)


def nearest_rank(timings: list[float], q: float) -> float:
    ordered = sorted(timings)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


async def test_rates_and_quantiles_match_what_the_clients_measured(api: httpx.AsyncClient, router: httpx.AsyncClient) -> None:
    document = yaml.safe_load(iris_spec(replicas=3))
    document["env"] = [{"name": "IRIS_TEST_HOOKS", "value": "1"}]
    await create(api, yaml.safe_dump(document))
    status = await wait_phase(api, "iris", "Ready", ready=3, timeout=120)
    replicas = sorted(status["replicas"], key=lambda r: r["replica_id"])
    async with httpx.AsyncClient(timeout=10) as direct:  # to each replica itself, not through the router
        for index, replica in enumerate(replicas):
            delay = SLOW_SECONDS if index == 0 else STEADY_SECONDS
            answer = await direct.put(f"http://{replica['address']}/_test/behaviour", json={"delay_seconds": delay})
            assert answer.status_code == 200, answer.text

    async with steady_load(router, "/default/iris/predict", clients=9) as load:
        await eventually(lambda: load.answered >= 180, timeout=180, what="180 answers")
    assert load.failures == []
    timings = list(load.timings)
    for headers, body, expected in [({"X-Iris-Fail": "1"}, {"instances": [SETOSA]}, 500)] * FAILED + [
        ({}, {"instances": "not a list"}, 422)
    ] * INVALID:
        started = time.perf_counter()
        response = await router.post("/default/iris/predict", json=body, headers=headers)
        timings.append(time.perf_counter() - started)
        assert response.status_code == expected, response.text
    sent = len(timings)

    async def counted() -> dict[str, Any] | None:
        answer = await api.get("/v1/deployments/iris/metrics", params={"window": "15m", "step": "15m"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        (_, rate), = body["series"]["request_rate"]
        return body if rate is not None and round(rate * 900) == sent else None

    body = await eventually(counted, timeout=30, what=f"the {sent} requests counted")
    series = {name: points[0][1] for name, points in body["series"].items()}
    assert series["error_rate"] == pytest.approx(FAILED / sent)
    assert series["client_error_rate"] == pytest.approx(INVALID / sent)
    for q, name in ((0.5, "latency_p50"), (0.95, "latency_p95"), (0.99, "latency_p99")):
        measured = nearest_rank(timings, q)
        assert bucket(series[name]) == bucket(measured), (name, series[name], measured)
    assert bucket(series["latency_p50"]) == bucket(STEADY_SECONDS) and bucket(series["latency_p99"]) == bucket(SLOW_SECONDS)
    slow = next(r for r in body["replicas"] if r["replica_id"] == replicas[0]["replica_id"])
    assert bucket(slow["series"]["latency_p99"][0][1]) == bucket(SLOW_SECONDS)
    # The iris spec does not autoscale, and its usage is kept all the same: per replica and in all.
    assert "autoscaling" not in document["resources"]
    assert series["cpu_percent"] is not None and series["memory_percent"] > 0
    for replica in replicas:
        measured = next(r for r in body["replicas"] if r["replica_id"] == replica["replica_id"])["series"]
        assert measured["cpu_percent"][0][1] is not None and measured["memory_percent"][0][1] > 0, replica

    async def in_status() -> dict[str, Any] | None:  # what `berth deployments get` shows
        figures = (await api.get("/v1/deployments/iris")).json()["status"].get("metrics")
        return figures if figures and figures["latency_p99"] else None

    figures = await eventually(in_status, timeout=30, what="the figures in the status")
    assert bucket(figures["latency_p99"]) == bucket(SLOW_SECONDS)
