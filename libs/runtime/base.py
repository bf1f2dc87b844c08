"""The Runtime: where replicas actually run. One interface, two adapters (`local`, `kubernetes`).

The unit is a *workload*: the replica set of one revision (libs.revision: one template), as a
Kubernetes Deployment is. The scheduler says what workloads should exist (`apply`, `delete`); the
runtime keeps that many replicas
running, restarts a replica whose process exits (with exponential back-off, as the kubelet does), and
reports what actually runs (`replicas`). The mapping to Kubernetes is one to one:

    apply(workload)       -> create/patch Deployment + Service (+ Secret for env)
    scale(name, n)        -> the Deployment's scale subresource (the template is left as it is)
    delete(name)          -> delete Deployment, Service, Secret
    workloads()           -> list Deployments labelled berth
    replicas(name)        -> list Pods of the Deployment, with their status
    restart(replica_id)   -> delete the Pod (its Deployment starts a new one) / restart the process
    logs(replica_id)      -> read_namespaced_pod_log
    usage(replica_id)     -> metrics.k8s.io

An `apply` that lowers the count stops the most recently created replicas first (`Replica.created_at`),
so the scheduler knows which replicas leave and takes them out of the traffic assignment before it
asks (the Kubernetes adapter gets the same order with the `controller.kubernetes.io/pod-deletion-cost`
annotation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ReplicaState = Literal["starting", "running", "exited", "backoff", "stopping"]

# The kubelet's crash-loop back-off (pkg/kubelet/kubelet.go, pkg/kubelet/kuberuntime/
# kuberuntime_manager.go doBackOff, client-go util/flowcontrol/backoff.go): no back-off entry yet, so
# the first exit restarts at once and creates a 10 s entry; each later exit waits the entry's delay
# counted from the exit (FinishedAt), then doubles it, capped at 300 s (MaxContainerBackOff); the entry
# is reset when the container ran more than 600 s (HasExpiredFunc: FinishedAt - lastUpdate > 600 s).
RESTART_BACKOFF_INITIAL_SECONDS = 10.0
RESTART_BACKOFF_MAX_SECONDS = 300.0
RESTART_BACKOFF_RESET_SECONDS = 600.0


def restart_backoff(consecutive_exits: int, initial: float = RESTART_BACKOFF_INITIAL_SECONDS) -> float:
    """Delay before the restart that follows exit number `consecutive_exits` (1-based, counted since
    the replica last ran more than RESTART_BACKOFF_RESET_SECONDS): 0, 10 s, 20 s, 40 s ... 300 s."""
    if consecutive_exits <= 1:
        return 0.0
    return min(initial * 2 ** (consecutive_exits - 2), RESTART_BACKOFF_MAX_SECONDS)


@dataclass(frozen=True)
class Mount:
    """An integration's content (`source`, on this machine) seen by each replica at `path`."""

    name: str
    path: str  # e.g. /models/falcon
    source: str
    read_only: bool = True  # only a volume may be writable (`readOnly: false`)


@dataclass(frozen=True)
class Workload:
    """Desired state of one replica set: one revision of a deployment, with secrets resolved."""

    name: str  # unique runtime name: f"{project}-{slug}-{revision_id}", DNS-1123
    deployment_id: str
    project: str
    slug: str
    spec_id: str  # the newest spec version that asked for this workload (display, BERTH_SPEC_ID)
    replicas: int
    command: tuple[str, ...]
    image: str
    env: dict[str, str]  # values already resolved; never logged
    ports: tuple[int, ...]  # spec ports; the first receives traffic
    cpu: float | None = None
    memory_gb: float | None = None
    gpu_count: int = 0
    gpu_type: str | None = None
    machine_type: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    revision_id: str = ""  # the revision whose replica set this is (libs.revision.revision_id)
    # Names of `env` entries whose values come from secrets: a runtime never writes those to disk.
    secret_env: frozenset[str] = frozenset()
    container_registry: str | None = None
    # The spec's `healthChecks` as JSON (plain data, so a runtime can store the workload as is): the
    # kubernetes runtime makes them the Pod's probes; the local runtime leaves probing to the
    # health-monitor.
    health_checks: dict[str, Any] | None = None
    mounts: tuple[Mount, ...] = ()  # integrations, read-only content
    # The spec of each integration as JSON, with `secret:` references only: the kubernetes runtime's
    # init container fetches them into the Pod (the local runtime links `mounts` instead).
    integrations: tuple[dict[str, Any], ...] = ()
    # Values of the secrets those references name (secret name -> value), resolved only for a runtime
    # whose Pods fetch (kubernetes: they go into the workload's Secret). Never logged or written to disk.
    integration_secrets: dict[str, str] = field(default_factory=dict)


