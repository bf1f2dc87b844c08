"""How many replicas a deployment should run: composed from its newest spec and the newest scale
decisions (pure).

A decision (`DeploymentScaled`, from a user's `berth deployments scale` or the autoscaler) holds while
the newest spec keeps the `resources.replicas` it was made against; a spec applying another count
supersedes it, as `kubectl apply` of a changed `replicas` supersedes `kubectl scale`. Which source
counts: the autoscaler's while the spec enables autoscaling, else the user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from libs.events import DeploymentScaled, ReplicasSource, SpecApplied
from libs.revision import revision_id


@dataclass(frozen=True)
class Desired:
    applied: SpecApplied
    revision_id: str
    replicas: int
    source: ReplicasSource
    reason: str | None = None  # the decision's, when one is in force


def compose(applied: SpecApplied, decisions: Mapping[str, DeploymentScaled]) -> Desired:
    spec = applied.spec
    revision = revision_id(spec)
    if not spec.enabled:
        return Desired(applied, revision, 0, "spec")
    autoscaling = spec.resources.autoscaling
    source: ReplicasSource = "autoscaler" if autoscaling is not None and autoscaling.enabled else "user"
    decision = decisions.get(source)
    if decision is not None and decision.spec_replicas == spec.resources.replicas:
        return Desired(applied, revision, decision.replicas, source, decision.reason or None)
    return Desired(applied, revision, spec.resources.replicas, "spec")


def newer_decision(known: DeploymentScaled | None, event: DeploymentScaled) -> bool:
    """Each source has one producer, so its decisions are ordered by when they were made."""
    return known is None or (event.occurred_at, event.spec_version) > (known.occurred_at, known.spec_version)
