"""The scheduler's reconcile loop: make the runtime run what each deployment should, and say what
serves.

`Reconciler.reconcile(deployment_id)` is level-triggered and idempotent, as a controller-runtime
reconciler is: the request is only the deployment id; everything else is read again. It runs for
every event of the deployment, on every runtime change, and periodically for all; reconciles of one
deployment never overlap (a lock each). A reconcile that raises is requeued with a growing delay; a
spec that cannot run (a missing secret, a command the runtime refuses) is terminal: status Failed, no
retry until something changes (or the periodic resync looks again).

One reconcile is a sequence of phases (as Knative's ReconcileKind), each get / compare / act:

1. desired    - compose the newest spec with the newest scale decisions (desired.py)
2. revisions  - which revisions run, at what size, which replicas leave (revisions.py)
3. workloads  - create or grow the desired revision's workload (render.py)
4. traffic    - publish the assignment (traffic.py) when what serves changed
5. retire     - only now stop the replicas that left the assignment: scale down, previous revisions
6. status     - publish replica lifecycle events the bus misses, then the status when it changed

A deleted deployment publishes its tombstone assignment, then every replica goes. Workloads of a
deployment the scheduler has no spec event for are left alone (a lost stream must not take endpoints
down). Everything held about a deployment is dropped once it is deleted and gone (state.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from libs.events import (
    DeploymentAliasSet,
    DeploymentDeleted,
    DeploymentPromoted,
    DeploymentRef,
    DeploymentScaled,
    DeploymentStatusChanged,
    Event,
    IntegrationsEvent,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    RequestMetricsReported,
    SpecApplied,
    TrafficAssigned,
)
from libs.kit import RetryPolicy
from libs.logging import get_logger
from libs.runtime.base import (
    Mount,
    InvalidWorkload,
    Replica,
    ReplicaEventKind,
    ReplicaNotFound,
    Runtime,
    Workload,
)
from libs.spec import DeploymentSpec, HealthChecks, VolumeIntegration
from libs.tasks import cancel_and_wait
from services.scheduler import aliases, traffic
from services.scheduler.analysis import analysed, canary_failure
from services.scheduler.desired import Desired, compose, newer_decision
from services.scheduler.kubelet_health import kubelet_health
from services.scheduler.lifecycle import LOG_TAIL_LINES, Serving, lifecycle_events, stopped_event
from services.scheduler.metrics import DEPLOYMENTS, EVENTS_PUBLISHED, RECONCILE_ERRORS, RECONCILE_SECONDS
from services.scheduler.render import (
    RenderError,
    ResolvedEnv,
    SecretResolver,
    render,
    resolve_env,
    resolve_integration_secrets,
    revision_of,
)
from services.scheduler.revisions import (
    ObservedWorkload,
    RevisionPlan,
    can_roll_back,
    plan_revisions,
    ready_revisions,
    serving,
)
from services.scheduler.state import DeploymentState
from services.scheduler.strategies import next_change
from services.scheduler.status import (
    ObservedReplica,
    compute_status,
    deleted_status,
    not_acted_on,
    restart_reason,
    same_status,
    waiting_for_integrations,
)

Publish = Callable[[Event], Awaitable[None]]

# A reconcile that raised runs again after 0.25 s, 0.5 s ... up to 30 s (controller-runtime's
# rate-limited requeue); the delay resets after one that succeeds.
REQUEUE = RetryPolicy(first_delay_seconds=0.25, factor=2.0, max_delay_seconds=30.0)
# A deleted deployment, once gone, is remembered this long so that a late spec event cannot bring it back.
DELETED_RETENTION_SECONDS = 600.0
# A replica of an update restarted this often without getting ready is a crash loop: the update is
# rolled back before its progress deadline.
CRASH_LOOP_RESTARTS = 3

log = get_logger(__name__)


def health_checks_of(spec: DeploymentSpec) -> HealthChecks:
    """The probes the health-monitor runs: readiness falls back to the console's load-balancer check."""
    return spec.healthChecks.model_copy(update={"readiness": spec.effective_readiness()})


