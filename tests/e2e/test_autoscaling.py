"""Autoscaling end to end on the local runtime: load on the iris example raises the average request
duration over its target, the autoscaler decides the HPA's count and the replicas grow to it; load
stops, and after the (shortened) scale-down stabilisation window they shrink back to the minimum."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from berth.cli import app

from libs.autoscaling import hpa
from libs.autoscaling.trace import TraceDecision
from libs.bus import SCALE_EVENTS, latest_per_subject
from libs.events import DeploymentScaled
from tests.e2e.conftest import Platform, iris_spec
from tests.e2e.test_endpoint import create, predict, status_of, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow

SCALE_DOWN_WINDOW_SECONDS = 4


@pytest.fixture
def extra_services() -> tuple[str, ...]:
    return ("autoscaler",)


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {
        "BERTH_ROUTER_METRICS_INTERVAL_SECONDS": "1",
        "BERTH_USAGE_REPORT_INTERVAL_SECONDS": "1",
        "BERTH_AUTOSCALER_INTERVAL_SECONDS": "1",
        "BERTH_AUTOSCALER_METRICS_WINDOW_SECONDS": "3",
    }


async def load(router: httpx.AsyncClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            await predict(router)


async def autoscaler_decision(js: Any) -> DeploymentScaled | None:
    found = [e for e in await latest_per_subject(js, SCALE_EVENTS) if isinstance(e, DeploymentScaled)]
    return next((e for e in found if e.source == "autoscaler"), None)


async def berth(platform: Platform, tmp_path: Path, *args: str) -> Result:
    env = {"BERTH_API_URL": platform.settings.resolved_api_url, "BERTH_DATA_DIR": str(platform.settings.data_dir),
           "BERTH_TOKEN": None, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_load_grows_replicas_to_the_computed_count_and_they_shrink_after_the_window(
    api: httpx.AsyncClient, router: httpx.AsyncClient, js: Any, platform: Platform, tmp_path: Path
) -> None:
    # A target no iris request can meet (0.1 ms): under load the ratio is large, so the count is
    # bounded by the default scale-up policy (+4 per 15 s from 1 → 5) and maxReplicas (3).
    autoscaling = {"enabled": True, "maxReplicas": 3, "metrics": [{"metric": "requestDuration", "value": 0.0001}],
                   "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_SECONDS}}}
    await create(api, iris_spec(replicas=1, autoscaling=autoscaling))
    await wait_phase(api, "iris", "Ready", ready=1)

    stop = asyncio.Event()
    clients = [asyncio.create_task(load(router, stop)) for _ in range(4)]
    try:
        grown = await eventually(lambda: _desired(api, 3), timeout=60, what="desired 3 from the autoscaler")
        assert grown["desired_source"] == "autoscaler" and "requestDuration above target" in grown["scale_reason"]
        await wait_phase(api, "iris", "Ready", ready=3, timeout=90)
        decided = await autoscaler_decision(js)
        assert decided is not None and decided.replicas == 3 and decided.inputs is not None
        # The recorded inputs replay to the decision the service made.
        assert hpa.decide(TraceDecision.model_validate(decided.inputs).inputs()).desired_replicas == 3
    finally:
        stop.set()
        await asyncio.gather(*clients)

    # `berth autoscale record` (through the API) then `explain`: the same decision.
    trace = tmp_path / "trace.json"
    recorded = await berth(platform, tmp_path, "autoscale", "record", "iris", "--file", str(trace))
    assert recorded.exit_code == 0, recorded.output
    explained = await berth(platform, tmp_path, "autoscale", "explain", "--input", str(trace), "-o", "json")
    assert explained.exit_code == 0, explained.output
    replayed = json.loads(explained.stdout)["decisions"]
    assert replayed and all(d["desiredReplicas"] == d["recorded"] for d in replayed)

    # No traffic: requestDuration counts as 0, every metric is below target; the window holds 3
    # for SCALE_DOWN_WINDOW_SECONDS after the last loaded recommendation, then down to the minimum (1).
    shrunk = await eventually(lambda: _desired(api, 1), timeout=60, what="desired back to 1")
    assert "All metrics below target" in shrunk["scale_reason"]
    await wait_phase(api, "iris", "Ready", ready=1, timeout=60)
    assert (await predict(router)).status_code == 200


async def _desired(api: httpx.AsyncClient, replicas: int) -> dict[str, Any] | None:
    status = await status_of(api, "iris")
    return status if status["desired_replicas"] == replicas and status.get("scale_reason") else None


async def test_idle_deployment_scales_to_zero_and_the_next_request_is_held_and_answered(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    autoscaling = {"enabled": True, "minReplicas": 0, "maxReplicas": 2,
                   "metrics": [{"metric": "requestDuration", "value": 0.5}],
                   "behavior": {"scaleDown": {"stabilizationWindowSeconds": 2}}}
    await create(api, iris_spec(replicas=1, autoscaling=autoscaling))
    # No traffic: requestDuration 0 → 0 replicas once the 2 s window has passed.
    idle = await wait_phase(api, "iris", "ScaledToZero", timeout=60)
    assert idle["desired_replicas"] == 0 and idle["replicas"] == []

    # The next requests are held by the router while the autoscaler brings a replica up: answered, none fails.
    answers = await asyncio.gather(*(predict(router) for _ in range(3)))
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    woken = await status_of(api, "iris")
    assert woken["desired_replicas"] >= 1 and woken["desired_source"] == "autoscaler"
