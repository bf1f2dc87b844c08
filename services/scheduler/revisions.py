"""Which revisions of a deployment run, at what size, and which replicas leave (pure).

The desired revision runs the composed count. A previous revision (an older template) keeps its
replicas, and its share of traffic, until the desired one has all its replicas ready; then, or at once
when it has no ready replica to lose, it retires. Replicas that leave (a scale down stops the newest
first, a retiring revision stops all) are stopped only after the traffic assignment without them is
published: the plan names them so that the reconciler can do it in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from libs.events import ServingReplica
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
    plans = [RevisionPlan(desired.revision_id, True, current_observed, desired.replicas, leaving=leaving)]
    complete = desired.replicas == 0 or ready_now >= desired.replicas
    for previous in (o for o in observed if o is not current_observed):
        live = previous.live
        retire = complete or not any(r.replica_id in ready for r in live)
        plans.append(
            RevisionPlan(
                previous.revision_id, False, previous, 0 if retire else len(live),
                retire=retire, leaving=tuple(live) if retire else (),
            )  # fmt: skip
        )
    return plans


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
        shown.append(RevisionServing(plan.revision_id, tuple(versions.get(plan.revision_id, ())), tuple(replicas)))
    return shown
