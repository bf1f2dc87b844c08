"""The metrics service on a real nats-server with the generated permissions, each producer connected
as the service that really publishes it (router, scheduler); queries asked as the registry does
(`berth.rpc.v1.metrics`), summaries read from BERTH_METRICS; a restart folds in what was published
while it was down (durable consumers)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from pydantic import SecretStr

from libs.bus import METRICS_RPC, METRICS_SUMMARIES, latest_per_subject
from libs.config import Settings
from libs.events import (
    LATENCY_BUCKETS_SECONDS,
    DeploymentMetricsSummarized,
    DeploymentStatusChanged,
    ReplicaRequests,
    ReplicaStatus,
    ReplicaUsage,
    ReplicaUsageReported,
    RequestMetricsReported,
    RevisionTarget,
    TrafficAssigned,
)
from services.metrics.app import start_metrics
from tests.helpers import eventually
from tests.servers.bus import authenticated_bus, publish_as, user

REF = {"deployment_id": "d1", "project": "default", "slug": "iris"}
BUCKET_100MS = LATENCY_BUCKETS_SECONDS.index(0.1)


@pytest.fixture
async def auth_settings(tmp_path: Path) -> AsyncIterator[Settings]:
    async with authenticated_bus(tmp_path) as (url, passwords):
        yield Settings(data_dir=tmp_path / "berth", nats_url=url, nats_user="metrics",
                       nats_password=SecretStr(passwords["metrics"]), metrics_ops_port=0,
                       metrics_summary_interval_seconds=0.2, metrics_resolution_seconds=1, _env_file=None)  # fmt: skip


async def query(settings: Settings, **params: Any) -> dict[str, Any]:
    """Ask as the registry does."""
    client = await nats.connect(
        settings.resolved_nats_url, user="spec-registry", password=user(settings, "spec-registry").password,
        inbox_prefix=b"_INBOX_spec-registry",
    )  # fmt: skip
    try:
        reply = await client.request(METRICS_RPC, json.dumps({"deployment_id": "d1", **params}).encode(), timeout=5)
        return json.loads(reply.data)  # type: ignore[no-any-return]
    finally:
        await client.close()


def report(requests: int, errors: int = 0, client_errors: int = 0, replica: str = "r1") -> RequestMetricsReported:
    buckets = [0] * len(LATENCY_BUCKETS_SECONDS)
    buckets[BUCKET_100MS] = requests
    return RequestMetricsReported(
        **REF, window_seconds=1.0, requests=requests, errors=errors, client_errors=client_errors,
        latency_sum_seconds=0.08 * requests, latency_buckets=buckets, in_flight=1,
        replicas=[ReplicaRequests(replica_id=replica, revision_id="rev1", requests=requests, errors=errors,
                                  latency_buckets=buckets)],
    )  # fmt: skip


def total_requests(answer: dict[str, Any]) -> float:
    step = answer["step_seconds"]
    return round(sum(v * step for _, v in answer["series"]["request_rate"] if v is not None))


async def test_reports_usage_and_status_become_series_and_a_summary(auth_settings: Settings) -> None:
    handle = await start_metrics(auth_settings)
    try:
        traffic = TrafficAssigned(**REF, generation=1, spec_version=1,
                                  targets=[RevisionTarget(revision_id="rev1", percent=100, spec_versions=[1])])  # fmt: skip
        await publish_as(auth_settings, "scheduler", traffic)
        await publish_as(auth_settings, "router", report(40, errors=4, client_errors=2), report(60, replica="r2"))
        usage = ReplicaUsageReported(**REF, window_seconds=10, replicas=[
            ReplicaUsage(replica_id="r1", revision_id="rev1", state="running", cpu_percent=30.0, memory_percent=10.0),
            ReplicaUsage(replica_id="r2", revision_id="rev1", state="running", cpu_percent=50.0, memory_percent=20.0)])  # fmt: skip
        status = DeploymentStatusChanged(
            **REF, spec_id="s1", phase="Ready", desired_replicas=2, ready_replicas=2,
            replicas=[ReplicaStatus(replica_id=r, spec_id="s1", revision_id="rev1", ready=True) for r in ("r1", "r2")],
        )  # fmt: skip
        await publish_as(auth_settings, "scheduler", usage, status)

        async def complete() -> dict[str, Any] | None:
            answer = await query(auth_settings, window=120, step=60, version=1)
            return answer if total_requests(answer) == 100 and answer["current"]["cpu_percent"] else None

        answer = await eventually(complete, what="the reports in the series")
        series = answer["series"]
        errors = sum((rate or 0) * 60 * (error or 0) for (_, rate), (_, error)
                     in zip(series["request_rate"], series["error_rate"], strict=True))  # fmt: skip
        assert errors == pytest.approx(4)
        assert answer["current"]["error_rate"] == pytest.approx(0.04)
        assert answer["current"]["client_error_rate"] == pytest.approx(0.02)
        assert 0.05 < answer["current"]["latency_p99"] <= 0.1  # every request was in (0.05, 0.1]
        assert answer["current"]["cpu_percent"] == pytest.approx(40.0)
        assert {r["replica_id"] for r in answer["replicas"]} == {"r1", "r2"}

        async def summarized() -> DeploymentMetricsSummarized | None:
            client = await nats.connect(auth_settings.resolved_nats_url, user="spec-registry",
                                        password=user(auth_settings, "spec-registry").password,
                                        inbox_prefix=b"_INBOX_spec-registry")  # fmt: skip
            try:
                found = await latest_per_subject(client.jetstream(), METRICS_SUMMARIES)
            finally:
                await client.close()
            summary = next((e for e in found if isinstance(e, DeploymentMetricsSummarized)), None)
            return summary if summary is not None and summary.summary.request_rate > 0 else None

        summary = await eventually(summarized, what="a summary on the bus")
        assert summary.summary.request_rate == pytest.approx(100 / 60)
        bad = await query(auth_settings, window=120, step=60, version=9)
        assert bad["field"] == "version" and "9" not in bad["rule"]
    finally:
        await handle.stop()


async def test_a_restart_folds_in_what_was_reported_while_it_was_down(auth_settings: Settings) -> None:
    handle = await start_metrics(auth_settings)
    try:
        await publish_as(auth_settings, "router", report(10))

        async def seen(count: int) -> bool:
            return total_requests(await query(auth_settings, window=300, step=60)) == count

        await eventually(lambda: seen(10), what="the first report kept")
    finally:
        await handle.stop()
    await publish_as(auth_settings, "router", report(20), report(30))  # while it is down
    handle = await start_metrics(auth_settings)
    try:
        await eventually(lambda: seen(60), what="the reports of the downtime folded in, nothing counted twice")
    finally:
        await handle.stop()
