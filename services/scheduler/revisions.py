"""Which revisions of a deployment run, at what size, and which replicas leave (pure).

The desired revision runs the composed count. A previous revision (an older template) keeps its
replicas, and its share of traffic, until the desired one has all its replicas ready; then, or at once
when it has no ready replica to lose, it retires - unless an alias pins it (desired.Pinned): then it
runs its pinned count and takes no share of the endpoint's traffic, only `@<alias>` requests. A pinned
revision that does not run yet is created. Replicas that leave (a scale down stops the newest
first, a retiring revision stops all) are stopped only after the traffic assignment without them is
published: the plan names them so that the reconciler can do it in that order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from libs.events import ServingReplica, SpecApplied
from libs.runtime.base import Replica, Workload
from services.scheduler import strategies
from services.scheduler.desired import Desired, Pinned
from services.scheduler.traffic import RevisionServing

_EARLIEST = datetime.min


@dataclass(frozen=True)
class ObservedWorkload:
    workload: Workload
    revision_id: str
    replicas: Sequence[Replica]

    @property
    def live(self) -> list[Replica]:
        """Replicas not being stopped, oldest first (the order a scale down keeps them in)."""
        alive = [r for r in self.replicas if r.state != "stopping"]
        return sorted(alive, key=lambda r: ((r.created_at or _EARLIEST).replace(tzinfo=None), r.replica_id))


@dataclass(frozen=True)
class RevisionPlan:
    revision_id: str
    current: bool  # the desired revision
    observed: ObservedWorkload | None  # None: not created yet
    keep: int  # replicas it runs
    retire: bool = False  # the whole workload goes, after the assignment without it
    leaving: tuple[Replica, ...] = field(default=())  # stopped after the assignment without them
    applied: SpecApplied | None = None  # the version it is created or grown from (None: never grown)
    complete: bool = False  # the desired revision has all its replicas ready
    share: int | None = None  # an explicit percent (a canary's weight); None: by ready replicas
    restore: bool = False  # a previous revision that regains the desired count (an automatic rollback)
    weighted: bool = True  # takes a share of the endpoint's traffic (False: reached only when pinned)

    @property
    def workload(self) -> Workload | None:
        return self.observed.workload if self.observed else None


def plan_revisions(
    desired: Desired,
    observed: Sequence[ObservedWorkload],
    ready: set[str],
    now: float = 0.0,
    complete_since: float | None = None,
    rolled_back: bool = False,
    came_up: bool = True,
    promoted: bool = False,
    specs: Mapping[str, SpecApplied] | None = None,
) -> list[RevisionPlan]:
    """The desired revision first, then every previous one still running, then pinned ones to start.
    `complete_since`: when the desired revision first had all its replicas ready (blue-green's hold).
    `rolled_back`: the desired revision missed its progress deadline: it goes, and the newest previous
    revision with a ready replica serves alone at the desired count again. `came_up`: the desired
    revision was seen without all its replicas ready; one that was complete from the start (a rollback
    to a running revision, a canary's abort) takes all traffic at once instead of a canary's steps.
    `promoted`: the user promoted this update: no canary step and no blue-green hold any more.
    `specs`: revision -> the spec version it runs; a rollback restores only a revision whose spec is
    known, for it is rendered from that spec (as a Knative Revision's Pods come from the Revision, not
    from the Deployment it owns), never from the workload read back."""
    if rolled_back and (restored := _rolled_back(desired, observed, ready, specs or {})) is not None:
        return restored
    strategy = desired.applied.spec.updateStrategy
    mine = [o for o in observed if o.revision_id == desired.revision_id]
    current_observed = mine[0] if mine else None
    live = current_observed.live if current_observed is not None else []
    ready_now = sum(r.replica_id in ready for r in live[: desired.replicas])
    complete = desired.replicas == 0 or ready_now >= desired.replicas
    previous = [o for o in observed if o is not current_observed]
    old = [o for o in previous if o.revision_id not in desired.pinned]
    old_live = sum(len(o.live) for o in old)
    old_ready = sum(r.replica_id in ready for o in old for r in o.live)

    keep, weighted, share, old_share, old_stop = desired.replicas, True, None, None, old_live
    if strategy.type == "rolling" and old_live and not complete:
        counts = strategies.Counts(min(len(live), desired.replicas), ready_now, old_live, old_ready)
        step = strategies.rolling_step(strategy, desired.replicas, counts)
        keep, old_stop = step.new, step.old_unready_to_stop + step.old_ready_to_stop
    elif old_ready and not complete:  # blue-green, canary: the new set takes traffic once all is ready
        weighted, old_stop = False, 0
    elif promoted:
        pass  # the canary's remaining steps and blue-green's hold are skipped: the old revisions go
    elif old_ready and strategy.type == "blue-green":  # the switch is made; the old set stands by a while
        since = now if complete_since is None else complete_since
        old_stop = 0 if now - since < strategies.blue_green_hold_seconds(strategy) else old_live
    elif old_ready and strategy.type == "canary" and came_up:
        weight = strategies.canary_weight(strategy, now if complete_since is None else complete_since, now)
        if weight is not None:
            share, old_share, old_stop = weight, strategies.FULL - weight, 0
    plans = [
        RevisionPlan(
            desired.revision_id, True, current_observed, keep, leaving=tuple(live[keep:]),
            applied=desired.applied, weighted=weighted, complete=complete, share=share,
        )  # fmt: skip
    ]
    serve = not (complete and strategy.type == "blue-green")
    plans += _old_plans(old, old_stop, serve, old_share, ready)
    for o in previous:
        if (pinned := desired.pinned.get(o.revision_id)) is not None:
            rolling = not complete and any(r.replica_id in ready for r in o.live)  # still serves the endpoint
            plans.append(_pinned_plan(o, pinned, rolling))
    running = {p.revision_id for p in plans}
    for revision, pinned in desired.pinned.items():
        if revision not in running:
            plans.append(RevisionPlan(revision, False, None, pinned.replicas, applied=pinned.applied, weighted=False))
    return plans


def can_roll_back(
    desired: Desired, observed: Sequence[ObservedWorkload], ready: set[str], specs: Mapping[str, SpecApplied]
) -> bool:
    """Whether a previous revision (not one an alias pins) with a known spec has a ready replica to
    fall back to."""
    return _stable(desired, observed, ready, specs) is not None


def _stable(
    desired: Desired, observed: Sequence[ObservedWorkload], ready: set[str], specs: Mapping[str, SpecApplied]
) -> ObservedWorkload | None:
    previous = [
        o for o in observed
        if o.revision_id != desired.revision_id and o.revision_id not in desired.pinned
        and o.revision_id in specs and any(r.replica_id in ready for r in o.live)
    ]  # fmt: skip
    return max(previous, key=_age) if previous else None


def _rolled_back(
    desired: Desired, observed: Sequence[ObservedWorkload], ready: set[str], specs: Mapping[str, SpecApplied]
) -> list[RevisionPlan] | None:
    stable = _stable(desired, observed, ready, specs)
    if stable is None:
        return None
    plans = []
    for o in observed:
        if o is stable:
            restored = specs[o.revision_id]
            plans.append(RevisionPlan(o.revision_id, False, o, desired.replicas, applied=restored, restore=True))
        elif (pinned := desired.pinned.get(o.revision_id)) is not None:
            plans.append(_pinned_plan(o, pinned, serving=False))
        else:
            current = o.revision_id == desired.revision_id
            plans.append(RevisionPlan(o.revision_id, current, o, 0, retire=True, leaving=tuple(o.live), weighted=False))
    if not any(p.current for p in plans):
        plans.insert(0, RevisionPlan(desired.revision_id, True, None, 0, weighted=False))
    running = {p.revision_id for p in plans}
    plans += [
        RevisionPlan(revision, False, None, pinned.replicas, applied=pinned.applied, weighted=False)
        for revision, pinned in desired.pinned.items()
        if revision not in running
    ]
    plans.sort(key=lambda p: not p.current)
    return plans


def _pinned_plan(o: ObservedWorkload, pinned: Pinned, serving: bool) -> RevisionPlan:
    """A running revision an alias pins; while it still serves an update (`serving`) it keeps every
    replica it has."""
    live = o.live
    n = max(pinned.replicas, len(live)) if serving else pinned.replicas
    return RevisionPlan(o.revision_id, False, o, n, leaving=tuple(live[n:]), applied=pinned.applied, weighted=serving)


def _old_plans(
    old: Sequence[ObservedWorkload], stop: int, serve: bool, share: int | None, ready: set[str]
) -> list[RevisionPlan]:
    """Previous revisions no alias pins, `stop` of their replicas leaving, the oldest revision first
    (Kubernetes scales old ReplicaSets down oldest first). Within a revision the runtime stops the
    newest replicas, so those are the ones that leave. `share`: their explicit percent together (a
    canary's stable part), split by ready replicas."""
    plans = []
    ready_total = sum(r.replica_id in ready for o in old for r in o.live) or 1
    for o in sorted(old, key=_age):
        o_live = o.live
        leaving = min(stop, len(o_live))
        stop -= leaving
        n = len(o_live) - leaving
        mine = None if share is None else share * sum(r.replica_id in ready for r in o_live) // ready_total
        plans.append(
            RevisionPlan(
                o.revision_id, False, o, n, retire=n == 0, leaving=tuple(o_live[n:]), weighted=serve, share=mine
            )
        )
    return plans


def _age(o: ObservedWorkload) -> tuple[datetime, str]:
    created = [(r.created_at or _EARLIEST).replace(tzinfo=None) for r in o.replicas]
    return (min(created) if created else _EARLIEST, o.revision_id)


def ready_revisions(plans: Sequence[RevisionPlan], ready: set[str]) -> set[str]:
    """Revisions with at least one ready replica that stays: an alias may switch to them."""
    return {
        p.revision_id
        for p in plans
        if p.observed is not None and not p.retire
        and any(r.replica_id in ready for r in p.observed.live if r not in p.leaving)
    }  # fmt: skip


def serving(plans: Sequence[RevisionPlan], ready: set[str], versions: dict[str, list[int]]) -> list[RevisionServing]:
    """The revisions the assignment lists: every one that stays, with its ready replicas that stay."""
    shown = []
    for plan in plans:
        if plan.retire:
            continue
        replicas: list[ServingReplica] = []
        if plan.observed is not None:
            port = plan.observed.workload.ports[0]
            gone = {r.replica_id for r in plan.leaving}
            replicas = [
                ServingReplica(replica_id=r.replica_id, address=f"{r.host}:{r.ports[port]}")
                for r in plan.observed.live
                if r.replica_id in ready and r.replica_id not in gone and port in r.ports
            ]
        known = tuple(versions.get(plan.revision_id, ()))
        shown.append(RevisionServing(plan.revision_id, known, tuple(replicas), plan.weighted, plan.share))
    return shown
