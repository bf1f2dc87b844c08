"""The dry run's verdict for every field of the spec (seeds/002 edit rules): live, replace or refused.

Table-driven over every field the spec has; a field added to the spec without a row here fails
`test_the_table_covers_every_field_of_the_spec`. The verdict must agree with revisions: a change
replaces replicas exactly when it changes the revision id."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from libs.changes import effect_of, field_changes, flatten
from libs.revision import revision_id
from libs.spec import DeploymentSpec, validate_spec

BASE: dict[str, Any] = {
    "name": "iris",
    "image": "python:3.11",
    "command": ["python", "serve.py"],
    "description": "first",
    "environment": "staging",
    "model": {"id": "iris", "version": "1"},
    "env": [{"name": "A", "value": "1"}],
    "integrations": [{"type": "git-lfs", "name": "repo", "path": "/data", "url": "https://example.com/r.git"}],
    "resources": {
        "ports": [8000], "replicas": 2, "cpu": 1, "memory": 2, "gpuCount": 1, "gpuType": "A100", "machineType": "small",
        "autoscaling": {"enabled": False, "maxReplicas": 4, "metrics": [{"metric": "cpu", "value": 50}]},
    },
    "healthChecks": {
        kind: {"path": "/healthz", "headers": [{"name": "X-A", "value": "1"}]} for kind in ("readiness", "liveness", "startup")
    },
    "loadBalancer": {"healthCheckPath": "/ping", "healthCheckIntervalSeconds": 5},
    "updateStrategy": {"type": "canary", "canaryPercent": 10},
}  # fmt: skip

Edit = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Edit:
    def edit(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


PROBE_FIELDS = {
    "path": "/ready", "port": 8000, "initialDelaySeconds": 3, "periodSeconds": 20, "timeoutSeconds": 2,
    "successThreshold": 2, "failureThreshold": 5, "headers": [{"name": "X-B", "value": "2"}],
}  # fmt: skip
# field (as the spec model names it) -> (an edit that changes it, the verdict)
TABLE: dict[str, tuple[Edit, str]] = {
    "apiVersion": (lambda d: None, "live"),  # one value only: nothing to change
    "name": (setter("name", "iris two"), "refused"),
    "image": (setter("image", "python:3.12"), "replace"),
    "enabled": (setter("enabled", False), "live"),
    "containerRegistry": (setter("containerRegistry", "ghcr.io"), "replace"),
    "command": (setter("command", ["python", "serve2.py"]), "replace"),
    "resources.ports": (setter("resources.ports", [8001]), "replace"),
    "resources.replicas": (setter("resources.replicas", 5), "live"),
    "resources.machineType": (setter("resources.machineType", "large"), "replace"),
    "resources.autoscaling.enabled": (setter("resources.autoscaling.enabled", True), "live"),
    "resources.autoscaling.minReplicas": (setter("resources.autoscaling.minReplicas", 1), "live"),
    "resources.autoscaling.maxReplicas": (setter("resources.autoscaling.maxReplicas", 9), "live"),
    "resources.autoscaling.metrics": (setter("resources.autoscaling.metrics", [{"metric": "memory", "value": 70}]), "live"),
    **{
        f"resources.autoscaling.behavior.{direction}.{name}": (
            setter(f"resources.autoscaling.behavior.{direction}.{name}", value), "live"
        )
        for direction in ("scaleUp", "scaleDown")
        for name, value in (
            ("stabilizationWindowSeconds", 120), ("selectPolicy", "Min"), ("tolerance", 0.2),
            ("policies", [{"type": "Pods", "value": 2, "periodSeconds": 30}]),
        )
    },
    "resources.cpu": (setter("resources.cpu", 2), "replace"),
    "resources.memory": (setter("resources.memory", 4), "replace"),
    "resources.gpuCount": (setter("resources.gpuCount", 2), "replace"),
    "resources.gpuType": (setter("resources.gpuType", "T4"), "replace"),
    "integrations": (setter("integrations", []), "replace"),
    "healthChecks.readiness": (setter("healthChecks.readiness", None), "live"),
    "healthChecks.liveness": (setter("healthChecks.liveness", None), "live"),
    "healthChecks.startup": (setter("healthChecks.startup", None), "live"),
    **{
        f"healthChecks.readiness.{name}": (setter(f"healthChecks.readiness.{name}", value), "live")
        for name, value in PROBE_FIELDS.items()
    },
    "basicAuthKey": (setter("basicAuthKey", "secret:key"), "live"),
    "env": (setter("env", [{"name": "A", "value": "2"}]), "replace"),
    "description": (setter("description", "second"), "live"),
    "model": (setter("model", None), "replace"),
    "model.id": (setter("model.id", "iris-2"), "replace"),
    "model.version": (setter("model.version", "2"), "replace"),
    "environment": (setter("environment", "production"), "live"),
    "loadBalancer.enabled": (setter("loadBalancer.enabled", False), "live"),
    "loadBalancer.algorithm": (setter("loadBalancer.algorithm", "ip-hash"), "live"),
    "loadBalancer.stickySessions": (setter("loadBalancer.stickySessions", True), "live"),
    "loadBalancer.healthCheckPath": (setter("loadBalancer.healthCheckPath", "/alive"), "live"),
    "loadBalancer.healthCheckIntervalSeconds": (setter("loadBalancer.healthCheckIntervalSeconds", 9), "live"),
    "updateStrategy.type": (lambda d: d.update(updateStrategy={"type": "blue-green"}), "live"),
    "updateStrategy.canaryPercent": (setter("updateStrategy.canaryPercent", 20), "live"),
    "updateStrategy.canarySteps": (setter("updateStrategy.canarySteps", [10, 50]), "live"),
    "updateStrategy.canaryStepSeconds": (setter("updateStrategy.canaryStepSeconds", 5), "live"),
    "updateStrategy.analysis.maxErrorRateIncrease": (setter("updateStrategy.analysis.maxErrorRateIncrease", 1.5), "live"),
    "updateStrategy.analysis.maxP99LatencyRatio": (setter("updateStrategy.analysis.maxP99LatencyRatio", 2), "live"),
    "updateStrategy.analysis.minRequests": (setter("updateStrategy.analysis.minRequests", 50), "live"),
    "updateStrategy.maxSurge": (lambda d: d.update(updateStrategy={"type": "rolling", "maxSurge": 2}), "live"),
    "updateStrategy.maxUnavailable": (lambda d: d.update(updateStrategy={"type": "rolling", "maxUnavailable": "50%"}), "live"),
    "updateStrategy.scaleDownDelaySeconds": (
        lambda d: d.update(updateStrategy={"type": "blue-green", "scaleDownDelaySeconds": 5}), "live"
    ),
    "updateStrategy.progressDeadlineSeconds": (setter("updateStrategy.progressDeadlineSeconds", 30), "live"),
    "restartedAt": (setter("restartedAt", "2026-12-01T12:00:00+00:00"), "replace"),  # a restart: a new revision
    # Alerting rules are read by the alerting service only: no replica notices them.
    "alerts": (setter("alerts", [{"name": "Errors", "metric": "error_rate_percent", "op": ">", "threshold": 1}]), "live"),
}


def model_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of the spec by path: nested models are opened (a probe once: all three kinds share
    its fields), lists and unions of models are one field."""
    paths = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        nested = [a for a in typing.get_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        target = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        inner = target or (nested[0] if len(nested) == 1 and isinstance(info.annotation, types.UnionType) else None)
        if inner is not None and not (prefix.startswith("healthChecks.") and name != "readiness"):
            paths |= model_fields(inner, f"{path}.")
    return paths


def test_the_table_covers_every_field_of_the_spec() -> None:
    fields = model_fields(DeploymentSpec)
    opened = {p.rsplit(".", 1)[0] for p in fields if "." in p}  # a model's own row would say nothing more
    assert set(TABLE) == fields - (opened - {"model", "healthChecks.readiness", "healthChecks.liveness", "healthChecks.startup"})


@pytest.mark.parametrize("field", sorted(TABLE))
def test_each_field_gets_its_verdict_and_replaces_exactly_when_the_revision_changes(field: str) -> None:
    edit, verdict = TABLE[field]
    before = validate_spec(copy.deepcopy(BASE))
    document = copy.deepcopy(BASE)
    edit(document)
    after = validate_spec(document)
    changes = field_changes(before, after)
    if field == "apiVersion":
        assert changes == []
        return
    assert changes, f"{field}: the edit changed nothing"
    assert {c.effect for c in changes} == {verdict}, changes
    group = field.rsplit(".", 1)[0]  # a change may clear its neighbours (a type without canaryPercent)
    assert all(c.field.startswith(group) for c in changes), changes
    if verdict != "refused":
        assert (revision_id(before) != revision_id(after)) == (verdict == "replace")


def test_defaults_spelled_out_and_reordered_env_are_no_change() -> None:
    document = copy.deepcopy(BASE) | {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    reordered = document | {"env": list(reversed(document["env"])), "enabled": True, "apiVersion": "v1"}
    assert field_changes(validate_spec(document), validate_spec(reordered)) == []


def test_env_changes_are_per_variable_and_a_new_deployment_is_all_new() -> None:
    before = validate_spec(copy.deepcopy(BASE))
    after = validate_spec(copy.deepcopy(BASE) | {"env": [{"name": "A", "value": "1"}, {"name": "T", "value": "secret:tok"}]})
    (change,) = field_changes(before, after)
    assert (change.field, change.before, change.after, change.effect) == ("env.T", None, "secret:tok", "replace")
    fresh = field_changes(None, before)
    assert {c.field for c in fresh} == {p for p, v in flatten(before.model_dump(mode="json")).items() if v is not None}
    assert effect_of("resources.autoscaling.maxReplicas") == "live" and effect_of("resources.cpu") == "replace"


def test_a_spec_without_restarted_at_keeps_the_revision_id_it_had() -> None:
    """restartedAt counts only when set: revisions of specs applied before it existed keep their ids
    (the value pinned is what main computed for BASE before the field existed)."""
    assert revision_id(validate_spec(copy.deepcopy(BASE))) == "7d3edd36690b05e2"
