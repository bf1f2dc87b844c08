"""How big and how slow is a Prometheus scrape of berth with 500 deployments?

Feeds the router's routing table 500 traffic assignments (3 replicas each, one and two revisions),
lets every replica answer requests and closes the report windows as the router does, and feeds the
scheduler's collector 500 statuses with 3 replicas and their usage samples; then renders /metrics as
a scrape would and prints series, bytes and the render time (docs/monitoring.md states the bound).

    .venv/bin/python bench/bench_prometheus.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report, timed
from libs.events import (
    DeploymentStatusChanged,
    ReplicaStatus,
    RequestMetricsReported,
    RevisionTarget,
    ServingReplica,
    TrafficAssigned,
)
from libs.runtime.base import Usage
from services.router.metrics import MetricsReporter, RevisionTotals, RouterCollector
from services.router.table import RoutingTable
from services.scheduler.metrics import DeploymentCollector

DEPLOYMENTS, REPLICAS, SCRAPES = 500, 3, 5


def router(revisions: int) -> CollectorRegistry:
    table, totals = RoutingTable(), RevisionTotals()
    for i in range(DEPLOYMENTS):
        table.apply(TrafficAssigned(
            deployment_id=f"d{i}", project="default", slug=f"model-{i}", generation=1, spec_version=revisions,
            targets=[RevisionTarget(
                revision_id=f"r{i}-{r}", percent=100 if r == 0 else 0, spec_versions=[r + 1],
                replicas=[ServingReplica(replica_id=f"d{i}-{r}-{k}", address=f"127.0.0.1:{9000 + k}") for k in range(REPLICAS)],
            ) for r in range(revisions)],
        ), None)  # fmt: skip
    for route in table.routes():
        for replica in route.replicas.values():
            route.stats.observe(0.02, error=False, revision=replica.revision_id)

    async def fold(report: RequestMetricsReported) -> None:
        totals.fold(report)

    asyncio.run(MetricsReporter(table.routes, fold).report())
    registry = CollectorRegistry()
    registry.register(RouterCollector(table.routes, lambda: 0, totals))
    return registry


def scheduler() -> CollectorRegistry:
    statuses = [
        (DeploymentStatusChanged(
            deployment_id=f"d{i}", project="default", slug=f"model-{i}", spec_id="s", revision_id=f"r{i}",
            phase="Ready", desired_replicas=REPLICAS, ready_replicas=REPLICAS,
            replicas=[ReplicaStatus(replica_id=f"d{i}-{k}", spec_id="s", revision_id=f"r{i}", ready=True)
                      for k in range(REPLICAS)],
        ), 1)
        for i in range(DEPLOYMENTS)
    ]  # fmt: skip
    usage = {f"d{i}-{k}": Usage(12.5, 40.0, 2**28) for i in range(DEPLOYMENTS) for k in range(REPLICAS)}
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(lambda: statuses, lambda: usage))
    return registry


def measure(name: str, registry: CollectorRegistry) -> tuple[str, str]:
    with timed() as watch:
        for _ in range(SCRAPES):
            text = generate_latest(registry)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return name, f"{series} series, {len(text) / 1024:.0f} KiB, {watch.seconds / SCRAPES * 1000:.0f} ms to render"


def main() -> None:
    report(f"/metrics with {DEPLOYMENTS} deployments x {REPLICAS} replicas", [
        measure("router, 1 revision each", router(1)),
        measure("router, 2 revisions each (canary)", router(2)),
        measure("scheduler", scheduler()),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
