"""The scheduler's reconcile loop: make the runtime run what the latest spec of each deployment says.

`Reconciler.reconcile(deployment_id)` is idempotent and level-triggered (controller-runtime style):
it compares the desired state (the newest SpecApplied or DeploymentDeleted) with the actual state
(the runtime's workloads and replicas), acts on the difference, then tells the bus what it observed:
replica lifecycle events and, when it changed, the deployment status. It runs for every event of the
deployment, on every runtime change, and periodically for all; reconciles of one deployment never
overlap (one lock each).

Decisions:
- A workload runs one *template* (render.template_hash: what changes the processes). A spec version
  that changes only replicas, `enabled`, autoscaling, the load balancer, health checks or the
  description re-uses the running workload, scaled. Its replicas keep the spec_id of the version that
  started them; a change of health checks re-announces them (ReplicaStarted, same replica id and
  restart count, new spec_id and checks) so the health-monitor probes the new way.
- A new template gets a new workload at full size. The previous one keeps serving until every new
  replica is ready (ReplicaHealthChanged from the health-monitor), then goes; if the new replicas
  never get ready the previous ones keep serving and the status says why (Degraded).
- Replicas about to be stopped are announced (ReplicaStopped) before they are sent SIGTERM, so the
  router stops sending them requests while they drain.
- Workloads of a deployment the scheduler has no spec event for are left alone (a lost stream must
  not take endpoints down); those of a deleted deployment are removed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from libs.events import (
    DeploymentDeleted,
    DeploymentRef,
    DeploymentStatusChanged,
    Event,
    ReplicaEvent,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    SpecApplied,
)
from libs.logging import get_logger
from libs.runtime.base import (
    InvalidWorkload,
    Replica,
    ReplicaEventKind,
    ReplicaNotFound,
    Runtime,
    Workload,
)
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec, HealthChecks
from libs.tasks import cancel_and_wait
from services.scheduler.lifecycle import (
    LOG_TAIL_LINES,
    Ledger,
    Serving,
    lifecycle_events,
    stopped_event,
)
from services.scheduler.metrics import (
    DEPLOYMENTS,
    EVENTS_PUBLISHED,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
)
from services.scheduler.render import (
    TEMPLATE_LABEL,
    RenderError,
    render,
    resolve_env,
    template_hash,
    workload_name,
)
from services.scheduler.status import (
    ObservedReplica,
    compute_status,
    deleted_status,
    same_status,
)

Publish = Callable[[Event], Awaitable[None]]

STOPPING_POLL_SECONDS = 0.1

log = get_logger(__name__)


def health_checks_of(spec: DeploymentSpec) -> HealthChecks:
    """The probes the health-monitor runs: readiness falls back to the console's load-balancer check."""
    return spec.healthChecks.model_copy(update={"readiness": spec.effective_readiness()})


def ref_of(source: DeploymentRef | Workload) -> DeploymentRef:
    return DeploymentRef(deployment_id=source.deployment_id, project=source.project, slug=source.slug)


