"""Canary analysis: the pure judgement over request counts (table-driven) and the reconciler rolling a
canary back when the router's windows show it failing a bound (in-memory runtime, no NATS)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.events import LATENCY_BUCKETS_SECONDS, RequestMetricsReported, RevisionRequests
from libs.revision import revision_id
from libs.spec import CanaryAnalysis
from services.scheduler.analysis import Tally, failed_bound
from tests.unit.test_scheduler_reconcile import DID, World, spec

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def world() -> World:
    return World()

FAST, SLOW = LATENCY_BUCKETS_SECONDS.index(0.01), LATENCY_BUCKETS_SECONDS.index(0.5)


def buckets(fast: int = 0, slow: int = 0) -> list[int]:
    counts = [0] * len(LATENCY_BUCKETS_SECONDS)
    counts[FAST], counts[SLOW] = fast, slow
    return counts


def tally(requests: int, errors: int = 0, slow: int = 0) -> Tally:
    t = Tally()
    t.add(requests, errors, buckets(requests - slow, slow))
    return t


@pytest.mark.parametrize(
    ("analysis", "canary", "stable", "failed"),
    [
        ({}, tally(100), tally(100), None),
        ({}, tally(100, errors=5), tally(100), None),  # 5 points: at the default bound, not above it
        ({}, tally(100, errors=6), tally(100), "maxErrorRateIncrease (5 points)"),
        ({}, tally(100, errors=50), tally(100, errors=46), None),  # relative to the stable one's errors
        ({"maxErrorRateIncrease": 0}, tally(100, errors=1), tally(100), "error rate 1.0 %"),
        ({}, tally(19, errors=19), tally(100), None),  # too few canary requests to judge
        ({}, tally(100, errors=100), tally(19), None),  # too few stable requests to judge
        ({"minRequests": 5}, tally(5, errors=5), tally(5), "error rate 100.0 %"),
        ({"maxP99LatencyRatio": 2}, tally(100, slow=5), tally(100), "maxP99LatencyRatio (2) times the stable revision's 0.01 s"),
        ({"maxP99LatencyRatio": 2}, tally(100, slow=1), tally(100), None),  # the 99th request is still fast
        ({"maxP99LatencyRatio": 100}, tally(100, slow=5), tally(100), None),
        ({}, tally(100, slow=100), tally(100), None),  # latency not judged without maxP99LatencyRatio
    ],
)
def test_failed_bound(analysis: dict[str, Any], canary: Tally, stable: Tally, failed: str | None) -> None:
    verdict = failed_bound(CanaryAnalysis(**analysis), canary, stable)
    if failed is None:
        assert verdict is None
    else:
        assert verdict is not None and failed in verdict


def window(parts: dict[str, tuple[int, int]]) -> RequestMetricsReported:
    """A router window: revision -> (requests, errors), all fast."""
    return RequestMetricsReported(
        deployment_id=DID, project="default", slug="iris", window_seconds=1.0,
        requests=sum(r for r, _ in parts.values()), errors=sum(e for _, e in parts.values()),
        latency_sum_seconds=0.0, latency_buckets=buckets(), revisions=[
            RevisionRequests(revision_id=rev, requests=r, errors=e, latency_buckets=buckets(fast=r))
            for rev, (r, e) in parts.items()
        ],
    )  # fmt: skip


CANARY = {"type": "canary", "canarySteps": [20, 50], "canaryStepSeconds": 600, "analysis": {"minRequests": 10}}


async def canary_running(world: World) -> tuple[str, str, list[str]]:
    old = await world.running(spec(replicas=2))
    v2 = spec(replicas=2, command=["python", "v2.py"], updateStrategy=CANARY)
    world.apply(v2)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    old_rev, new_rev = revision_id(spec(replicas=2)), revision_id(v2)
    assert world.serving()[new_rev][0] == 20
    return old_rev, new_rev, old


async def test_a_canary_whose_error_rate_exceeds_its_bound_is_rolled_back(world: World) -> None:
    old_rev, new_rev, old = await canary_running(world)
    assert not world.reconciler.metrics_reported(window({new_rev: (5, 5), old_rev: (20, 0)}))  # too few yet
    assert world.reconciler.metrics_reported(window({new_rev: (5, 1), old_rev: (20, 0)}))  # 6 of 10 failed
    await world.reconcile()
    assert world.serving()[old_rev] == (100, old)
    assert world.serving().get(new_rev, (0, []))[0] == 0
    status = world.status()
    assert status.phase == "Degraded"
    assert "rolled back: canary analysis: error rate 60.0 %" in status.reason
    assert "maxErrorRateIncrease" in status.reason
    assert status.rolled_back_version == 2 and status.rolled_back_reason.startswith("canary analysis: error rate")
    assert {r.revision_id for r in await world.runtime.replicas()} == {old_rev}


async def test_a_healthy_canary_keeps_its_steps_and_windows_of_other_deployments_are_ignored(world: World) -> None:
    old_rev, new_rev, _ = await canary_running(world)
    for _ in range(5):
        assert not world.reconciler.metrics_reported(window({new_rev: (20, 0), old_rev: (80, 1)}))
    other = window({new_rev: (50, 50)}).model_copy(update={"deployment_id": "dep-other"})
    assert not world.reconciler.metrics_reported(other)
    await world.reconcile()
    assert world.serving()[new_rev][0] == 20 and world.status().phase != "Degraded"


async def test_nothing_is_counted_outside_a_canary_with_analysis(world: World) -> None:
    await world.running(spec(replicas=1))
    rev = revision_id(spec(replicas=1))
    assert not world.reconciler.metrics_reported(window({rev: (100, 100)}))
    assert world.reconciler._states[DID].canary_tally is None
