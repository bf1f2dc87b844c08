"""How many replicas a deployment should run: composed from its newest spec and the newest scale
decisions (pure).

A decision (`DeploymentScaled`, from a user's `berth deployments scale` or the autoscaler) holds while
the newest spec keeps the `resources.replicas` it was made against; a spec applying another count
supersedes it, as `kubectl apply` of a changed `replicas` supersedes `kubectl scale`. Which source
counts: the autoscaler's while the spec enables autoscaling, else the user's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libs.events import AliasTarget, DeploymentScaled, ReplicasSource, SpecApplied
from libs.revision import revision_id


@dataclass(frozen=True)
class Pinned:
    """A revision other than the desired one that keeps running because an alias names one of its
    versions: it runs that version's `resources.replicas` (at least 1), takes no share of the
    endpoint's traffic, and answers at `@<alias>` and `@<version>`."""

    applied: SpecApplied  # the aliased version (the newest, when several aliases name the revision)
    replicas: int


@dataclass(frozen=True)
class Desired:
    applied: SpecApplied
    revision_id: str
    replicas: int
    source: ReplicasSource
    reason: str | None = None  # the decision's, when one is in force
    pinned: Mapping[str, Pinned] = field(default_factory=dict)  # revision -> why and how it keeps running


def compose(
    applied: SpecApplied, decisions: Mapping[str, DeploymentScaled], aliased: Iterable[AliasTarget] = ()
) -> Desired:
    spec = applied.spec
    revision = revision_id(spec)
    if not spec.enabled:
        return Desired(applied, revision, 0, "spec")  # a stopped deployment runs nothing, aliases neither
    pinned = pin(applied, revision, aliased)
    autoscaling = spec.resources.autoscaling
    source: ReplicasSource = "autoscaler" if autoscaling is not None and autoscaling.enabled else "user"
    decision = decisions.get(source)
    if decision is not None and decision.spec_replicas == spec.resources.replicas:
        return Desired(applied, revision, decision.replicas, source, decision.reason or None, pinned=pinned)
    return Desired(applied, revision, spec.resources.replicas, "spec", pinned=pinned)


def pin(applied: SpecApplied, current: str, aliased: Iterable[AliasTarget]) -> dict[str, Pinned]:
    """The revisions aliased versions keep running, besides the current one."""
    pinned: dict[str, Pinned] = {}
    for target in sorted(aliased, key=lambda t: t.spec_version):
        revision = revision_id(target.spec)
        if revision == current:
            continue
        known = pinned.get(revision)
        replicas = max(1, target.spec.resources.replicas, known.replicas if known else 0)
        pinned[revision] = Pinned(target.applied(applied), replicas)
    return pinned


def newer_decision(known: DeploymentScaled | None, event: DeploymentScaled) -> bool:
    """Each source has one producer, so its decisions are ordered by when they were made."""
    return known is None or (event.occurred_at, event.spec_version) > (known.occurred_at, known.spec_version)
