"""The real scheduler (real nats-server) on the kubernetes runtime against the emulator: a spec applied
on the bus becomes a Deployment; Pods the test reports (as the kubelet would) reach the deployment's
status, the read model of `berth deployments get`; scale, a new template, stop and delete act on the
Deployments. The Pods' Ready condition is the readiness: the scheduler turns it into health events and
the traffic assignment (the health-monitor, running too, stays idle on this runtime)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from libs.config import Settings
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from libs.events import ReplicaHealthChanged, TrafficAssigned
from libs.secrets import SecretStore
from services.health_monitor.app import start_health_monitor
from services.scheduler import SchedulerHandle, start_scheduler
from tests.helpers import eventually
from tests.integration.test_scheduler_replicas import DEPLOYMENT, Bus, bus, echo_spec, scheduler_settings  # noqa: F401
from tests.kube import Cluster, Kubelet, cluster, crash_looping, running  # noqa: F401

OOM = {"exitCode": 137, "reason": "OOMKilled"}

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


def serving(bus: Bus) -> set[str] | None:  # noqa: F811
    """The replicas of the newest traffic assignment (what the router's table holds)."""
    assignments = bus.of(TrafficAssigned)
    if not assignments:
        return None
    return {r.replica_id for target in assignments[-1].targets for r in target.replicas}


async def test_the_assignment_follows_the_pod_ready_condition(
    k8s_scheduler: SchedulerHandle, bus: Bus, cluster: Cluster, scheduler_settings: Settings  # noqa: F811
) -> None:
    monitor = await start_health_monitor(scheduler_settings.model_copy(update={"runtime": "kubernetes"}))
    try:
        await bus.apply(echo_spec(replicas=2))
        (name,) = (await eventually(lambda: berth_deployments(cluster), what="a Deployment")).keys()
        kubelet = Kubelet(cluster)
        first, second = await kubelet.run(name, 2)
        await eventually(lambda: serving(bus) == {first, second}, what="both Pods in the assignment")
        await bus.phase("Ready")

        await kubelet.report(second, running(ready=False))  # its readiness probe fails
        await eventually(lambda: serving(bus) == {first}, what="the not-ready Pod out of the assignment")
        await kubelet.report(second, running(ready=True))
        await eventually(lambda: serving(bus) == {first, second}, what="the Pod back in the assignment")

        # The kubelet restarted the container after it was OOM-killed, and backs off.
        await kubelet.report(second, crash_looping(restarts=3, exit_code=137, reason="OOMKilled"))
        await eventually(lambda: serving(bus) == {first}, what="the crash-looping Pod out of the assignment")
        status = await bus.phase("CrashLoopBackOff")
        (crashing,) = [r for r in status.replicas if r.replica_id == second]
        assert (crashing.state, crashing.restart_count, crashing.last_exit_code) == ("backoff", 3, 137)
        assert "CrashLoopBackOff (OOMKilled)" in status.reason and second in status.reason

        await kubelet.report(second, running(ready=True, restarts=3, last=OOM))  # up again after the back-off
        await eventually(lambda: serving(bus) == {first, second}, what="the restarted Pod serving again")
        await bus.phase("Ready")
        # The kubelet probed; berth did not: every health event is the scheduler's reading of a Pod.
        assert all(h.last_probe is None for h in bus.of(ReplicaHealthChanged))
    finally:
        await monitor.stop()
