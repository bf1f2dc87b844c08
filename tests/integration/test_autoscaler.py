"""The autoscaler service on a real nats-server with the generated permissions, each producer
connected as the service that really publishes it: the registry's spec, the router's request reports,
the scheduler's usage reports in; DeploymentScaled(source="autoscaler") out, with its inputs, which
`explain` replays to the same count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr


from libs.autoscaling import hpa
from libs.autoscaling.trace import TraceDecision
from libs.bus import SCALE_EVENTS, latest_per_subject, make_broker
from libs.config import Settings
from libs.events import (
    DeploymentScaled,
    ReplicaUsage,
    ReplicaUsageReported,
    RequestMetricsReported,
    SpecApplied,
    utcnow,
)
from libs.spec import validate_spec
from services.autoscaler.app import start_autoscaler
from tests.helpers import eventually
from tests.servers.bus import authenticated_bus, publish_as, user

REF = {"deployment_id": "d1", "project": "default", "slug": "chat"}


@pytest.fixture
async def auth_settings(tmp_path: Path) -> AsyncIterator[Settings]:
    async with authenticated_bus(tmp_path) as (url, passwords):
        yield Settings(data_dir=tmp_path / "berth", nats_url=url, nats_user="autoscaler",
                       nats_password=SecretStr(passwords["autoscaler"]), autoscaler_ops_port=0,
                       autoscaler_interval_seconds=0.2, autoscaler_metrics_window_seconds=2.0, _env_file=None)


def spec(metrics: list[dict[str, Any]], scale_down_window: int = 300) -> SpecApplied:
    document = {
        "name": "chat", "image": "i",
        "resources": {"ports": [8000], "replicas": 1, "autoscaling": {
            "enabled": True, "maxReplicas": 6, "metrics": metrics,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": scale_down_window}}}},
    }
    return SpecApplied(**REF, name="chat", spec_id="s1", spec_version=1, spec=validate_spec(document))


def usage(*ready: bool) -> ReplicaUsageReported:
    started = utcnow() - timedelta(minutes=10)
    return ReplicaUsageReported(**REF, window_seconds=10.0, replicas=[
        ReplicaUsage(replica_id=f"r{i}", state="running", started_at=started, ready=r, ready_changed_at=started,
                     cpu_percent=10.0, memory_percent=10.0)
        for i, r in enumerate(ready)
    ])  # fmt: skip


def requests(in_flight: int, count: int = 0, latency: float = 0.0) -> RequestMetricsReported:
    return RequestMetricsReported(**REF, window_seconds=1.0, requests=count, errors=0, latency_sum_seconds=latency,
                                  latency_buckets=[0] * 12, in_flight=in_flight)


async def decision(settings: Settings, replicas: int, reader: str = "scheduler") -> DeploymentScaled:
    """The autoscaler's decision of `replicas`, as `reader` (the scheduler applies it; the registry
    serves it to `berth autoscale record`) reads it under its own permissions."""
    broker = make_broker(settings.resolved_nats_url, reader, user(settings, reader))
    await broker.connect()
    try:
        async def latest() -> DeploymentScaled | None:
            js = broker.config.connection_state.stream
            found = [e for e in await latest_per_subject(js, SCALE_EVENTS) if isinstance(e, DeploymentScaled)]
            mine = [e for e in found if e.source == "autoscaler" and e.replicas == replicas]
            return mine[0] if mine else None

        return await eventually(latest, timeout=15, what=f"an autoscaler decision of {replicas}")
    finally:
        await broker.stop()


async def test_concurrency_over_target_scales_to_the_computed_count_and_explain_agrees(auth_settings: Settings) -> None:
    handle = await start_autoscaler(auth_settings)
    try:
        await publish_as(auth_settings, "spec-registry", spec([{"metric": "concurrency", "value": 10}]))
        await publish_as(auth_settings, "scheduler", usage(True))
        await publish_as(auth_settings, "router", requests(in_flight=30))
        # AverageValue: ceil(30 in flight / 10 per replica) = 3; the default scale-up policies allow +4.
        scaled = await decision(auth_settings, 3)
        assert (await decision(auth_settings, 3, reader="spec-registry")).event_id == scaled.event_id
        assert scaled.reason.startswith("concurrency above target") and scaled.spec_replicas == 1
        assert scaled.inputs is not None and scaled.decision is not None
        replayed = hpa.decide(TraceDecision.model_validate(scaled.inputs).inputs())
        assert replayed.desired_replicas == 3 == scaled.inputs["decided"]
    finally:
        await handle.stop()


async def test_request_duration_drives_replicas_and_they_shrink_after_the_stabilisation_window(
    auth_settings: Settings,
) -> None:
    handle = await start_autoscaler(auth_settings)
    try:
        await publish_as(auth_settings, "spec-registry", spec([{"metric": "requestDuration", "value": 0.5}], 2))
        await publish_as(auth_settings, "scheduler", usage(True))
        # 10 requests taking 1.5 s on average against 0.5 s, one ready replica: ceil(3 × 1) = 3.
        await publish_as(auth_settings, "router", requests(in_flight=10, count=10, latency=15.0))
        await decision(auth_settings, 3)
        # Load stops: the router reports one quiet window; the 2 s scale-down window passes, then 1.
        await publish_as(auth_settings, "scheduler", usage(True, True, True))
        await publish_as(auth_settings, "router", requests(in_flight=0))
        shrunk = await decision(auth_settings, 1)
        assert "All metrics below target" in shrunk.reason
    finally:
        await handle.stop()
