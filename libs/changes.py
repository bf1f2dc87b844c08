"""What a new spec version changes, field by field, and how each change takes effect (pure).

The verdict follows from revisions (libs/revision.py): a field that is part of the revision's template
replaces replicas (a new revision rolls out through the deployment's update strategy); every other
field applies live to the replicas that run (load balancer, autoscaling, health checks, description,
replicas, `enabled`, ...). The name cannot change at all (seeds/002): a rename is refused.

Used by `berth apply --dry-run` (`?dryRun=true`) and `berth deployments history --diff`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from libs.revision import is_template_field
from libs.spec import DeploymentSpec

Effect = Literal["live", "replace", "refused"]
KEYED_LISTS = ("env", "integrations")  # lists of named items: diffed item by item, by name
RENAME = "the name cannot change: create a deployment with the new name, move traffic to it, delete this one"
NOTES = {
    "resources.replicas": "scales the running revision; no replica is replaced",
    "enabled": "starts or stops every replica; none is replaced",
}


@dataclass(frozen=True)
class FieldChange:
    field: str  # dotted path: resources.cpu, env.HF_TOKEN, healthChecks.readiness.path
    before: Any  # None: not set before
    after: Any  # None: not set any more
    effect: Effect
    note: str = ""


def field_changes(before: DeploymentSpec | None, after: DeploymentSpec) -> list[FieldChange]:
    """Every field whose value differs (defaults filled in, so spelling a default out is no change),
    by path. Against no spec (a new deployment), every field is a change."""
    old = flatten(before.model_dump(mode="json")) if before is not None else {}
    new = flatten(after.model_dump(mode="json"))
    changes = []
    for path in sorted(old.keys() | new.keys()):
        was, now = old.get(path), new.get(path)
        if was != now:
            changes.append(FieldChange(path, was, now, effect_of(path), _note(path)))
    return changes


def effect_of(path: str) -> Effect:
    if path == "name":
        return "refused"
    return "replace" if is_template_field(path) else "live"


def replaces_replicas(changes: list[FieldChange]) -> bool:
    return any(c.effect == "replace" for c in changes)


# What the scheduler does when replicas are replaced, by updateStrategy.type (what
# services/scheduler/strategies.py and revisions.py do).
ROLLOUTS = {
    "rolling": "new replicas replace the old ones in steps within maxSurge and maxUnavailable (25 %/25 % by "
    "default, as Kubernetes), each taking traffic once ready; an old one stops only after it left the traffic",
    "blue-green": "the whole new set starts beside the old one and takes all traffic at once when every new "
    "replica is ready; the old set stays scaleDownDelaySeconds (30) for an instant rollback",
    "canary": "the new set starts beside the old one; once all of it is ready it takes the canary weights "
    "(canarySteps, default [canaryPercent] = 10 %), each for canaryStepSeconds (60), then all traffic; "
    "a rollback aborts it at once",
}


def rollout(spec: DeploymentSpec, changes: list[FieldChange]) -> str:
    """A sentence on what applying `spec` will do to the running replicas."""
    if any(c.effect == "refused" for c in changes):
        return "refused: " + RENAME
    if not changes:
        return "nothing changes"
    if not replaces_replicas(changes):
        return "applies live: no replica is replaced"
    strategy = spec.updateStrategy.type
    return f"replaces replicas with the {strategy} strategy: " + ROLLOUTS[strategy]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted path; env and integrations by item name (a reorder is no change)."""
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves |= flatten(item, f"{prefix}.{key}" if prefix else key)
        return leaves
    if prefix in KEYED_LISTS and isinstance(value, list):
        return {f"{prefix}.{item['name']}": _without_name(item) for item in value}
    return {prefix: value}


def _without_name(item: dict[str, Any]) -> Any:
    rest = {k: v for k, v in item.items() if k != "name"}
    return rest["value"] if set(rest) == {"value"} else rest


def _note(path: str) -> str:
    return RENAME if path == "name" else NOTES.get(path, "")
