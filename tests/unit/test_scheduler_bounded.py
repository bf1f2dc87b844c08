"""Bounded state: the scheduler holds nothing about a deployment once it is deleted and gone, so a
long-running scheduler's memory follows the deployments that exist, not every one that ever did."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from libs.events import DeploymentDeleted, Event, ReplicaHealthChanged, SpecApplied
from libs.spec import validate_spec
from services.scheduler.reconcile import Reconciler
from tests.fakes import FakeRuntime, FakeSecrets

SPEC = validate_spec(
    {"name": "churn", "image": "python:3.11", "command": ["serve"], "resources": {"ports": [8000], "replicas": 2}}
)


async def churn(reconciler: Reconciler, runtime: FakeRuntime, count: int, offset: int) -> None:
    """Create, serve and delete `count` deployments, as the bus would tell the scheduler."""
    for n in range(offset, offset + count):
        did = f"dep-{n}"
        reconciler.spec_event(SpecApplied(
            deployment_id=did, project="default", slug="churn", name="churn", spec_id=f"s{n}", spec_version=1, spec=SPEC,
        ))  # fmt: skip
        await reconciler.reconcile(did)
        for replica in await runtime.replicas():
            reconciler.health_changed(ReplicaHealthChanged(
                deployment_id=did, project="default", slug="churn", replica_id=replica.replica_id, spec_id=f"s{n}",
                address="10.0.0.1:1", started=True, ready=True, live=True,
            ))  # fmt: skip
        await reconciler.reconcile(did)
        reconciler.spec_event(DeploymentDeleted(deployment_id=did, project="default", slug="churn"))
        await reconciler.reconcile(did)


@pytest.mark.timeout(60)
async def test_a_thousand_deployments_come_and_go_and_nothing_stays() -> None:
    runtime = FakeRuntime()
    published = 0

    async def publish(event: Event) -> None:
        nonlocal published
        published += 1

    reconciler = Reconciler(runtime, FakeSecrets(), publish, deleted_retention_seconds=0)
    await churn(reconciler, runtime, 50, offset=0)  # warm up: imports, caches, metric children
    runtime.calls.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await churn(reconciler, runtime, 1000, offset=50)
        runtime.calls.clear()  # the fake's own record of calls, not the scheduler's
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert published > 10_000  # each one was started, served, stopped and said so
    assert reconciler.held() == {"deployments": 0, "gone": 0, "locks": 0, "kicked": 0, "tasks": 0}
    assert await runtime.workloads() == [] and await runtime.replicas() == []
    # 1,000 deployments held at once take far more than this; what is left is allocator noise.
    assert after - before < 64 * 1024, f"{after - before} bytes still held after the churn (peak {peak})"