class Reconciler:
    def __init__(self, runtime: Runtime, secrets: SecretStore, publish: Publish) -> None:
        self._runtime = runtime
        self._secrets = secrets
        self._publish = publish
        self._desired: dict[str, SpecApplied] = {}
        self._deleted: dict[str, DeploymentDeleted] = {}
        self._health: dict[str, ReplicaHealthChanged] = {}  # by replica id
        self._ledger = Ledger()
        self._status: dict[str, DeploymentStatusChanged] = {}
        self._stop_reason: dict[str, str] = {}  # why replicas of a deployment stop, by deployment
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._kicked: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- what the bus says ------------------------------------------------------------------------

    def rebuild(
        self,
        specs: Iterable[Event],
        replicas: Iterable[Event],
        health: Iterable[Event],
        statuses: Iterable[Event],
    ) -> None:
        """Load the state snapshot read from the streams on start (latest event per subject)."""
        for event in specs:
            if isinstance(event, SpecApplied | DeploymentDeleted):
                self.spec_event(event)
        for event in replicas:
            if isinstance(event, ReplicaStarted | ReplicaExited | ReplicaStopped):
                self._ledger.record(event)
        for event in health:
            if isinstance(event, ReplicaHealthChanged):
                self.health_changed(event)
        for event in statuses:
            if isinstance(event, DeploymentStatusChanged):
                self._status[event.deployment_id] = event

    def spec_event(self, event: SpecApplied | DeploymentDeleted) -> bool:
        """Take a new desired state; False when the event is older than what is known (redelivery)."""
        did = event.deployment_id
        if did in self._deleted:
            return False  # deleted is final; a late SpecApplied must not bring replicas back
        if isinstance(event, DeploymentDeleted):
            self._deleted[did] = event
            self._desired.pop(did, None)
        else:
            known = self._desired.get(did)
            if known is not None and known.spec_version >= event.spec_version:
                return False
            self._desired[did] = event
        DEPLOYMENTS.set(len(self._desired))
        return True

    def health_changed(self, event: ReplicaHealthChanged) -> bool:
        known = self._health.get(event.replica_id)
        if known is not None and known.occurred_at > event.occurred_at:
            return False
        self._health[event.replica_id] = event
        return True

    def deployments(self) -> set[str]:
        return set(self._desired)

    # -- reconcile --------------------------------------------------------------------------------

    async def reconcile(self, deployment_id: str) -> None:
        async with self._locks[deployment_id]:
            began = time.perf_counter()
            try:
                await self._reconcile(deployment_id)
            finally:
                RECONCILE_SECONDS.observe(time.perf_counter() - began)

    def kick(self, deployment_id: str) -> None:
        """Reconcile soon, in the background; kicks that arrive while one waits are folded into it."""
        if deployment_id in self._kicked or self._closing:
            return
        self._kicked.add(deployment_id)
        # The task copies this context: what the reconcile publishes continues the trace of the event
        # that kicked it (a kick folded into a waiting one goes with that one's trace).
        task = asyncio.create_task(self._kicked_reconcile(deployment_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reconcile_all(self) -> None:
        """Every deployment the scheduler knows of, desired or running (the periodic resync), one after
        the other so that a sweep never crowds out the reconciles that events ask for."""
        running = {w.deployment_id for w in await self._runtime.workloads()}
        unfinished = {d for d in self._deleted if self._phase(d) != "Deleted"}
        for deployment_id in sorted(set(self._desired) | running | self._ledger.deployments() | unfinished):
            if self._closing:
                return
            await self._reconcile_logged(deployment_id)
            await asyncio.sleep(0)  # a reconcile with nothing to do never waits: let events in between

    async def run_periodically(self, interval_seconds: float) -> None:
        while True:
            try:
                await self.reconcile_all()
            except Exception:
                log.exception("periodic reconcile failed; retried at the next interval")
            await asyncio.sleep(interval_seconds)

    async def restart(self, request: ReplicaRestartRequested) -> bool:
        """Restart the replica the request is about, unless it already is a newer process."""
        async with self._locks[request.deployment_id]:
            replica = next(
                (r for r in await self._runtime.replicas() if r.replica_id == request.replica_id), None
            )
            if replica is None or replica.state != "running":
                return False  # gone, or already exited and waiting for its restart
            if replica.started_at is not None and replica.started_at > request.occurred_at:
                return False  # started after the request: the process it was about is gone
            log.info("restarting replica", replica_id=replica.replica_id, reason=request.reason)
            await self._runtime.restart(replica.replica_id)
        self.kick(request.deployment_id)
        return True

    async def on_replica_event(self, kind: ReplicaEventKind, replica: Replica, exit_code: int | None) -> None:
        """The runtime's change hook: look again at the replica's deployment."""
        self.kick(replica.deployment_id)

    async def shutdown(self, stop_replicas: bool) -> None:
        """Stop reconciling; with stop_replicas, stop every replica (berth shutting down) and say so."""
        self._closing = True
        await cancel_and_wait(list(self._tasks))
        if not stop_replicas:
            await self._runtime.close(stop_replicas=False)
            return
        for deployment_id in self._ledger.deployments():
            for last in self._ledger.replicas(deployment_id).values():
                await self._emit(stopped_event(last, "berth stopped"))
        await self._runtime.close(stop_replicas=True)

    async def _kicked_reconcile(self, deployment_id: str) -> None:
        async with self._locks[deployment_id]:
            self._kicked.discard(deployment_id)
        await self._reconcile_logged(deployment_id)

    async def _reconcile_logged(self, deployment_id: str) -> None:
        try:
            await self.reconcile(deployment_id)
        except Exception:
            RECONCILE_ERRORS.inc()
            log.exception("reconcile failed; retried at the next event or interval", deployment_id=deployment_id)

    async def _reconcile(self, deployment_id: str) -> None:
        workloads = await self._workloads(deployment_id)
        applied = self._desired.get(deployment_id)
        error = None
        if applied is not None:
            error = await self._converge(applied, workloads)
        elif deployment_id in self._deleted:
            for workload in workloads:
                await self._remove(workload, "deployment deleted")
        await self._observe(deployment_id, applied, error)

    async def _converge(self, applied: SpecApplied, workloads: list[Workload]) -> str | None:
        """Act so that the runtime runs `applied`; returns why it cannot (status Failed), or None."""
        did, spec = applied.deployment_id, applied.spec
        template = template_hash(spec)
        current = next((w for w in workloads if w.labels.get(TEMPLATE_LABEL) == template), None)
        previous = [w for w in workloads if w is not current]
        desired = spec.desired_replicas
        scaled_down = f"scaled down to {desired}" if spec.enabled else "stopped (enabled: false)"
        if current is not None and current.replicas > desired:
            self._stop_reason[did] = scaled_down
        if desired == 0:
            # Nothing runs; the workload stays, at 0, to start again as it was (`enabled: true`).
            if current is not None:
                await self._announcing_stops(did, self._runtime.apply(replace(current, replicas=0)))
            for workload in previous:
                await self._remove(workload, scaled_down)
            return None
        try:
            env = await resolve_env(spec, applied.project, self._secrets)
        except RenderError as exc:
            return str(exc)
        name = current.name if current else workload_name(applied.project, applied.slug, applied.spec_id)
        if any(w.name == name for w in previous):  # spec ids that share their first 8 characters
            name = workload_name(applied.project, applied.slug, template)
        target = render(applied, env, name)
        try:
            await self._announcing_stops(did, self._runtime.apply(target))
        except InvalidWorkload as exc:
            return f"cannot start: {exc}"
        if previous:
            replaced = f"replaced by spec version {applied.spec_version}"
            new_ready = await self._ready_count(target.name) >= target.replicas
            for workload in previous:
                if new_ready or await self._ready_count(workload.name) == 0:
                    await self._remove(workload, replaced)
        return None

    async def _remove(self, workload: Workload, reason: str) -> None:
        self._stop_reason[workload.deployment_id] = reason
        for replica in await self._runtime.replicas(workload.name):
            last = self._ledger.last(workload.deployment_id, replica.replica_id)
            if last is not None:
                await self._emit(stopped_event(last, reason))
        log.info("removing workload", workload=workload.name, reason=reason)
        await self._announcing_stops(workload.deployment_id, self._runtime.delete(workload.name))

    async def _announcing_stops(self, deployment_id: str, action: Awaitable[None]) -> None:
        """Run a runtime action that may stop replicas gracefully (which takes up to the grace
        period), announcing each replica as soon as it is stopping rather than once it is gone."""
        task = asyncio.ensure_future(action)
        await asyncio.sleep(0)  # let the action begin: the runtime marks what it stops at once
        while True:
            for replica in await self._runtime.replicas():
                last = self._ledger.last(deployment_id, replica.replica_id)
                if replica.state == "stopping" and last is not None:
                    await self._emit(stopped_event(last, self._stop_reason.get(deployment_id, "scaled down")))
            if task.done():
                return task.result()
            await asyncio.wait({task}, timeout=STOPPING_POLL_SECONDS)

    async def _observe(self, deployment_id: str, applied: SpecApplied | None, error: str | None) -> None:
        """Publish the lifecycle events the bus misses, then the status when it changed."""
        workloads = await self._workloads(deployment_id)
        template = template_hash(applied.spec) if applied else None
        reason = self._stop_reason.get(deployment_id, "scaled down")
        observed: list[ObservedReplica] = []
        present: set[str] = set()
        for workload in workloads:
            current = template is not None and workload.labels.get(TEMPLATE_LABEL) == template
            for replica in await self._runtime.replicas(workload.name):
                present.add(replica.replica_id)
                serving = self._serving(applied if current else None, workload, replica)
                last = self._ledger.last(deployment_id, replica.replica_id)
                for event in await lifecycle_events(replica, last, serving, self._log_tail, reason):
                    await self._emit(event)
                last = self._ledger.last(deployment_id, replica.replica_id)
                observed.append(
                    ObservedReplica(
                        replica=replica,
                        spec_id=last.spec_id if last else serving.spec_id,
                        current=current,
                        primary_port=serving.primary_port,
                        health=self._health_of(replica),
                        exit=last if isinstance(last, ReplicaExited) else None,
                    )
                )
        for replica_id, last in self._ledger.replicas(deployment_id).items():
            if replica_id not in present:
                await self._emit(stopped_event(last, reason))
        if applied is not None:
            current_workload = next((w for w in workloads if w.labels.get(TEMPLATE_LABEL) == template), None)
            not_provided = self._runtime.not_provided(current_workload) if current_workload else []
            await self._set_status(compute_status(applied, observed, error, not_provided))
        elif deployment_id in self._deleted and not workloads:
            await self._set_status(deleted_status(self._deleted[deployment_id]))

    def _serving(self, applied: SpecApplied | None, workload: Workload, replica: Replica) -> Serving:
        """What a replica serves: the desired spec when it runs its template, else what it was announced with."""
        if applied is not None:
            spec = applied.spec
            return Serving(ref_of(applied), applied.spec_id, spec.resources.port, health_checks_of(spec))
        started = self._ledger.started(replica.replica_id)
        if started is not None:
            return Serving(ref_of(started), started.spec_id, started.primary_port, started.health_checks)
        return Serving(ref_of(workload), workload.spec_id, workload.ports[0], HealthChecks())

    def _health_of(self, replica: Replica) -> ReplicaHealthChanged | None:
        """The replica's health, unless it is about an earlier process (before a restart)."""
        health = self._health.get(replica.replica_id)
        return health if health is not None and health.restart_count == replica.restart_count else None

    async def _ready_count(self, workload: str) -> int:
        replicas = await self._runtime.replicas(workload)
        return sum(
            r.state == "running" and (h := self._health_of(r)) is not None and h.ready for r in replicas
        )

    async def _workloads(self, deployment_id: str) -> list[Workload]:
        return [w for w in await self._runtime.workloads() if w.deployment_id == deployment_id]

    async def _log_tail(self, replica_id: str) -> list[str]:
        try:
            return await self._runtime.logs(replica_id, tail=LOG_TAIL_LINES)
        except (ReplicaNotFound, OSError):
            return []  # gone meanwhile: the exit is news even without its last words

    async def _emit(self, event: ReplicaEvent | DeploymentStatusChanged) -> None:
        await self._publish(event)
        EVENTS_PUBLISHED.labels(event.type).inc()
        if isinstance(event, DeploymentStatusChanged):
            self._status[event.deployment_id] = event
            return
        self._ledger.record(event)
        if isinstance(event, ReplicaStopped):
            self._health.pop(event.replica_id, None)

    async def _set_status(self, status: DeploymentStatusChanged) -> None:
        if not same_status(self._status.get(status.deployment_id), status):
            await self._emit(status)

    def _phase(self, deployment_id: str) -> str | None:
        status = self._status.get(deployment_id)
        return status.phase if status else None
