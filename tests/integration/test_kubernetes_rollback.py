"""Re-applying a revision on the kubernetes runtime changes nothing of what it runs: the real scheduler
(real nats-server) against the emulator. An update whose Pod crash-loops is rolled back to the previous
revision, which regains the desired count; by the same scheduler, or by a new one that adopted the
Deployments after a restart. The previous revision's Deployment keeps the template it was created
with (probes, resources, init container, volumes, secretKeyRefs) and its Secret its values: the
scheduler renders a revision from its spec (the spec events on BERTH_SPECS hold every version), never
from the Deployment it reads back, which holds none of those in full.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext

from libs.bus import publish
from libs.config import Settings
from libs.events import IntegrationsReady, MaterialisedIntegration, SpecApplied
from libs.revision import revision_id
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec
from services.scheduler import SchedulerHandle, start_scheduler
from tests.helpers import eventually
from tests.integration.test_scheduler_replicas import DEPLOYMENT, Bus, bus, echo_spec, scheduler_settings  # noqa: F401
from tests.kube import Cluster, Kubelet, cluster, crash_looping  # noqa: F401

DEPLOYMENTS = "apps/v1/deployments"
API_KEY = "api-key-" + "k" * 24
S3_KEY = "s3-secret-" + "s" * 24


# One old Pod goes before a new one starts: the previous revision is scaled down during the update,
# and a rollback scales it up again.
ONE_BY_ONE = {"type": "rolling", "maxSurge": 0, "maxUnavailable": 1}


def model_spec(image: str) -> DeploymentSpec:
    return echo_spec(
        replicas=2, image=image, updateStrategy=ONE_BY_ONE,
        env=[{"name": "API_KEY", "value": "secret:apiKey"}, {"name": "MODE", "value": "fast"}],
        resources={"ports": [8000], "replicas": 2, "cpu": 2, "memory": 4},
        healthChecks={"readiness": {"path": "/ready", "periodSeconds": 3}, "liveness": {"path": "/live"}},
        integrations=[
            {"type": "s3", "name": "iris", "path": "/data/", "url": "s3://models/iris", "region": "us-east-1",
             "endpointUrl": "http://s3.example", "accessKeyId": "AKIA0000", "secretAccessKey": "secret:s3key"},
            {"type": "volume", "name": "datasets", "path": "/datasets/", "claimName": "datasets"},
        ],
    )  # fmt: skip


async def integrations_ready(bus: Bus, applied: SpecApplied) -> None:  # noqa: F811
    """What the integrations service says once a revision's integrations are there."""
    spec = applied.spec
    contents = [MaterialisedIntegration(name=i.name, type=i.type, mount=i.mount, identity="x", local_path="/cache/x")
                for i in spec.integrations]  # fmt: skip
    await publish(bus.broker, IntegrationsReady(
        deployment_id=DEPLOYMENT, project="default", slug=spec.slug, revision_id=revision_id(spec),
        spec_version=applied.spec_version, integrations=contents,
    ))  # fmt: skip


def deployment_of(cluster: Cluster, revision: str) -> dict[str, Any] | None:  # noqa: F811
    return next((d for d in cluster.objects(DEPLOYMENTS).values()
                 if d["metadata"]["labels"].get("berth.dev/revision") == revision), None)  # fmt: skip


def secret_values(cluster: Cluster, name: str) -> dict[str, str]:  # noqa: F811
    secret = cluster.objects("v1/secrets")[name]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.fixture
async def start(scheduler_settings: Settings, cluster: Cluster) -> AsyncIterator[Any]:  # noqa: F811
    """Starts schedulers on the kubernetes runtime; each is stopped (leaving its Pods) at the end."""
    handles: list[SchedulerHandle] = []

    async def started() -> SchedulerHandle:
        runtime = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig, fetch_image="reg.example/berth:1")
        handles.append(await start_scheduler(scheduler_settings, runtime))
        return handles[-1]

    yield started
    for handle in handles:
        await handle.stop()


@pytest.mark.parametrize("restarted", [False, True], ids=["same-scheduler", "after-a-restart"])
async def test_a_rollback_reapplies_the_previous_revision_exactly_as_it_was_created(
    start: Any, bus: Bus, cluster: Cluster, js: JetStreamContext, restarted: bool,  # noqa: F811
) -> None:
    store = await SecretStore.open(js)
    await store.put("default", "apiKey", API_KEY)
    await store.put("default", "s3key", S3_KEY)
    scheduler = await start()
    first = await bus.apply(model_spec("python:3.11"))
    await integrations_ready(bus, first)
    stable = revision_id(first.spec)
    created = await eventually(lambda: deployment_of(cluster, stable), what="the first revision's Deployment")
    name = created["metadata"]["name"]
    template = created["spec"]["template"]
    pod = template["spec"]
    # What the read-back cannot hold, so that comparing templates below means something.
    assert pod["initContainers"] and pod["volumes"] and pod["containers"][0]["readinessProbe"]
    assert pod["containers"][0]["resources"]["requests"]["cpu"]
    assert any("secretKeyRef" in e.get("valueFrom", {}) for e in pod["containers"][0]["env"])
    secrets = await eventually(lambda: name in cluster.objects("v1/secrets") and secret_values(cluster, name),
                               what="the Secret")  # fmt: skip
    assert API_KEY in secrets.values() and S3_KEY in secrets.values()
    kubelet = Kubelet(cluster)
    await kubelet.run(name, 2)
    await bus.phase("Ready")

    update = await bus.apply(model_spec("python:3.12"))
    await integrations_ready(bus, update)
    await eventually(lambda: deployment_of(cluster, stable)["spec"]["replicas"] == 1, what="the old one scaled to 1")
    assert deployment_of(cluster, stable)["spec"]["template"] == template  # a count alone changes no template
    leaving = await eventually(lambda: next((p for p, o in cluster.objects("v1/pods").items()
                                             if o["metadata"].get("annotations")), None), what="the Pod marked to go")  # fmt: skip
    await kubelet.remove(leaving)  # as its ReplicaSet would; then the new revision may start one
    new = await eventually(lambda: deployment_of(cluster, revision_id(update.spec)), what="the update's Deployment")
    if restarted:
        await scheduler.stop()  # its Deployments and Pods stay; the next scheduler adopts them
        await start()
    (crashing,) = await kubelet.run(new["metadata"]["name"], 1)
    await kubelet.report(crashing, crash_looping(restarts=3, exit_code=1, reason="Error"))

    await bus.phase("Degraded", rolled_back_version=update.spec_version)
    await eventually(lambda: deployment_of(cluster, revision_id(update.spec)) is None, what="the update removed")
    restored = deployment_of(cluster, stable)
    assert restored is not None and restored["spec"]["replicas"] == 2
    assert restored["spec"]["template"] == template
    assert secret_values(cluster, name) == secrets
