"""What the scheduler asks the runtime to run for one spec version: a pure function of the spec.

The reconciler (reconcile.py) decides *when* to create, scale or replace a workload; this module only
says *what* the workload is. Two spec versions with the same template hash run the same processes, so
a change of replicas, `enabled`, autoscaling, the load balancer or the description keeps the running
replicas; a change of command, image, env, ports, resources or integrations replaces them.
"""

from __future__ import annotations

import hashlib
import json

from libs.events import SpecApplied
from libs.runtime.base import Workload
from libs.secrets import SecretNotFound, SecretStore
from libs.spec import DeploymentSpec, is_secret_ref, secret_name

TEMPLATE_LABEL = "berth.dev/template"
MAX_NAME = 63


class RenderError(Exception):
    """The spec cannot become a workload (e.g. a secret it refers to is missing). Never holds a value."""


def template_hash(spec: DeploymentSpec) -> str:
    """Hash of every field that changes what runs. Secret references count, not their values."""
    fields = {
        "image": spec.image,
        "containerRegistry": spec.containerRegistry,
        "command": spec.command,
        "env": [(e.name, e.value) for e in spec.env],
        "model": spec.model.model_dump() if spec.model else None,
        "integrations": [i.model_dump() for i in spec.integrations],
        "resources": spec.resources.model_dump(exclude={"replicas", "autoscaling"}),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def workload_name(project: str, slug: str, spec_id: str) -> str:
    """`{project}-{slug}-{spec_id[:8]}`, a DNS-1123 label: the slug is cut to fit 63 characters."""
    suffix = f"-{spec_id[:8].lower()}"
    return f"{project}-{slug}"[: MAX_NAME - len(suffix)].rstrip("-") + suffix


async def resolve_env(spec: DeploymentSpec, project: str, secrets: SecretStore) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in spec.env:
        try:
            env[var.name] = await secrets.resolve(project, var.value)
        except SecretNotFound:
            raise RenderError(
                f"env {var.name} refers to secret {secret_name(var.value)!r}, "
                f"which project {project!r} does not have"
            ) from None
    return env


def render(applied: SpecApplied, env: dict[str, str], name: str) -> Workload:
    """The workload of a spec version, under `name` (an existing workload that runs the same template
    keeps its name)."""
    spec = applied.spec
    resources = spec.resources
    return Workload(
        name=name,
        deployment_id=applied.deployment_id,
        project=applied.project,
        slug=applied.slug,
        spec_id=applied.spec_id,
        replicas=spec.desired_replicas,
        command=tuple(spec.command or ()),
        image=spec.image,
        env=env,
        ports=tuple(resources.ports),
        cpu=resources.cpu,
        memory_gb=resources.memory,
        gpu_count=resources.gpuCount,
        gpu_type=resources.gpuType,
        machine_type=resources.machineType,
        labels={TEMPLATE_LABEL: template_hash(spec)},
        secret_env=frozenset(var.name for var in spec.env if is_secret_ref(var.value)),
    )