@dataclass
class Replica:
    """One running (or restarting) replica of a workload, as the runtime observes it."""

    replica_id: str
    workload: str
    deployment_id: str
    spec_id: str
    host: str
    ports: dict[int, int]  # spec port -> reachable port
    state: ReplicaState
    pid: int | None = None
    restart_count: int = 0
    last_exit_code: int | None = None
    started_at: datetime | None = None
    next_restart_at: datetime | None = None
    revision_id: str = ""
    created_at: datetime | None = None  # scale down stops the newest first
    # What a runtime that probes by itself (kubernetes: the Pod's Ready condition) observed; None when
    # the runtime leaves readiness to the health-monitor (local).
    ready: bool | None = None
    reason: str | None = None  # why it is not running, e.g. CrashLoopBackOff, OOMKilled


ReplicaEventKind = Literal["started", "exited", "stopped"]
# Called by the runtime when a replica started (or restarted), exited on its own, or was stopped on
# purpose, with the replica as it is after the change and, for exited/stopped, the exit code when known.
ReplicaEventHook = Callable[[ReplicaEventKind, "Replica", int | None], Awaitable[None]]


class InvalidWorkload(ValueError):
    """The runtime cannot run this workload at all (e.g. it has no command); the message says why."""


class ReplicaNotFound(LookupError):
    """No replica with this id runs here."""


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # of the cores requested (or of one core when none were)
    memory_percent: float  # of the memory requested (or of the machine when none was)
    memory_bytes: int
    gpu_percent: float | None = None  # of the GPUs it was given; None: no GPU visible (NVML)


@dataclass(frozen=True)
class RetainedLog:
    """The kept output of a replica that was stopped (replaced, scaled down or deleted)."""

    replica_id: str
    deployment_id: str
    revision_id: str
    stopped_at: datetime


class Runtime(Protocol):
    # Set before start(); see ReplicaEventHook. The scheduler publishes replica events from it.
    on_replica_event: ReplicaEventHook | None
    # True when each replica fetches its integrations itself (kubernetes: an init container), so the
    # scheduler resolves `Workload.integration_secrets` for it; False: the runtime links `mounts`.
    fetches_integrations: bool

    async def start(self) -> None:
        """Connect, and adopt replicas that are still running from before a restart."""

    async def close(self, stop_replicas: bool = False) -> None:
        """Let go of the runtime; with stop_replicas, stop every replica first (berth shutting down)."""

    def not_provided(self, workload: Workload) -> list[str]:
        """What of the workload's resources this runtime cannot give (e.g. a GPU), for status."""

    async def apply(self, workload: Workload) -> None:
        """Create the workload or bring it to `workload.replicas`; idempotent."""

    async def scale(self, name: str, replicas: int) -> None:
        """Bring a workload to `replicas` and change nothing else (a workload it does not hold: nothing).
        A count alone needs no template: the scheduler never re-applies a workload read back from
        `workloads()`, which need not hold what it was applied with (secret values, probes ...)."""

    async def delete(self, name: str) -> None:
        """Stop every replica of the workload (graceful: SIGTERM, then SIGKILL) and forget it."""

    async def workloads(self) -> list[Workload]:
        """Every workload this runtime holds."""

    async def replicas(self, name: str | None = None) -> list[Replica]:
        """Replicas of one workload, or of all."""

    async def restart(self, replica_id: str) -> None:
        """Kill the replica and start it again, keeping its id and counting the restart."""

    async def logs(self, replica_id: str, tail: int = 100, timestamps: bool = False) -> list[str]:
        """The last `tail` lines of the replica's output; with `timestamps` each starts with the RFC 3339
        time it was written and a space (as `kubectl logs --timestamps`). A replica `retained_logs`
        lists answers too."""

    async def retained_logs(self, deployment_id: str) -> list[RetainedLog]:
        """Replicas of the deployment that are gone but whose output is kept (docs/monitoring.md, "Logs")."""

    def follow_logs(self, replica_id: str) -> AsyncIterator[str]:
        """New lines of the replica's output as they are written."""

    async def usage(self, replica_id: str) -> Usage | None:
        """CPU and memory of the replica now, or None when it is not running."""
