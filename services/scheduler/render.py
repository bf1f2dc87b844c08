"""What the scheduler asks the runtime to run for a revision: a pure function of the spec.

The reconciler (reconcile.py) decides *when* to create, scale or remove a workload; this module only
says *what* the workload is. A workload is one revision's replica set (`libs.revision.revision_id`):
spec versions that share a template share the workload, so a change of replicas, `enabled`,
autoscaling, the load balancer or the description keeps the running replicas; a change of command,
image, env, ports, resources, model or integrations is a new revision with a workload of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from libs.events import IntegrationsReady, SpecApplied
from libs.revision import revision_id
from libs.runtime.base import Mount, Workload
from libs.secrets import SecretNotFound
from libs.spec import CREDENTIAL_FIELDS, DeploymentSpec, is_secret_ref, secret_name

REVISION_LABEL = "berth.dev/revision"
# Workloads written before revisions carried their template hash (the same hash) under this label.
LEGACY_TEMPLATE_LABEL = "berth.dev/template"
MAX_NAME = 63
MODEL_ID_ENV = "BERTH_MODEL_ID"
MODEL_VERSION_ENV = "BERTH_MODEL_VERSION"


class RenderError(Exception):
    """The spec cannot become a workload (e.g. a secret it refers to is missing). Never holds a value.
    Terminal: retrying does not help until something else changes (the periodic resync looks again)."""


class SecretResolver(Protocol):
    async def resolve(self, project: str, value: str) -> str: ...


@dataclass(frozen=True)
class ResolvedEnv:
    values: dict[str, str]  # never logged
    secret_names: frozenset[str]  # entries whose values came from `secret:` references


def workload_name(project: str, slug: str, revision: str) -> str:
    """`{project}-{slug}-{revision}`, a DNS-1123 label: the slug is cut to fit 63 characters."""
    suffix = f"-{revision.lower()}"
    return f"{project}-{slug}"[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def revision_of(workload: Workload) -> str:
    return workload.revision_id or workload.labels.get(LEGACY_TEMPLATE_LABEL, "")


async def resolve_env(spec: DeploymentSpec, project: str, secrets: SecretResolver) -> ResolvedEnv:
    env: dict[str, str] = {}
    for var in spec.env:
        try:
            env[var.name] = await secrets.resolve(project, var.value)
        except SecretNotFound:
            raise RenderError(
                f"env {var.name} refers to secret {secret_name(var.value)!r}, "
                f"which project {project!r} does not have"
            ) from None
    if spec.model is not None:  # the model server learns what it serves without parsing the spec
        env[MODEL_ID_ENV], env[MODEL_VERSION_ENV] = spec.model.id, spec.model.version
    return ResolvedEnv(env, frozenset(v.name for v in spec.env if is_secret_ref(v.value)))


async def resolve_integration_secrets(spec: DeploymentSpec, project: str, secrets: SecretResolver) -> dict[str, str]:
    """secret name -> value of every secret the integrations' credentials name. Only for a runtime whose
    replicas fetch their integrations themselves (kubernetes); elsewhere the integrations service
    unseals them for its own fetch."""
    values: dict[str, str] = {}
    for index, integration in enumerate(spec.integrations):
        for field in CREDENTIAL_FIELDS:
            value = getattr(integration, field, None)
            if not isinstance(value, str) or not is_secret_ref(value):
                continue
            try:
                values[secret_name(value)] = await secrets.resolve(project, value)
            except SecretNotFound:
                raise RenderError(
                    f"integrations[{index}].{field} refers to secret {secret_name(value)!r}, "
                    f"which project {project!r} does not have"
                ) from None
    return values


def render(
    applied: SpecApplied,
    env: ResolvedEnv,
    replicas: int,
    integrations: IntegrationsReady | None = None,
    integration_secrets: dict[str, str] | None = None,
) -> Workload:
    """The workload of the revision `applied` runs, at `replicas` (the composed desired count), with
    its integrations' content where the integrations service put it, and their spec (secret
    references only) with, for a runtime whose replicas fetch, the secrets' values."""
    spec = applied.spec
    resources = spec.resources
    revision = revision_id(spec)
    return Workload(
        name=workload_name(applied.project, applied.slug, revision),
        deployment_id=applied.deployment_id,
        project=applied.project,
        slug=applied.slug,
        spec_id=applied.spec_id,
        replicas=replicas,
        command=tuple(spec.command or ()),
        image=spec.image,
        env=env.values,
        ports=tuple(resources.ports),
        cpu=resources.cpu,
        memory_gb=resources.memory,
        gpu_count=resources.gpuCount,
        gpu_type=resources.gpuType,
        machine_type=resources.machineType,
        labels={REVISION_LABEL: revision},
        revision_id=revision,
        secret_env=env.secret_names,
        container_registry=spec.containerRegistry,
        health_checks=spec.healthChecks.model_dump(exclude_defaults=True),
        mounts=tuple(
            Mount(i.name, i.mount, i.local_path, i.read_only) for i in (integrations.integrations if integrations else ())
        ),
        integrations=tuple(i.model_dump(mode="json", exclude_none=True) for i in spec.integrations),
        integration_secrets=dict(integration_secrets or {}),
    )
