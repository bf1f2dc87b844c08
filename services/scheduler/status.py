"""The phase of a deployment and its reason, computed from what the scheduler observed (pure).

Phases: Stopped (nothing should run and nothing does), Provisioning (converging: replicas starting,
stopping, or a new version coming up while the previous one serves), Ready (every desired replica
ready), Degraded (a replica fails readiness, or an update is stuck while the previous version keeps
serving), CrashLoopBackOff (a replica waits to be restarted after exiting), Failed (the spec cannot run:
a missing secret, a command the runtime refuses), Deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.events import (
    DeploymentRef,
    DeploymentStatusChanged,
    Phase,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaStatus,
    SpecApplied,
)
from libs.runtime.base import Replica

CRASHED_STATES = ("exited", "backoff")


@dataclass(frozen=True)
class ObservedReplica:
    replica: Replica
    spec_id: str  # the spec version it serves
    current: bool  # runs the desired spec's template (False: a previous version being replaced)
    primary_port: int
    health: ReplicaHealthChanged | None = None
    exit: ReplicaExited | None = None  # the last exit, while the replica waits to restart

    @property
    def serving(self) -> bool:
        return self.replica.state in ("starting", "running")

    @property
    def ready(self) -> bool:
        return self.serving and self.health is not None and self.health.ready

    @property
    def crashed(self) -> bool:
        return self.replica.state in CRASHED_STATES

    @property
    def failing_readiness(self) -> bool:
        probe = self.health.last_probe if self.health else None
        return self.serving and not self.ready and probe is not None and not probe.ok

    def describe_problem(self) -> str:
        rid = self.replica.replica_id
        if self.crashed:
            code = self.replica.last_exit_code
            delay = self.exit.next_restart_in_seconds if self.exit else None
            when = f"restarting in {delay:.0f} s" if delay is not None else "exited"
            return f"replica {rid} {when} (exit code {code})"
        probe = self.health.last_probe if self.health else None
        if probe is None:
            return f"replica {rid} not ready"
        what = f"returned {probe.status_code}" if probe.status_code is not None else probe.error or "failed"
        return f"replica {rid} not ready: {probe.probe} probe {what}"

    def status(self) -> ReplicaStatus:
        r = self.replica
        port = r.ports.get(self.primary_port)
        return ReplicaStatus(
            replica_id=r.replica_id,
            spec_id=self.spec_id,
            address=f"{r.host}:{port}" if port else None,
            state=r.state,
            started=bool(self.health and self.health.started and self.serving),
            ready=self.ready,
            live=bool(self.health and self.health.live and self.serving),
            restart_count=r.restart_count,
            last_exit_code=r.last_exit_code,
            last_probe=self.health.last_probe if self.health else None,
            log_tail=self.exit.log_tail if self.exit and self.crashed else [],
        )


def compute_status(
    applied: SpecApplied,
    replicas: list[ObservedReplica],
    error: str | None = None,
    not_provided: list[str] | None = None,
) -> DeploymentStatusChanged:
    """The status of a deployment whose desired state is `applied`."""
    desired = applied.spec.desired_replicas
    phase, reason = _phase(applied, desired, replicas, error)
    return DeploymentStatusChanged(
        deployment_id=applied.deployment_id,
        project=applied.project,
        slug=applied.slug,
        spec_id=applied.spec_id,
        phase=phase,
        reason=reason,
        desired_replicas=desired,
        ready_replicas=sum(r.ready for r in replicas),
        replicas=[r.status() for r in sorted(replicas, key=lambda r: r.replica.replica_id)],
        not_provided=not_provided or [],
    )


def deleted_status(ref: DeploymentRef) -> DeploymentStatusChanged:
    return DeploymentStatusChanged(
        deployment_id=ref.deployment_id, project=ref.project, slug=ref.slug, spec_id=None,
        phase="Deleted", reason="deployment deleted; every replica stopped",
        desired_replicas=0, ready_replicas=0,
    )


def same_status(a: DeploymentStatusChanged | None, b: DeploymentStatusChanged) -> bool:
    """Equal but for when things were observed (event time, probe times): publish only when False."""
    return a is not None and _comparable(a) == _comparable(b)


def _comparable(status: DeploymentStatusChanged) -> dict[str, object]:
    data = status.model_dump(exclude={"event_id", "occurred_at"})
    for replica in data["replicas"]:
        if replica["last_probe"]:
            replica["last_probe"].pop("at")  # heartbeats repeat the same probe result at a later time
    return data


def _phase(
    applied: SpecApplied, desired: int, replicas: list[ObservedReplica], error: str | None
) -> tuple[Phase, str]:
    current = [r for r in replicas if r.current]
    previous_ready = sum(r.ready for r in replicas if not r.current)
    ready = sum(r.ready for r in current)
    keep_serving = f"{_replicas(previous_ready)} of the previous version keep{'s' if previous_ready == 1 else ''} serving"
    if error:
        return "Failed", f"{error}; {keep_serving}" if previous_ready else error
    if desired == 0:
        if replicas:
            return "Provisioning", f"stopping {_replicas(len(replicas))}"
        return "Stopped", "stopped (enabled: false)" if not applied.spec.enabled else "scaled to 0 replicas"
    troubled = [r for r in current if r.crashed] or [r for r in current if r.failing_readiness]
    progress = f"{ready}/{desired} replicas ready"
    if previous_ready:
        if troubled:
            return "Degraded", f"update stuck: {troubled[0].describe_problem()}; {keep_serving}"
        return "Provisioning", f"updating: {ready}/{desired} new replicas ready; {keep_serving}"
    if any(r.crashed for r in current):
        return "CrashLoopBackOff", f"{progress}; {troubled[0].describe_problem()}"
    if ready >= desired:
        return "Ready", progress
    if troubled:
        return "Degraded", f"{progress}; {troubled[0].describe_problem()}"
    starting = sum(r.serving and not r.ready for r in current)
    return "Provisioning", f"{progress}; {starting} starting" if starting else progress


def _replicas(count: int) -> str:
    return f"{count} replica{'' if count == 1 else 's'}"
