"""`berth render`: the Kubernetes objects berth would apply for a spec, without a cluster or an API.

The workload comes from the scheduler's own render (services/scheduler/render.py) and the objects from
the runtime's makers (libs/runtime/kubernetes/resources.py), so what is printed is what the kubernetes
runtime applies. Secret values are not read: the Secret's data holds a placeholder naming the secret.
"""

from __future__ import annotations

from pathlib import Path

from libs.events import SpecApplied
from libs.runtime.kubernetes.machines import load_machine_types
from libs.runtime.kubernetes.resources import Manifest, manifests
from libs.spec import DeploymentSpec, is_secret_ref, secret_name
from services.scheduler.render import ResolvedEnv, render, resolve_env, resolve_integration_secrets

OFFLINE_ID = "offline"


class PlaceholderSecrets:
    """Stands in for the registry's secrets: names the secret instead of reading it."""

    async def resolve(self, project: str, value: str) -> str:
        return f"<secret {secret_name(value)} of project {project}>" if is_secret_ref(value) else value


async def render_manifests(
    spec: DeploymentSpec, *, project: str, namespace: str, machine_types: Path | None = None
) -> list[Manifest]:
    """The objects of the spec's revision at its replicas (0 when not enabled)."""
    env: ResolvedEnv = await resolve_env(spec, project, PlaceholderSecrets())
    applied = SpecApplied(
        deployment_id=OFFLINE_ID, project=project, slug=spec.slug, name=spec.name,
        spec_id=OFFLINE_ID, spec_version=1, spec=spec,
    )
    credentials = await resolve_integration_secrets(spec, project, PlaceholderSecrets())
    workload = render(applied, env, spec.resources.replicas if spec.enabled else 0, integration_secrets=credentials)
    return manifests(workload, namespace, load_machine_types(machine_types))