def ref_of(source: DeploymentRef | Workload) -> DeploymentRef:
    return DeploymentRef(deployment_id=source.deployment_id, project=source.project, slug=source.slug)


class Reconciler:
    def __init__(
        self,
        runtime: Runtime,
        secrets: SecretResolver,
        publish: Publish,
        *,
        deleted_retention_seconds: float = DELETED_RETENTION_SECONDS,
        requeue: RetryPolicy = REQUEUE,
        drain_seconds: float = 0.0,
    ) -> None:
        self._runtime = runtime
        self._drain_seconds = drain_seconds
        self._secrets = secrets
        self._publish = publish
        self._deleted_retention = deleted_retention_seconds
        self._requeue_policy = requeue
        self._states: dict[str, DeploymentState] = {}
        self._gone: dict[str, float] = {}  # deleted and forgotten: until when late events are refused
        self._locks: dict[str, asyncio.Lock] = {}
        self._kicked: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- what the bus says ------------------------------------------------------------------------

    def rebuild(
        self,
        specs: Iterable[Event] = (),
        scales: Iterable[Event] = (),
        replicas: Iterable[Event] = (),
        health: Iterable[Event] = (),
        statuses: Iterable[Event] = (),
        assignments: Iterable[Event] = (),
        aliases: Iterable[Event] = (),
        promotions: Iterable[Event] = (),
        integrations: Iterable[Event] = (),
    ) -> None:
        """Load the state snapshot read from the streams on start (latest event per subject)."""
        for event in specs:
            if isinstance(event, SpecApplied | DeploymentDeleted):
                self.spec_event(event)
        for event in scales:
            if isinstance(event, DeploymentScaled):
                self.scale_decided(event)
        for event in aliases:
            if isinstance(event, DeploymentAliasSet):
                self.alias_set(event)
        for event in promotions:
            if isinstance(event, DeploymentPromoted):
                self.promoted(event)
        for event in replicas:
            if isinstance(event, ReplicaStarted | ReplicaExited | ReplicaStopped):
                self._state(event.deployment_id).ledger.record(event)
        for event in health:
            if isinstance(event, ReplicaHealthChanged):
                self.health_changed(event)
        for event in statuses:
            if isinstance(event, DeploymentStatusChanged) and event.deployment_id in self._states:
                self._states[event.deployment_id].status = event
        for event in assignments:
            # The generation goes on from the newest assignment; tombstones of deployments long gone
            # are not loaded (their ids never come back).
            if isinstance(event, TrafficAssigned) and (not event.deleted or event.deployment_id in self._states):
                self._state(event.deployment_id).learn_assignment(event)
        for event in integrations:
            if isinstance(event, IntegrationsReady | IntegrationsFailed | IntegrationsProgress):
                self.integrations_event(event)

    def spec_event(self, event: SpecApplied | DeploymentDeleted) -> bool:
        """Take a new desired state; False when the event is older than what is known (redelivery)."""
        did = event.deployment_id
        state = self._states.get(did)
        if did in self._gone or (state is not None and state.deleted is not None):
            return False  # deleted is final; a late SpecApplied must not bring replicas back
        state = self._state(did)
        if isinstance(event, DeploymentDeleted):
            state.deleted, state.applied = event, None
        elif state.applied is not None and state.applied.spec_version >= event.spec_version:
            state.learn_spec(event)  # an earlier version (the history read on start): its revision may still run
            return False
        else:
            state.applied = event
            state.learn_version(event)
            state.learn_spec(event)
        DEPLOYMENTS.set(sum(s.applied is not None for s in self._states.values()))
        return True

    def scale_decided(self, event: DeploymentScaled) -> bool:
        if event.deployment_id in self._gone:
            return False
        state = self._state(event.deployment_id)
        if state.deleted is not None or not newer_decision(state.decisions.get(event.source), event):
            return False
        state.decisions[event.source] = event
        return True

    def alias_set(self, event: DeploymentAliasSet) -> bool:
        """Take an alias's newest target (or its removal); False when older than what is known."""
        if event.deployment_id in self._gone:
            return False
        state = self._state(event.deployment_id)
        known = state.aliases.get(event.alias)
        if state.deleted is not None or (known is not None and known.occurred_at >= event.occurred_at):
            return False
        state.aliases[event.alias] = event
        if event.target is not None:
            state.learn_version(event.target)
        return True

    def metrics_reported(self, event: RequestMetricsReported) -> bool:
        """Count a router window towards a canary's analysis; True when the canary now fails a bound
        (a reconcile rolls it back)."""
        state = self._states.get(event.deployment_id)
        if state is None or state.canary_tally is None or state.applied is None:
            return False
        state.canary_tally.add(event)
        return canary_failure(self._desired(state, state.applied), state.canary_tally) is not None

    def promoted(self, event: DeploymentPromoted) -> bool:
        """The user promoted the update to `event.spec_version`; False when nothing newer is said."""
        state = self._states.get(event.deployment_id)
        if state is None or event.spec_version <= state.promoted:
            return False
        state.promoted = event.spec_version
        return True

    def integrations_event(self, event: IntegrationsEvent) -> bool:
        """Take a revision's integrations outcome; False when it changes nothing here."""
        if event.deployment_id in self._gone:
            return False
        state = self._state(event.deployment_id)  # it may arrive before the spec event it answers
        if state.deleted is not None:
            return False
        known = state.integrations.get(event.revision_id)
        if known is not None and known.occurred_at > event.occurred_at:
            return False
        state.integrations[event.revision_id] = event
        return True

    def health_changed(self, event: ReplicaHealthChanged) -> bool:
        """Take a replica's health; False when older than what is known (an earlier process or time)."""
        state = self._states.get(event.deployment_id)
        if state is None:
            return False  # a deployment nothing runs for here: nothing to decide from it
        known = state.health.get(event.replica_id)
        if known is not None and (known.restart_count, known.occurred_at) > (event.restart_count, event.occurred_at):
            return False
        state.health[event.replica_id] = event
        return True

    def deployments(self) -> set[str]:
        return {d for d, s in self._states.items() if s.applied is not None}

    def applied(self, deployment_id: str) -> SpecApplied | None:
        state = self._states.get(deployment_id)
        return None if state is None else state.applied

    def observed(self) -> list[tuple[DeploymentStatusChanged, int | None]]:
        """(the last status published, the newest spec version) of each deployment (for /metrics)."""
        return [
            (s.status, None if s.applied is None else s.applied.spec_version)
            for s in self._states.values()
            if s.status is not None
        ]

    def replica_health(self, deployment_id: str, replica: Replica) -> ReplicaHealthChanged | None:
        """The latest health of this very process of the replica (for the usage report)."""
        state = self._states.get(deployment_id)
        return None if state is None else self._health_of(state, replica)

    # -- running reconciles -----------------------------------------------------------------------

    async def reconcile(self, deployment_id: str) -> None:
        """Reconcile one deployment now; raises what the reconcile raised."""
        async with self._lock(deployment_id):
            began = time.perf_counter()
            try:
                await self._reconcile(deployment_id)
            finally:
                RECONCILE_SECONDS.observe(time.perf_counter() - began)

    async def reconcile_logged(self, deployment_id: str) -> None:
        """Reconcile one deployment; a failure is logged and requeued with back-off, never raised."""
        try:
            await self.reconcile(deployment_id)
        except Exception:
            RECONCILE_ERRORS.inc()
            log.exception("reconcile failed; requeued", deployment_id=deployment_id)
            self._requeue(deployment_id)
            return
        state = self._states.get(deployment_id)
        if state is not None:
            state.failures = 0

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
        """Every deployment the scheduler knows of or the runtime runs (the periodic resync), one after
        the other so that a sweep never crowds out the reconciles that events ask for."""
        now = time.monotonic()
        for did in [d for d, until in self._gone.items() if until <= now]:
            del self._gone[did]
        running = {w.deployment_id for w in await self._runtime.workloads()}
        for deployment_id in sorted(set(self._states) | running):
            if self._closing:
                return
            await self.reconcile_logged(deployment_id)
            await asyncio.sleep(0)  # a reconcile with nothing to do never waits: let events in between

    async def restart(self, request: ReplicaRestartRequested) -> bool:
        """Restart the replica the request is about, unless it already is a newer process."""
        async with self._lock(request.deployment_id):
            replica = next(
                (r for r in await self._runtime.replicas() if r.replica_id == request.replica_id), None
            )
            if replica is None or replica.state != "running":
                return False  # gone, or already exited and waiting for its restart
            if replica.started_at is not None and replica.started_at > request.occurred_at:
                return False  # started after the request: the process it was about is gone
            log.info("restarting replica", replica_id=replica.replica_id, reason=request.reason)
            state = self._state(request.deployment_id)
            state.restarts[replica.replica_id] = (replica.restart_count + 1, request.reason)
            await self._runtime.restart(replica.replica_id)
        self.kick(request.deployment_id)
        return True

    async def on_replica_event(self, kind: ReplicaEventKind, replica: Replica, exit_code: int | None) -> None:
        """The runtime's change hook: look again at the replica's deployment."""
        self.kick(replica.deployment_id)

    async def shutdown(self, stop_replicas: bool = False) -> None:
        """Stop reconciling; with stop_replicas, stop every replica (berth shutting down) and say so.
        Only the first call acts."""
        if self._closing:
            return
        self._closing = True
        for state in self._states.values():
            state.cancel_requeue()
        await cancel_and_wait(list(self._tasks))
        if stop_replicas:
            for state in self._states.values():
                for last in state.ledger.replicas().values():
                    await self._emit(stopped_event(last, "berth stopped"))
        await self._runtime.close(stop_replicas=stop_replicas)

    def held(self) -> dict[str, int]:
        """How much is held, per kind (for the bounded-state test and debugging)."""
        return {
            "deployments": len(self._states),
            "gone": len(self._gone),
            "locks": len(self._locks),
            "kicked": len(self._kicked),
            "tasks": len(self._tasks),
        }

    def _lock(self, deployment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment_id, asyncio.Lock())

    def _state(self, deployment_id: str) -> DeploymentState:
        return self._states.setdefault(deployment_id, DeploymentState())

    async def _kicked_reconcile(self, deployment_id: str) -> None:
        async with self._lock(deployment_id):
            self._kicked.discard(deployment_id)
        await self.reconcile_logged(deployment_id)

    def _requeue(self, deployment_id: str) -> None:
        state = self._states.get(deployment_id)
        if state is None or self._closing:
            return
        state.failures += 1
        state.cancel_requeue()
        delay = self._requeue_policy.delay(state.failures)
        state.requeue = asyncio.get_running_loop().call_later(delay, self.kick, deployment_id)

    # -- one reconcile, in phases -----------------------------------------------------------------

    async def _reconcile(self, deployment_id: str) -> None:
        state = self._state(deployment_id)  # unknown to the bus but running: announced, left alone
        state.cancel_requeue()
        observed = await self._observe(deployment_id)
        error = None
        if state.deleted is not None:
            await self._remove_everything(state, state.deleted, observed)
        elif state.applied is not None:
            error = await self._converge(deployment_id, state, self._desired(state, state.applied), observed)
        observed = await self._observe(deployment_id)
        await self._announce(state, observed)
        await self._report(state, observed, error)
        self._forget_if_gone(deployment_id, state, observed)

    def _desired(self, state: DeploymentState, applied: SpecApplied) -> Desired:
        return compose(applied, state.decisions, state.aliased())

    async def _converge(
        self, deployment_id: str, state: DeploymentState, desired: Desired, observed: list[ObservedWorkload]
    ) -> str | None:
        """Phases 2-5 for a deployment that should run; returns why it cannot (status Failed), or None."""
        ready = self._ready(state, observed)
        now = time.monotonic()
        held = state.complete_since
        since = held[1] if held is not None and held[0] == desired.revision_id else None
        if state.rolled_back not in (None, desired.revision_id):
            state.rolled_back = None  # a newer spec: its own rollout
        rolled_back = state.rolled_back == desired.revision_id
        came_up = state.came_up == desired.revision_id
        promoted = state.promoted >= desired.applied.spec_version
        specs = state.specs
        plans = plan_revisions(desired, observed, ready, now, since, rolled_back, came_up, promoted, specs)  # 2.
        if not plans[0].complete:
            state.came_up = desired.revision_id
        fallback = not rolled_back and can_roll_back(desired, observed, ready, specs)  # an update, not a first start
        why = self._give_up(deployment_id, state, desired, plans[0], ready, now) if fallback else None
        if why is not None:
            state.rolled_back, state.rolled_back_why = desired.revision_id, why
            log.warning("update rolled back", revision_id=desired.revision_id, reason=why)
            plans = plan_revisions(desired, observed, ready, now, since, rolled_back=True, came_up=came_up, specs=specs)
        state.canary_tally = analysed(desired, plans[0], state.canary_tally)
        self._wake_after_hold(deployment_id, state, desired, state.completed(desired.revision_id, plans[0].complete, now))
        state.keep_revisions(p.revision_id for p in plans)
        state.standing_by = {p.revision_id for p in plans if not p.current and not p.weighted and not p.retire}
        targets: dict[str, Workload | None] = {}
        error = None
        for plan in plans:  # 3. workloads: the desired revision, and pinned ones that must (still) run
            target, why = await self._target(state, plan)
            targets[plan.revision_id] = target
            why = await self._grow(plan, target) or why
            if plan.current:
                error = why
            elif why:
                log.warning("revision cannot run", revision_id=plan.revision_id, reason=why)
        before = state.alias_serving
        state.alias_serving = aliases.resolve(state.wanted_aliases(), before, ready_revisions(plans, ready))
        resolved = {alias: t.spec_version for alias, t in state.alias_serving.items()}
        made = traffic.assignment(desired, serving(plans, ready, state.versions), state.generation + 1, resolved)
        await self._assign(state, made)  # 4. traffic
        await self._retire(state, desired, plans, targets)  # 5.
        if state.alias_serving != before:
            self.kick(deployment_id)  # a version no alias resolves to any more may retire now
        return error

    def _wake_after_hold(self, deployment_id: str, state: DeploymentState, desired: Desired, since: float | None) -> None:
        """Blue-green's hold and a canary's steps end by time alone: look again when the next one does."""
        if since is None or state.wake is not None or self._closing:
            return
        at = next_change(desired.applied.spec.updateStrategy, since, time.monotonic())
        if at is not None:
            state.wake = asyncio.get_running_loop().call_later(at - time.monotonic(), self._woken, deployment_id)

    def _give_up(
        self, deployment_id: str, state: DeploymentState, desired: Desired, plan: RevisionPlan, ready: set[str], now: float
    ) -> str | None:
        """Why the desired revision's rollout is given up (rolled back), or None: a replica of it in a
        crash loop, or its progress deadline passed."""
        version = desired.applied.spec_version
        live = plan.observed.live if plan.observed is not None else []
        looping = [r for r in live if r.restart_count >= CRASH_LOOP_RESTARTS and r.replica_id not in ready]
        if looping and not plan.complete:
            replica = looping[0]
            return f"replica {replica.replica_id} of spec version {version} restarted {replica.restart_count} times without getting ready"
        if self._past_deadline(deployment_id, state, desired, plan.complete, now):
            deadline = desired.applied.spec.updateStrategy.progressDeadlineSeconds
            return f"spec version {version} did not get ready within its progress deadline ({deadline} s)"
        return canary_failure(desired, state.canary_tally)

    def _past_deadline(
        self, deployment_id: str, state: DeploymentState, desired: Desired, complete: bool, now: float
    ) -> bool:
        """Whether the desired revision's rollout has run past its progress deadline; until then a
        reconcile is due at the deadline."""
        began = state.progressing(desired.revision_id, complete, now)
        if began is None:
            return False
        deadline = began + desired.applied.spec.updateStrategy.progressDeadlineSeconds
        if now >= deadline:
            return True
        if state.deadline is None and not self._closing:
            state.deadline = asyncio.get_running_loop().call_later(deadline - now, self._at_deadline, deployment_id)
        return False

    def _at_deadline(self, deployment_id: str) -> None:
        state = self._states.get(deployment_id)
        if state is not None:
            state.deadline = None
        self.kick(deployment_id)

    def _woken(self, deployment_id: str) -> None:
        state = self._states.get(deployment_id)
        if state is not None:
            state.wake = None
        self.kick(deployment_id)

    async def _target(self, state: DeploymentState, plan: RevisionPlan) -> tuple[Workload | None, str | None]:
        """The workload a revision's plan wants, or why its spec cannot run. Nothing to render while no
        replica should run (stopping needs no secret), nor while its integrations are not ready.
        Always rendered from the spec version the revision runs (a restored one's too), never from the
        workload read back from the runtime: that lacks what a runtime does not echo (secret values;
        on Kubernetes probes, resources, integrations), so applying it would change what runs."""
        applied = plan.applied
        if plan.keep == 0 or applied is None:
            return None, None
        integrations = state.integrations.get(plan.revision_id)
        if applied.spec.integrations and not isinstance(integrations, IntegrationsReady):
            return None, integrations.reason if isinstance(integrations, IntegrationsFailed) else None
        try:
            env = await resolve_env(applied.spec, applied.project, self._secrets)
            credentials = (
                await resolve_integration_secrets(applied.spec, applied.project, self._secrets)
                if self._runtime.fetches_integrations
                else {}
            )
        except RenderError as exc:
            return None, str(exc)
        return render(applied, env, plan.keep, integrations, credentials), None

    async def _grow(self, plan: RevisionPlan, target: Workload | None) -> str | None:
        """Create the desired revision's workload, or bring it up to its count (never down: that waits
        for the assignment without the leaving replicas). Returns why the runtime refuses it, or None."""
        current = plan.workload
        if target is None or plan.leaving:
            return None
        if current is not None:
            target = replace(target, name=current.name)  # adopted under a name from before revisions
        if target == current:
            return None
        try:
            await self._runtime.apply(target)
        except InvalidWorkload as exc:
            return f"cannot start: {exc}"
        return None

    async def _assign(self, state: DeploymentState, assignment: TrafficAssigned) -> None:
        """Publish the assignment (made with the next generation) when what serves changed."""
        if traffic.same_assignment(state.traffic, assignment):
            return
        state.generation = assignment.generation  # taken even if publishing fails: never reused
        await self._emit(assignment)

    async def _retire(
        self, state: DeploymentState, desired: Desired, plans: list[RevisionPlan], targets: dict[str, Workload | None]
    ) -> None:
        """Stop the replicas that left the assignment just published: scale down, previous revisions."""
        spec = desired.applied.spec
        scaled_down = f"scaled down to {desired.replicas}" if spec.enabled else "stopped (enabled: false)"
        if any(plan.leaving and plan.workload is not None for plan in plans):
            await self._drain()
        for plan in plans:
            if not plan.leaving or plan.workload is None:
                continue
            replaced = not plan.current and desired.replicas > 0
            reason = f"replaced by spec version {desired.applied.spec_version}" if replaced else scaled_down
            if plan.current and state.rolled_back == desired.revision_id:
                reason = f"rolled back: {state.rolled_back_why}"
            state.stop_reason = reason
            await self._announce_stopping(state, plan.leaving, reason)
            if plan.retire:
                log.info("removing workload", workload=plan.workload.name, reason=reason)
                await self._runtime.delete(plan.workload.name)
            elif (target := targets.get(plan.revision_id)) is not None:  # rendered from its spec
                await self._runtime.apply(replace(target, name=plan.workload.name, replicas=plan.keep))
            else:  # a count alone: never the workload read back, which would change what runs
                await self._runtime.scale(plan.workload.name, plan.keep)

    async def _drain(self) -> None:
        """Give routers time to apply the assignment just published before replicas it removed are
        stopped, as a Kubernetes preStop delay covers endpoint propagation: a request a router sends on
        a kept-alive connection while the replica is closing would otherwise fail (a POST cannot be
        retried). Routers apply an assignment within milliseconds (docs/benchmarks.md)."""
        if self._drain_seconds > 0:
            await asyncio.sleep(self._drain_seconds)

    async def _remove_everything(
        self, state: DeploymentState, deleted: DeploymentDeleted, observed: list[ObservedWorkload]
    ) -> None:
        """A deleted deployment: the tombstone first (its endpoint answers 404), then every replica."""
        last = state.traffic
        await self._assign(
            state, traffic.tombstone(deleted, last.name if last else "", last.spec_version if last else 0, state.generation + 1)
        )
        state.stop_reason = "deployment deleted"
        if observed:
            await self._drain()
        for workload in observed:
            await self._announce_stopping(state, workload.replicas, state.stop_reason)
            log.info("removing workload", workload=workload.workload.name, reason=state.stop_reason)
            await self._runtime.delete(workload.workload.name)

    # -- observing and telling --------------------------------------------------------------------

    async def _observe(self, deployment_id: str) -> list[ObservedWorkload]:
        workloads = [w for w in await self._runtime.workloads() if w.deployment_id == deployment_id]
        return [ObservedWorkload(w, revision_of(w), await self._runtime.replicas(w.name)) for w in workloads]

    def _ready(self, state: DeploymentState, observed: list[ObservedWorkload]) -> set[str]:
        """Running replicas whose latest health, for this very process, says ready."""
        return {
            r.replica_id
            for o in observed
            for r in o.replicas
            if r.state == "running" and (h := self._health_of(state, r)) is not None and h.ready
        }

    def _health_of(self, state: DeploymentState, replica: Replica) -> ReplicaHealthChanged | None:
        """The replica's health, unless it is about an earlier process (before a restart)."""
        health = state.health.get(replica.replica_id)
        return health if health is not None and health.restart_count == replica.restart_count else None

    async def _announce_stopping(self, state: DeploymentState, replicas: Iterable[Replica], reason: str) -> None:
        """Tell the bus (the health-monitor stops probing) before the runtime stops them."""
        for replica in replicas:
            last = state.ledger.last(replica.replica_id)
            if last is not None:
                await self._emit(stopped_event(last, reason))

    async def _announce(self, state: DeploymentState, observed: list[ObservedWorkload]) -> None:
        """Publish the replica lifecycle events the bus misses (level-triggered)."""
        present: set[str] = set()
        running = self._running_versions(state)
        for o in observed:
            for replica in o.replicas:
                present.add(replica.replica_id)
                serving_as = self._serving(state, o, replica, running.get(o.revision_id))
                last = state.ledger.last(replica.replica_id)
                for event in await lifecycle_events(replica, last, serving_as, self._log_tail, state.stop_reason):
                    await self._emit(event)
                health = kubelet_health(replica, state.health.get(replica.replica_id), serving_as)
                if health is not None and self.health_changed(health):
                    await self._emit(health)
                    self.kick(health.deployment_id)  # the assignment follows readiness
        for replica_id, last in state.ledger.replicas().items():
            if replica_id not in present:
                await self._emit(stopped_event(last, state.stop_reason))
        state.forget_replicas(present)

    def _running_versions(self, state: DeploymentState) -> dict[str, SpecApplied]:
        """revision -> the version its replicas serve: the desired one, and those aliases pin."""
        if state.applied is None:
            return {}
        desired = self._desired(state, state.applied)
        return {desired.revision_id: desired.applied} | {r: p.applied for r, p in desired.pinned.items()}

    def _serving(
        self, state: DeploymentState, observed: ObservedWorkload, replica: Replica, applied: SpecApplied | None
    ) -> Serving:
        """What a replica serves: the version its revision runs for (the desired one, or an aliased
        one), else what it was announced with."""
        revision = replica.revision_id or observed.revision_id
        if applied is not None:
            spec = applied.spec
            return Serving(ref_of(applied), applied.spec_id, spec.resources.port, health_checks_of(spec), revision)
        started = state.ledger.started(replica.replica_id)
        if started is not None:
            return Serving(ref_of(started), started.spec_id, started.primary_port, started.health_checks, revision)
        workload = observed.workload
        return Serving(ref_of(workload), workload.spec_id, workload.ports[0], HealthChecks(), revision)

    async def _report(self, state: DeploymentState, observed: list[ObservedWorkload], error: str | None) -> None:
        """6. status: what the deployment looks like now, published when it changed."""
        if state.applied is None:
            if state.deleted is not None and not observed:
                await self._set_status(state, deleted_status(state.deleted))
            return
        desired = self._desired(state, state.applied)
        replicas = [
            ObservedReplica(
                replica=replica,
                spec_id=last.spec_id if (last := state.ledger.last(replica.replica_id)) else o.workload.spec_id,
                current=o.revision_id == desired.revision_id,
                pinned=o.revision_id in desired.pinned or o.revision_id in state.standing_by,
                primary_port=o.workload.ports[0],
                health=self._health_of(state, replica),
                exit=last if isinstance(last, ReplicaExited) else None,
                restart_reason=restart_reason(replica, state.restarts.get(replica.replica_id)),
            )
            for o in observed
            for replica in o.replicas
        ]
        # What the runtime cannot give is a property of the workload, whether or not it runs yet.
        shape = render(desired.applied, ResolvedEnv({}, frozenset()), desired.replicas)
        shape = replace(shape, mounts=tuple(
            Mount(i.name, i.mount, "", i.readOnly if isinstance(i, VolumeIntegration) else True)
            for i in desired.applied.spec.integrations
        ))  # fmt: skip
        not_provided = self._runtime.not_provided(shape) + not_acted_on(desired.applied.spec)
        outcome = state.integrations.get(desired.revision_id)
        pending = waiting_for_integrations(desired, outcome)
        status = compute_status(desired, replicas, error, not_provided, pending, outcome)
        if state.rolled_back == desired.revision_id and not error:
            reason = f"rolled back: {state.rolled_back_why}; the previous revision serves ({status.ready_replicas} ready)"
            rolled = {"rolled_back_version": desired.applied.spec_version, "rolled_back_reason": state.rolled_back_why}
            status = status.model_copy(update={"phase": "Degraded", "reason": reason, **rolled})
        await self._set_status(state, status)

    def _forget_if_gone(self, deployment_id: str, state: DeploymentState, observed: list[ObservedWorkload]) -> None:
        """Drop everything held about a deployment that is deleted and gone (or was never ours)."""
        if observed or len(state.ledger):
            return
        if state.deleted is not None:
            tombstoned = state.traffic is not None and state.traffic.deleted
            if not tombstoned or state.status is None or state.status.phase != "Deleted":
                return  # the tombstone or the Deleted status is still to be published
            self._gone[deployment_id] = time.monotonic() + self._deleted_retention
        elif state.applied is not None or state.decisions or state.aliases or state.integrations:
            return
        state.cancel_requeue()
        del self._states[deployment_id]
        self._locks.pop(deployment_id, None)
        self._kicked.discard(deployment_id)
        if self._deleted_retention <= 0:
            self._gone.pop(deployment_id, None)

    async def _log_tail(self, replica_id: str) -> list[str]:
        try:
            return await self._runtime.logs(replica_id, tail=LOG_TAIL_LINES)
        except (ReplicaNotFound, OSError):
            return []  # gone meanwhile: the exit is news even without its last words

    async def _emit(self, event: Event) -> None:
        await self._publish(event)
        EVENTS_PUBLISHED.labels(event.type).inc()
        state = self._states.get(getattr(event, "deployment_id", ""))
        if state is None:
            return
        if isinstance(event, DeploymentStatusChanged):
            state.status = event
        elif isinstance(event, TrafficAssigned):
            state.traffic = event
        elif isinstance(event, ReplicaStarted | ReplicaExited | ReplicaStopped):
            state.ledger.record(event)
            if isinstance(event, ReplicaStopped):
                state.health.pop(event.replica_id, None)

    async def _set_status(self, state: DeploymentState, status: DeploymentStatusChanged) -> None:
        if not same_status(state.status, status):
            await self._emit(status)
