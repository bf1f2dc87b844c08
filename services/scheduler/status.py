"""The phase of a deployment and its reason, computed from what the scheduler observed (pure).

Phases: Stopped (nothing should run and nothing does), Provisioning (converging: replicas starting,
stopping, or a new version coming up while the previous one serves), Ready (every desired replica
ready), Degraded (a replica fails readiness, or an update is stuck while the previous version keeps
serving), CrashLoopBackOff (a replica waits to be restarted after exiting), Failed (the spec cannot run:
a missing secret, a command the runtime refuses), Deleted.

`desired_replicas` is the composed count (services/scheduler/desired.py) and `replicas_source` says
whether it came from the spec or a scale decision. `not_provided` lists what the runtime cannot give
and every accepted spec field the scheduler does not act on yet, so that nothing is silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.events import (
    DeploymentRef,
    DeploymentStatusChanged,
    FetchProgress,
    IntegrationStatus,
    IntegrationsEvent,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    Phase,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaStatus,
)
from libs.runtime.base import Replica
from libs.spec import DeploymentSpec
from services.scheduler.desired import Desired

CRASHED_STATES = ("exited", "backoff")


@dataclass(frozen=True)
class ObservedReplica:
    replica: Replica
    spec_id: str  # the spec version it serves
    current: bool  # runs the desired revision (False: a previous revision being replaced)
    primary_port: int
    health: ReplicaHealthChanged | None = None
    exit: ReplicaExited | None = None  # the last exit, while the replica waits to restart
    restart_reason: str | None = None  # why it was last restarted
    pinned: bool = False  # runs a revision an alias keeps (not "previous": it stays)

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
    def failing_probe(self) -> bool:
        """A probe of this process fails: readiness (it takes no traffic) or liveness (it will be restarted)."""
        probe = self.health.last_probe if self.health else None
        return self.serving and probe is not None and not probe.ok and (not self.ready or probe.probe == "liveness")

    def describe_problem(self) -> str:
        rid = self.replica.replica_id
        if self.crashed:
            code = self.replica.last_exit_code
            delay = self.exit.next_restart_in_seconds if self.exit else None
            when = f"restarting in {delay:.0f} s" if delay is not None else "exited"
            # The runtime's word for it when it has one (kubelet: CrashLoopBackOff (OOMKilled)).
            why = f"; {self.replica.reason}" if self.replica.reason else ""
            return f"replica {rid} {when} (exit code {code}{why})"
        probe = self.health.last_probe if self.health else None
        if probe is None:
            return f"replica {rid} not ready"
        what = f"returned {probe.status_code}" if probe.status_code is not None else probe.error or "failed"
        # A failing liveness probe means "will be restarted", which is not the same as "not ready".
        state = {"liveness": "not live", "startup": "not started"}.get(probe.probe, "not ready")
        return f"replica {rid} {state}: {probe.probe} probe {what}"

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
            revision_id=r.revision_id,
            last_restart_reason=self.restart_reason,
        )


def restart_reason(replica: Replica, requested: tuple[int, str] | None) -> str | None:
    """Why the replica's current process is not its first: what asked for the restart (a failed
    probe), else how the previous process ended."""
    if replica.restart_count == 0:
        return None
    if requested is not None and requested[0] == replica.restart_count:
        return requested[1]
    if replica.last_exit_code is not None:
        return f"exited with code {replica.last_exit_code}"
    return None


def not_acted_on(spec: DeploymentSpec) -> list[str]:
    """Accepted fields that nothing in berth acts on yet: listed in status rather than ignored."""
    missing = []
    autoscaling = spec.resources.autoscaling
    if autoscaling is not None and autoscaling.enabled:
        if any(m.metric == "gpu" for m in autoscaling.metrics):
            missing.append(
                "resources.autoscaling gpu metric where no GPU is visible through NVML (the `gpu` extra): the "
                "metric is then missing, and a missing metric blocks scaling down, as in the HPA"
            )
    if not spec.loadBalancer.enabled:
        missing.append("loadBalancer.enabled: false (the router still balances requests over every ready replica)")
    return missing


def waiting_for_integrations(desired: Desired, outcome: IntegrationsEvent | None) -> str | None:
    """What replicas of the desired revision wait for: its integrations, while none is ready."""
    if desired.replicas == 0 or not desired.applied.spec.integrations or isinstance(outcome, IntegrationsReady | IntegrationsFailed):
        return None
    names = ", ".join(i.name for i in desired.applied.spec.integrations)
    if isinstance(outcome, IntegrationsProgress):
        so_far = f"{outcome.integration}: {outcome.fetched_files} files, {outcome.fetched_bytes} bytes so far"
        return f"waiting for integrations {names} to be fetched ({so_far})"
    return f"waiting for integrations {names} to be fetched"


def compute_status(
    desired: Desired,
    replicas: list[ObservedReplica],
    error: str | None = None,
    not_provided: list[str] | None = None,
    pending: str | None = None,
    integrations: IntegrationsEvent | None = None,
) -> DeploymentStatusChanged:
    """The status of a deployment whose desired state is `desired`; `pending` says what its replicas
    wait for before they may start (its integrations)."""
    applied = desired.applied
    phase, reason = _phase(desired, replicas, error)
    if pending and phase == "Provisioning":
        reason = f"{pending}; {reason}"
    return DeploymentStatusChanged(
        deployment_id=applied.deployment_id,
        project=applied.project,
        slug=applied.slug,
        spec_id=applied.spec_id,
        revision_id=desired.revision_id,
        phase=phase,
        reason=reason,
        desired_replicas=desired.replicas,
        replicas_source=desired.source,
        ready_replicas=sum(r.ready for r in replicas),
        replicas=[r.status() for r in sorted(replicas, key=lambda r: r.replica.replica_id)],
        not_provided=not_provided or [],
        integrations=[
            IntegrationStatus.model_validate(i.model_dump(exclude={"local_path"}))
            for i in (integrations.integrations if isinstance(integrations, IntegrationsReady) else ())
        ],
        scale_reason=desired.reason,
        fetching=_fetching(integrations) if pending else None,
    )


def _fetching(integrations: IntegrationsEvent | None) -> FetchProgress | None:
    if not isinstance(integrations, IntegrationsProgress):
        return None
    return FetchProgress(**integrations.model_dump(include=set(FetchProgress.model_fields)))


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


def _phase(want: Desired, replicas: list[ObservedReplica], error: str | None) -> tuple[Phase, str]:
    desired = want.replicas
    current = [r for r in replicas if r.current]
    previous_ready = sum(r.ready for r in replicas if not r.current and not r.pinned)
    ready = sum(r.ready for r in current)
    keep_serving = f"{_replicas(previous_ready)} of the previous version keep{'s' if previous_ready == 1 else ''} serving"
    if error:
        return "Failed", f"{error}; {keep_serving}" if previous_ready else error
    if desired == 0:
        if replicas:
            return "Provisioning", f"stopping {_replicas(len(replicas))}"
        if want.applied.spec.enabled and want.source == "autoscaler":
            return "ScaledToZero", "scaled to zero by the autoscaler; the next request brings a replica up"
        return "Stopped", "stopped (enabled: false)" if not want.applied.spec.enabled else "scaled to 0 replicas"
    troubled = [r for r in current if r.crashed] or [r for r in current if r.failing_probe]
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
    starting = [r for r in current if r.serving and not r.ready]
    if not starting:
        return "Provisioning", progress
    restarted = next((r for r in starting if r.restart_reason), None)
    why = f"; replica {restarted.replica.replica_id} restarted: {restarted.restart_reason}" if restarted else ""
    return "Provisioning", f"{progress}; {len(starting)} starting{why}"


def _replicas(count: int) -> str:
    return f"{count} replica{'' if count == 1 else 's'}"
