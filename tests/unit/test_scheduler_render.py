"""What the scheduler asks the runtime to run for a revision (pure functions)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from libs.events import SpecApplied
from libs.revision import revision_id
from libs.spec import validate_spec
from services.scheduler.render import (
    REVISION_LABEL,
    ResolvedEnv,
    render,
    resolve_env,
    workload_name,
)
from tests.fakes import FakeSecrets

BASE: dict[str, Any] = {
    "name": "iris classifier",
    "image": "python:3.11",
    "command": ["python", "-m", "iris"],
    "env": [{"name": "MODEL", "value": "iris-v1"}, {"name": "KEY", "value": "secret:iris-key"}],
    "resources": {"ports": [8000, 9000], "replicas": 2},
}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def spec(**changes: Any) -> Any:
    document = {**BASE, **changes}
    if "resources" in changes:
        document["resources"] = {**BASE["resources"], **changes["resources"]}
    return validate_spec(document)


def applied(**changes: Any) -> SpecApplied:
    s = spec(**changes)
    return SpecApplied(
        deployment_id="d1", project="default", slug=s.slug, name=s.name,
        spec_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0", spec_version=1, spec=s,
    )  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"resources": {"replicas": 5}},
        {"enabled": False},
        {"description": "now with a description"},
        {"healthChecks": {"readiness": {"path": "/ready"}}},
        {"loadBalancer": {"algorithm": "least-connections"}},
        {"resources": {"autoscaling": {"enabled": True, "maxReplicas": 5, "metrics": [{"metric": "cpu", "value": 50}]}}},
        {"environment": "production"},
    ],
)
def test_changes_that_keep_the_running_replicas(change: dict[str, Any]) -> None:
    assert revision_id(spec(**change)) == revision_id(spec())


@pytest.mark.parametrize(
    "change",
    [
        {"command": ["python", "-m", "iris", "--fast"]},
        {"image": "python:3.12"},
        {"env": [{"name": "MODEL", "value": "iris-v2"}]},
        {"env": [{"name": "MODEL", "value": "iris-v1"}, {"name": "KEY", "value": "secret:other-key"}]},
        {"resources": {"ports": [8001]}},
        {"resources": {"cpu": 2}},
        {"resources": {"memory": 4}},
        {"resources": {"gpuCount": 1, "gpuType": "T4"}},
        {"resources": {"machineType": "A100-80G"}},
        {"integrations": [{"type": "git-lfs", "name": "iris", "path": "/models", "url": "https://hf.co/iris"}]},
        {"model": {"id": "iris", "version": "2"}},
    ],
)
def test_changes_that_replace_the_replicas(change: dict[str, Any]) -> None:
    assert revision_id(spec(**change)) != revision_id(spec())


def test_workload_name_is_a_dns_label_within_63_characters() -> None:
    assert workload_name("default", "iris-classifier", "0f1e2d3c4b5a6978") == "default-iris-classifier-0f1e2d3c4b5a6978"
    long = workload_name("team-with-a-long-name", "a-" * 40, "ABCDEF0123456789")
    assert len(long) <= 63 and DNS_1123.match(long) and long.endswith("-abcdef0123456789")


def test_one_workload_per_revision_named_by_it() -> None:
    scaled = render(applied(resources={"replicas": 5}), ResolvedEnv({}, frozenset()), 5)
    assert scaled.name == render(applied(), ResolvedEnv({}, frozenset()), 2).name
    assert scaled.name != render(applied(image="python:3.12"), ResolvedEnv({}, frozenset()), 2).name


def test_render_takes_every_field_that_runs() -> None:
    resources = {"cpu": 2, "memory": 4, "gpuCount": 1, "gpuType": "A100"}
    env = ResolvedEnv({"MODEL": "m", "KEY": "k"}, frozenset({"KEY"}))
    workload = render(applied(resources=resources, containerRegistry="registry.example.com"), env, 3)
    revision = revision_id(spec(resources=resources, containerRegistry="registry.example.com"))
    assert (workload.deployment_id, workload.spec_id) == ("d1", "0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    assert workload.name == f"default-iris-classifier-{revision}"
    assert workload.command == ("python", "-m", "iris") and workload.ports == (8000, 9000)
    assert (workload.replicas, workload.cpu, workload.memory_gb, workload.gpu_count, workload.gpu_type) == (3, 2, 4, 1, "A100")
    assert workload.env == {"MODEL": "m", "KEY": "k"} and workload.secret_env == frozenset({"KEY"})
    assert workload.revision_id == workload.labels[REVISION_LABEL] != revision_id(spec())
    assert workload.container_registry == "registry.example.com"


async def test_env_resolves_secrets_and_names_them_and_carries_the_model() -> None:
    env = await resolve_env(spec(model={"id": "iris", "version": "3"}), "default", FakeSecrets({"iris-key": "k"}))
    assert env.values == {"MODEL": "iris-v1", "KEY": "k", "BERTH_MODEL_ID": "iris", "BERTH_MODEL_VERSION": "3"}
    assert env.secret_names == frozenset({"KEY"})
