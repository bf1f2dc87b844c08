"""The traffic assignment of a deployment: which revisions serve, at what weight, through which ready
replicas (pure makers; the reconciler decides when to publish).

The scheduler is the only producer of `TrafficAssigned`; the router applies the newest generation as
it is. Percents follow the ready replicas: while a new revision comes up beside the old one, each gets
a share proportional to its ready replicas (largest-remainder rounding, so they sum to 100); a
revision without a ready replica is listed at 0 so that its spec versions stay resolvable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from libs.events import (
    DeploymentRef,
    RevisionTarget,
    ServingReplica,
    TrafficAssigned,
)
from services.scheduler.desired import Desired

FULL = 100
# How long the router holds a request while a deployment that may scale to zero brings a replica up
# (Knative's activator holds them likewise, bounded).
ACTIVATION_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class RevisionServing:
    """One revision as the assignment shows it: its spec versions and its ready replicas."""

    revision_id: str
    spec_versions: tuple[int, ...]
    replicas: tuple[ServingReplica, ...]
    weighted: bool = True  # takes a share of the endpoint's requests; else only pinned ones (@alias)
    share: int | None = None  # its explicit percent (a canary's steps); None: by ready replicas


def percents(ready_counts: Sequence[int]) -> list[int]:
    """Shares proportional to `ready_counts` summing to 100 (all 0 when nothing is ready). Remainders
    go to the largest fractions first, ties to the earlier entry (the newest revision comes first)."""
    total = sum(ready_counts)
    if total == 0:
        return [0] * len(ready_counts)
    shares = [FULL * count // total for count in ready_counts]
    by_fraction = sorted(range(len(ready_counts)), key=lambda i: (-(FULL * ready_counts[i] % total), i))
    for i in by_fraction[: FULL - sum(shares)]:
        shares[i] += 1
    return shares


def assignment(
    desired: Desired, revisions: Sequence[RevisionServing], generation: int, aliases: Mapping[str, int] | None = None
) -> TrafficAssigned:
    """What serves `desired`: the given revisions (newest first), none while the deployment is stopped;
    `aliases` (alias -> spec version) as they are to resolve now."""
    applied, spec = desired.applied, desired.applied.spec
    serving = revisions if spec.enabled else []
    shares = percents(_weights(serving))
    bounds = spec.resources.replica_bounds()
    return TrafficAssigned(
        hold_seconds=ACTIVATION_HOLD_SECONDS if bounds is not None and bounds[0] == 0 else 0.0,
        **_ref(applied),
        name=applied.name,
        generation=generation,
        spec_version=applied.spec_version,
        enabled=spec.enabled,
        load_balancer=spec.loadBalancer,
        basic_auth_key=spec.basicAuthKey,
        targets=[
            RevisionTarget(
                revision_id=r.revision_id,
                percent=share,
                spec_versions=list(r.spec_versions),
                replicas=list(r.replicas),
            )
            for r, share in zip(serving, shares, strict=True)
        ],
        aliases=dict(aliases or {}),
    )


def _weights(serving: Sequence[RevisionServing]) -> list[int]:
    """What the percents are proportional to: explicit shares when the serving revisions have them
    (a canary: its weight and the stable revision's rest), else ready replicas. A revision without a
    ready replica gets nothing either way."""
    taking = [r for r in serving if r.weighted and r.replicas]
    explicit = bool(taking) and all(r.share is not None for r in taking)
    return [
        ((r.share or 0) if explicit else len(r.replicas)) if r.weighted and r.replicas else 0 for r in serving
    ]


def tombstone(ref: DeploymentRef, name: str, spec_version: int, generation: int) -> TrafficAssigned:
    """The deployment is gone: its endpoint answers 404."""
    return TrafficAssigned(
        **_ref(ref), name=name, generation=generation, spec_version=spec_version, enabled=False, deleted=True
    )


def same_assignment(a: TrafficAssigned | None, b: TrafficAssigned) -> bool:
    """Equal but for the generation and the event's own id and time: publish only when False."""
    return a is not None and _comparable(a) == _comparable(b)


def _comparable(a: TrafficAssigned) -> dict[str, object]:
    return a.model_dump(exclude={"event_id", "occurred_at", "generation"})


def _ref(ref: DeploymentRef) -> dict[str, str]:
    return {"deployment_id": ref.deployment_id, "project": ref.project, "slug": ref.slug}
