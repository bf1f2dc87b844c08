"""The scheduler's usage report: every interval, the runtime's CPU and memory of each replica of every
deployment the scheduler runs, with what the HPA reads of the replica besides (state, start time,
readiness and when it last changed), as one `ReplicaUsageReported` per deployment on BERTH_METRICS:
the metrics history keeps it and alert rules on cpu_percent/memory_percent read it; the autoscaler
keeps only the last report of each deployment and acts on it only when its spec autoscales.

Only the scheduler holds the runtime, so it samples; the others only read the reports. GPU
utilisation comes from NVML where a GPU is visible (libs/runtime/gpu.py); elsewhere it travels as
missing (None), never as zero.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime

from libs.events import Event, ReplicaUsage, ReplicaUsageReported
from libs.runtime.base import Replica, Runtime, Usage
from services.scheduler.reconcile import Reconciler


class UsageReporter:
    def __init__(self, runtime: Runtime, reconciler: Reconciler, publish: Callable[[Event], Awaitable[None]],
                 window_seconds: float) -> None:
        self._runtime = runtime
        self._reconciler = reconciler
        self._publish = publish
        self._window = window_seconds
        # replica -> (readiness, since when): health events repeat as heartbeats, so the time of the
        # latest one is not when readiness changed. Pruned to the replicas of the last report.
        self._readiness: dict[str, tuple[bool, datetime]] = {}
        self.latest: dict[str, Usage] = {}  # replica -> its last sample (Prometheus reads every replica's)

    async def report(self) -> None:
        by_deployment: dict[str, list[Replica]] = defaultdict(list)
        listed = await self._runtime.replicas()
        for replica in listed:
            by_deployment[replica.deployment_id].append(replica)
        present = {r.replica_id for r in listed}
        for gone in [r for r in self._readiness if r not in present]:
            del self._readiness[gone]
        samples_of = dict(zip(
            [r.replica_id for r in listed], await asyncio.gather(*(self._usage(r) for r in listed)), strict=True
        ))  # fmt: skip
        self.latest = {replica: usage for replica, usage in samples_of.items() if usage is not None}
        for deployment_id, replicas in by_deployment.items():
            applied = self._reconciler.applied(deployment_id)
            if applied is None:
                continue  # a replica of no deployment this scheduler runs (being removed): nobody's figures
            samples = [samples_of[r.replica_id] for r in replicas]
            await self._publish(ReplicaUsageReported(
                deployment_id=deployment_id, project=applied.project, slug=applied.slug,
                window_seconds=self._window,
                replicas=[self._describe(deployment_id, r, u) for r, u in zip(replicas, samples, strict=True)],
            ))  # fmt: skip

    async def _usage(self, replica: Replica) -> Usage | None:
        try:
            return await self._runtime.usage(replica.replica_id)
        except LookupError:  # gone since it was listed
            return None

    def _describe(self, deployment_id: str, replica: Replica, usage: Usage | None) -> ReplicaUsage:
        health = self._reconciler.replica_health(deployment_id, replica)
        changed_at = None
        if health is not None:
            known = self._readiness.get(replica.replica_id)
            if known is None or known[0] != health.ready:
                known = self._readiness[replica.replica_id] = (health.ready, health.occurred_at)
            changed_at = known[1]
        return ReplicaUsage(
            replica_id=replica.replica_id,
            revision_id=replica.revision_id,
            state=replica.state,
            started_at=replica.started_at,
            ready=None if health is None else health.ready,
            ready_changed_at=changed_at,
            cpu_percent=None if usage is None else usage.cpu_percent,
            memory_percent=None if usage is None else usage.memory_percent,
            gpu_percent=None if usage is None else usage.gpu_percent,
        )
