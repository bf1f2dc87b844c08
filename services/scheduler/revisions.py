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

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from libs.events import ServingReplica, SpecApplied
from libs.runtime.base import Replica, Workload
from services.scheduler.desired import Desired
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
    weighted: bool = True  # takes a share of the endpoint's traffic (False: reached only when pinned)

    @property
    def workload(self) -> Workload | None:
        return self.observed.workload if self.observed else None


def plan_revisions(desired: Desired, observed: Sequence[ObservedWorkload], ready: set[str]) -> list[RevisionPlan]:
    """The desired revision first, then every previous one still running."""
    mine = [o for o in observed if o.revision_id == desired.revision_id]
    current_observed = mine[0] if mine else None
    leaving: tuple[Replica, ...] = ()
    ready_now = 0
    if current_observed is not None:
        live = current_observed.live
        leaving = tuple(live[desired.replicas :])
        ready_now = sum(r.replica_id in ready for r in live[: desired.replicas])
    plans = [
        RevisionPlan(desired.revision_id, True, current_observed, desired.replicas, leaving=leaving, applied=desired.applied)
    ]
    complete = desired.replicas == 0 or ready_now >= desired.replicas
    for previous in (o for o in observed if o is not current_observed):
        live = previous.live
        rolling = not complete and any(r.replica_id in ready for r in live)  # still serves the endpoint
        pinned = desired.pinned.get(previous.revision_id)
        if pinned is not None:
            keep = max(pinned.replicas, len(live)) if rolling else pinned.replicas
            plans.append(
                RevisionPlan(
                    previous.revision_id, False, previous, keep,
                    leaving=tuple(live[keep:]), applied=pinned.applied, weighted=rolling,
                )  # fmt: skip
            )
            continue
        plans.append(
            RevisionPlan(
                previous.revision_id, False, previous, len(live) if rolling else 0,
                retire=not rolling, leaving=() if rolling else tuple(live),
            )  # fmt: skip
        )
    running = {p.revision_id for p in plans}
    for revision, pinned in desired.pinned.items():
        if revision not in running:
            plans.append(RevisionPlan(revision, False, None, pinned.replicas, applied=pinned.applied, weighted=False))
    return plans


def ready_revisions(plans: Sequence[RevisionPlan], ready: set[str]) -> set[str]:
    """Revisions with at least one ready replica that stays: an alias may switch to them."""
    return {
        p.revision_id
        for p in plans
        if p.observed is not None and not p.retire
        and any(r.replica_id in ready for r in p.observed.live[: p.keep])
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
        shown.append(RevisionServing(plan.revision_id, known, tuple(replicas), plan.weighted))
    return shown
