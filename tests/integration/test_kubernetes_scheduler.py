"""The real scheduler (real nats-server) on the kubernetes runtime against the emulator: a spec applied
on the bus becomes a Deployment; Pods the test reports (as the kubelet would) reach the deployment's
status, the read model of `berth deployments get`; scale, a new template, stop and delete act on the
Deployments. No health-monitor runs here, so no replica becomes ready for traffic (that is the
health-monitor's part: docs/kubernetes.md, "Not done yet")."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from libs.config import Settings
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from libs.secrets import SecretStore
from services.scheduler import SchedulerHandle, start_scheduler
from tests.helpers import eventually
from tests.integration.test_scheduler_replicas import DEPLOYMENT, Bus, bus, echo_spec, scheduler_settings  # noqa: F401
from tests.kube import Cluster, Kubelet, cluster, crash_looping, running  # noqa: F401

DEPLOYMENTS = "apps/v1/deployments"


@pytest.fixture
async def k8s_scheduler(scheduler_settings: Settings, cluster: Cluster) -> AsyncIterator[SchedulerHandle]:  # noqa: F811
    runtime = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig)
    handle = await start_scheduler(scheduler_settings, runtime)
    yield handle
    await handle.stop()


def berth_deployments(cluster: Cluster) -> dict[str, dict]:  # noqa: F811
    return {n: d for n, d in cluster.objects(DEPLOYMENTS).items()
            if d["metadata"]["labels"].get("berth.dev/deployment-id") == DEPLOYMENT}


async def test_spec_to_deployment_pod_status_to_deployment_status(
    k8s_scheduler: SchedulerHandle, bus: Bus, cluster: Cluster  # noqa: F811
) -> None:
    await bus.apply(echo_spec(replicas=2))
    (name,) = (await eventually(lambda: berth_deployments(cluster), what="a Deployment")).keys()
    assert berth_deployments(cluster)[name]["spec"]["replicas"] == 2
    kubelet = Kubelet(cluster)
    healthy, crashing = await kubelet.run(name, 2)
    await kubelet.report(crashing, crash_looping(restarts=4, exit_code=137, reason="OOMKilled"))

    def pod_states() -> dict[str, tuple[str, int, int | None, str | None]] | None:
        status = bus.status()
        if status is None:
            return None
        seen = {r.replica_id: (r.state, r.restart_count, r.last_exit_code, r.address) for r in status.replicas}
        return seen if set(seen) == {healthy, crashing} and seen[crashing][0] == "backoff" else None

    states = await eventually(pod_states, what="the Pods in the deployment status")
    pod_ip = cluster.objects("v1/pods")[healthy]["status"]["podIP"]
    assert states[healthy][0] == "running" and states[healthy][3] == f"{pod_ip}:8000"
    assert states[crashing][:3] == ("backoff", 4, 137)

    await bus.apply(echo_spec(replicas=3))  # scale: the same Deployment
    await eventually(lambda: berth_deployments(cluster).get(name, {}).get("spec", {}).get("replicas") == 3,
                     what="scaled to 3")
    assert list(berth_deployments(cluster)) == [name]

    # A new template is a Deployment of its own (whether the old one stays while the new one has no
    # ready replica is the update strategy's business: services/scheduler/revisions.py).
    await bus.apply(echo_spec(replicas=3, image="python:3.12"))
    grown = await eventually(lambda: (d := berth_deployments(cluster)) and set(d) - {name} and d,
                             what="the new revision's Deployment")
    (new,) = set(grown) - {name}
    assert grown[new]["spec"]["template"]["spec"]["containers"][0]["image"] == "python:3.12"
    assert grown[new]["spec"]["replicas"] >= 1  # how fast it grows is the strategy's business too

    await kubelet.run(new, berth_deployments(cluster)[new]["spec"]["replicas"])  # its ReplicaSet's Pods
    await bus.apply(echo_spec(replicas=3, image="python:3.12", enabled=False))  # stop
    await eventually(lambda: berth_deployments(cluster).get(new, {}).get("spec", {}).get("replicas") == 0,
                     what="stopped: 0 replicas")
    await bus.delete()
    await eventually(lambda: not berth_deployments(cluster), what="every Deployment deleted")


async def test_a_secret_value_is_only_in_the_secret_object(
    k8s_scheduler: SchedulerHandle, bus: Bus, cluster: Cluster, js: JetStreamContext,  # noqa: F811
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    value = "s3cr3t-" + "x" * 24
    await (await SecretStore.open(js)).put("default", "apiKey", value)
    await bus.apply(echo_spec(replicas=1, env=[{"name": "API_KEY", "value": "secret:apiKey"}]))
    (name,) = (await eventually(lambda: berth_deployments(cluster), what="a Deployment")).keys()
    secret = await eventually(lambda: cluster.objects("v1/secrets").get(name), what="the Secret")
    assert base64.b64decode(secret["data"]["API_KEY"]).decode() == value
    (pod,) = await Kubelet(cluster).run(name, 1)
    await eventually(lambda: bus.status() is not None and bus.status().replicas, what="a status with the Pod")
    encoded = base64.b64encode(value.encode()).decode()
    everything_else = json.dumps([cluster.objects(p) for p in ("apps/v1/deployments", "v1/pods")])
    everything_else += json.dumps([e.model_dump(mode="json") for e in bus.events])
    everything_else += "".join(r.text for r in cluster.requests() if "/secrets/" not in r.url.path)
    out = capsys.readouterr()
    everything_else += caplog.text + out.out + out.err
    assert value not in everything_else and encoded not in everything_else
