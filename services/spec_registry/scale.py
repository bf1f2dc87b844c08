"""How many replicas a deployment should run, and which decision says so.

A user's `scale` is not a spec version: it is kept on the deployment row with the spec version and the
`resources.replicas` it was made against, and published as `DeploymentScaled(source="user")`. It holds
while the current spec keeps that `resources.replicas` (REVISIONS.md; as `kubectl apply` of a changed
`replicas` supersedes `kubectl scale`). The scheduler composes the same way from the events.
"""

from __future__ import annotations

from typing import Literal

from libs.spec import DeploymentSpec
from libs.store import DeploymentRow

DesiredSource = Literal["spec", "user", "autoscaler", "stopped"]


def holds(row: DeploymentRow, spec: DeploymentSpec) -> bool:
    """Whether the user's scale decision applies to `spec` (the deployment's current spec)."""
    return row.scale_replicas is not None and row.scale_spec_replicas == spec.resources.replicas


def wanted(row: DeploymentRow, spec: DeploymentSpec) -> int:
    """The count the user controls: their scale while it holds, else the spec's; a scale to this
    count changes nothing."""
    return row.scale_replicas if holds(row, spec) and row.scale_replicas is not None else spec.resources.replicas


def desired(row: DeploymentRow, spec: DeploymentSpec, reported: int | None) -> tuple[int, DesiredSource]:
    """The replicas the deployment should run now and where that count comes from. While autoscaling
    is enabled the autoscaler decides; the registry knows its count only from the scheduler's last
    report (`reported`), and the spec's count until the first one."""
    if not spec.enabled:
        return 0, "stopped"
    autoscaling = spec.resources.autoscaling
    if autoscaling is not None and autoscaling.enabled:
        return (spec.resources.replicas if reported is None else reported), "autoscaler"
    if holds(row, spec):
        return wanted(row, spec), "user"
    return spec.resources.replicas, "spec"
