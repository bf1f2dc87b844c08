"""The autoscaler's reading of the bus (pure) and its loop with a fake clock; the scheduler's side:
usage reports and the decision's reason in status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.autoscaling import hpa
from libs.autoscaling.trace import TraceDecision
from libs.events import (
    DeploymentDeleted,
    DeploymentScaled,
    Event,
    ReplicaUsage,
    ReplicaUsageReported,
    RequestMetricsReported,
    SpecApplied,
)
from libs.runtime.base import Usage
from libs.spec import validate_spec
from services.autoscaler.decider import Decider
from services.autoscaler.inputs import current_replicas, replica, request_metrics
from services.scheduler.usage import UsageReporter
from tests.unit.test_scheduler_reconcile import DID, World, spec

REF = {"deployment_id": "d1", "project": "default", "slug": "chat"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def report(at: float, requests: int = 0, latency: float = 0.0, in_flight: int = 0, window: float = 5.0,
           reporter: str = "") -> RequestMetricsReported:  # fmt: skip
    return RequestMetricsReported(**REF, occurred_at=T0 + timedelta(seconds=at), window_seconds=window,
                                  requests=requests, errors=0, latency_sum_seconds=latency,
                                  latency_buckets=[0] * 12, in_flight=in_flight, reporter=reporter)


NOW = T0.timestamp() + 100


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        ([], {"requestDuration": 0.0, "rps": 0.0, "concurrency": 0.0}),  # never any traffic
        ([report(50, 10, 5.0, 2)], {}),  # traffic, then the router went silent: missing, not zero
        ([report(50, 10, 5.0, 2), report(55)], {"requestDuration": 0.0, "rps": 0.0, "concurrency": 0.0}),  # quiet
        ([report(90, 10, 5.0, 2), report(95, 30, 30.0, 4)],  # both within 15 s: 40 requests over 10 s
         {"requestDuration": 35.0 / 40, "rps": 4.0, "concurrency": 3.0}),
        ([report(80, 100, 100.0, 9), report(95, 10, 1.0, 1)],  # the first is older than the window
         {"requestDuration": 0.1, "rps": 2.0, "concurrency": 1.0}),
        # Two router workers, each reporting its windows: a, 10 then 30 requests over 2 x 5 s (4 rps),
        # in flight 2 then 4 (mean 3); b, 20 requests over one 5 s window (4 rps), in flight 1. The
        # router served 8 rps with 4 requests in flight on average, not 60 / 15 s and 7 / 3.
        ([report(90, 10, 5.0, 2, reporter="h/1"), report(92, 20, 4.0, 1, reporter="h/2"),
          report(95, 30, 30.0, 4, reporter="h/1")],
         {"requestDuration": 39.0 / 60, "rps": 8.0, "concurrency": 4.0}),
        # Traffic stopped: the last report (any worker's) is quiet, so no report in the window is zeros.
        ([report(50, 10, 5.0, 2, reporter="h/1"), report(52, 5, 1.0, 1, reporter="h/2"),
          report(55, reporter="h/1"), report(57, reporter="h/2")],
         {"requestDuration": 0.0, "rps": 0.0, "concurrency": 0.0}),
    ],
)
def test_request_metrics_over_the_window(reports: list[RequestMetricsReported], expected: dict[str, float]) -> None:
    assert request_metrics(reports, NOW, 15.0) == pytest.approx(expected)


def test_replica_sample_as_the_hpa_reads_a_pod() -> None:
    started = T0 + timedelta(seconds=40)
    sample = ReplicaUsage(replica_id="r", state="running", started_at=started, ready=True,
                          ready_changed_at=started + timedelta(seconds=20), cpu_percent=75.0, memory_percent=None)
    pod = replica(sample, NOW, NOW - 2, 10.0, fresh=True)
    assert (pod.phase, pod.ready, pod.started_seconds_ago, pod.ready_changed_seconds_ago) == ("Running", True, 60.0, 40.0)
    assert pod.usage == {"cpu": 0.75}  # memory not sampled: missing, and gpu never reported
    assert replica(sample, NOW, NOW - 60, 10.0, fresh=False).usage == {}  # a stale report has no samples
    crashed = replica(ReplicaUsage(replica_id="r", state="backoff", ready=True), NOW, NOW, 10.0, fresh=True)
    assert (crashed.phase, crashed.ready) == ("Running", False)  # CrashLoopBackOff: running, not ready
    assert replica(ReplicaUsage(replica_id="r", state="starting"), NOW, NOW, 10.0, fresh=True).phase == "Pending"
    assert replica(ReplicaUsage(replica_id="r", state="stopping"), NOW, NOW, 10.0, fresh=True).deleting


def applied(replicas: int = 1, version: int = 1, **autoscaling: Any) -> SpecApplied:
    scaling = {"enabled": True, "maxReplicas": 10, "metrics": [{"metric": "concurrency", "value": 10}], **autoscaling}
    document = {"name": "chat", "image": "i", "resources": {"ports": [8000], "replicas": replicas, "autoscaling": scaling}}
    return SpecApplied(**REF, name="chat", spec_id=f"s{version}", spec_version=version, spec=validate_spec(document))


def test_the_count_in_force_is_composed_as_the_scheduler_composes_it() -> None:
    decided = DeploymentScaled(**REF, source="autoscaler", replicas=4, spec_version=1, spec_replicas=1)
    assert current_replicas(applied(1), decided) == 4
    assert current_replicas(applied(2, 2), decided) == 2  # a spec with another count supersedes it
    assert current_replicas(applied(1), None) == 1


class Loop:
    """The decider with a clock the test moves and the events it publishes."""

    def __init__(self) -> None:
        self.now = NOW
        self.published: list[DeploymentScaled] = []
        self.decider = Decider(self.publish, window_seconds=15.0, clock=lambda: self.now)

    async def publish(self, event: Event) -> None:
        assert isinstance(event, DeploymentScaled)
        self.published.append(event)

    async def feed(self, *events: Event) -> None:
        for event in events:
            await self.decider.on_event(event)

    async def tick(self, seconds: float, in_flight: int) -> int:
        self.now += seconds
        at = self.now - T0.timestamp()
        await self.feed(report(at, requests=in_flight, latency=0.1 * in_flight, in_flight=in_flight))
        await self.decider.decide_all()
        return self.published[-1].replicas


async def test_load_raises_replicas_at_the_policy_rate_and_they_shrink_after_the_window() -> None:
    loop = Loop()
    await loop.feed(applied(1, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}}))
    counts = [await loop.tick(15, in_flight=200) for _ in range(3)]
    # 200 in flight / 10 → 20, rate-limited by the default scale-up policies per 15 s: max(1+4, 2) = 5,
    # then max(5+4, 10) = 10 = maxReplicas.
    assert counts == [5, 10, 10]
    assert "ScaleUpLimit" in loop.published[0].reason and "TooManyReplicas" in loop.published[1].reason
    # Load stops. The first tick still sees the last loaded report in its 15 s metrics window
    # (mean 100 in flight → 10); the next ones recommend 0, held at 10 by the 60 s scale-down window.
    held = [await loop.tick(15, in_flight=0) for _ in range(3)]
    assert held == [10, 10, 10] and "ScaleDownStabilized" in loop.published[-1].reason
    assert await loop.tick(29, in_flight=0) == 10  # 59 s after the recommendation of 10: inside
    assert await loop.tick(1, in_flight=0) == 1  # 60 s: out (strictly after the cutoff); to minReplicas (1)
    assert loop.published[-1].spec_replicas == 1
    # Each published decision carries its inputs as a trace entry (history as ages): replayed, the
    # same decision, stabilised and rate-limited ones included.
    for event in loop.published:
        assert event.inputs is not None
        assert hpa.decide(TraceDecision.model_validate(event.inputs).inputs()).desired_replicas == event.replicas


async def test_unchanged_decisions_are_not_republished_and_deleted_deployments_are_forgotten() -> None:
    loop = Loop()
    await loop.feed(applied(2))
    await loop.tick(15, in_flight=20)
    await loop.tick(15, in_flight=20)
    assert [e.replicas for e in loop.published] == [2]  # 20 / 10 = 2: said once
    await loop.feed(DeploymentDeleted(**REF))
    assert loop.decider.held() == 0


async def test_the_scheduler_reports_usage_and_shows_the_autoscaler_reason() -> None:
    world = World()
    s = spec(2, resources={"ports": [8000], "replicas": 2, "autoscaling": {
        "enabled": True, "maxReplicas": 5, "metrics": [{"metric": "cpu", "value": 50}]}})
    ids = await world.running(s)
    world.reconciler.scale_decided(DeploymentScaled(
        deployment_id=DID, project="default", slug="iris", source="autoscaler", replicas=3, spec_version=1,
        spec_replicas=2, reason="cpu above target"))
    await world.reconcile()
    assert (world.status().desired_replicas, world.status().scale_reason) == (3, "cpu above target")
    assert not any("autoscaling" in item for item in world.status().not_provided)

    async def usage(replica_id: str) -> Usage | None:
        return Usage(cpu_percent=80.0, memory_percent=20.0, memory_bytes=1) if replica_id == ids[0] else None

    world.runtime.usage = usage  # type: ignore[method-assign]
    reporter = UsageReporter(world.runtime, world.reconciler, world.publish, 10.0)
    await reporter.report()
    reported = [e for e in world.history if isinstance(e, ReplicaUsageReported)][-1]
    by_id = {r.replica_id: r for r in reported.replicas}
    assert by_id[ids[0]].cpu_percent == 80.0 and by_id[ids[1]].cpu_percent is None
    assert by_id[ids[0]].ready is True and by_id[ids[0]].ready_changed_at is not None
    first_change = by_id[ids[0]].ready_changed_at
    await world.ready(ids[0])  # a heartbeat repeating ready: not a readiness change
    await reporter.report()
    again = [e for e in world.history if isinstance(e, ReplicaUsageReported)][-1]
    assert {r.replica_id: r for r in again.replicas}[ids[0]].ready_changed_at == first_change


async def test_a_policy_change_applies_live_without_a_new_revision() -> None:
    from libs.revision import revision_id

    before, after = applied(2), applied(2, 2, maxReplicas=3, behavior={"scaleUp": {"selectPolicy": "Disabled"}})
    assert revision_id(before.spec) == revision_id(after.spec)  # the replicas keep running
    loop = Loop()
    await loop.feed(before)
    assert await loop.tick(15, in_flight=100) == 6  # 100 / 10 = 10, default rate from 2: max(2+4, 4) = 6
    await loop.feed(after)  # the decision in force (6) was made against replicas 2: it still holds
    assert await loop.tick(15, in_flight=100) == 3  # above the new maxReplicas: straight to it
    assert await loop.tick(15, in_flight=100) == 3  # scale up disabled: stays, whatever the load


async def test_scaled_to_zero_shows_in_status_and_the_assignment_asks_the_router_to_hold() -> None:
    world = World()
    s = spec(1, resources={"ports": [8000], "replicas": 1, "autoscaling": {
        "enabled": True, "minReplicas": 0, "maxReplicas": 3, "metrics": [{"metric": "rps", "value": 5}]}})
    await world.running(s)
    world.reconciler.scale_decided(DeploymentScaled(
        deployment_id=DID, project="default", slug="iris", source="autoscaler", replicas=0, spec_version=1,
        spec_replicas=1, reason="All metrics below target"))
    await world.reconcile()
    await world.reconcile()
    assert (world.status().phase, world.status().desired_replicas) == ("ScaledToZero", 0)
    held = world.assignment()
    assert held.hold_seconds > 0 and [t.replicas for t in held.targets] == [[]]  # listed, none ready
    plain = World()
    await plain.running(spec(1))
    assert plain.assignment().hold_seconds == 0  # no scale to zero: 503 at once, as before


async def test_usage_of_a_deployment_without_autoscaling_is_reported_and_the_autoscaler_leaves_it_alone() -> None:
    world = World()
    ids = await world.running(spec(2))  # two fixed replicas: the metrics history still wants its usage

    async def usage(replica_id: str) -> Usage | None:
        return Usage(cpu_percent=95.0, memory_percent=50.0, memory_bytes=1)

    world.runtime.usage = usage  # type: ignore[method-assign]
    reporter = UsageReporter(world.runtime, world.reconciler, world.publish, 10.0)
    await reporter.report()
    await reporter.report()
    reports = [e for e in world.history if isinstance(e, ReplicaUsageReported)]
    assert len(reports) == 2  # one message per deployment per interval, however many replicas
    assert sorted(r.replica_id for r in reports[-1].replicas) == sorted(ids)
    assert {r.cpu_percent for r in reports[-1].replicas} == {95.0}

    loop = Loop()  # far above any target, yet a deployment without autoscaling is never scaled
    fixed = validate_spec({"name": "chat", "image": "i", "resources": {"ports": [8000], "replicas": 2}})
    await loop.feed(SpecApplied(**REF, name="chat", spec_id="s1", spec_version=1, spec=fixed),
                    reports[-1].model_copy(update=REF), report(95, 500, 50.0, 100))  # fmt: skip
    await loop.decider.decide_all()
    assert loop.published == []
