"""The kubernetes runtime against kmock's Kubernetes emulator over real HTTP, with the official client
(tests/kube.py says what the emulator does and does not emulate)."""

from __future__ import annotations

import asyncio
import dataclasses
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import kmock
import pytest

from libs.config import Settings
from libs.runtime import make_runtime
from libs.runtime.base import Mount, Replica, ReplicaNotFound, Workload
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from tests.helpers import eventually
from tests.kube import APPLY, Cluster, Kubelet, cluster, crash_looping, running, terminated  # noqa: F401

SECRET = "hunter2-very-secret-value"
DEPLOYMENTS = "apps/v1/deployments"
SECRETS = "v1/secrets"
PODS = "v1/pods"


def workload(revision: str = "0123456789abcdef", **overrides: object) -> Workload:
    fields: dict[str, object] = dict(
        name=f"team-model-{revision}", deployment_id="dep-1", project="team", slug="model", spec_id="spec-1",
        replicas=2, command=("python", "-m", "server"), image="ghcr.io/acme/model:1",
        env={"PLAIN": "1", "TOKEN": SECRET}, secret_env=frozenset({"TOKEN"}), ports=(8080,),
        revision_id=revision, labels={"berth.dev/revision": revision},
        health_checks={"readiness": {"path": "/ready"}},
    )
    fields.update(overrides)
    return Workload(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(cluster: Cluster) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig)
    await rt.start()
    yield rt
    await rt.close()


def writes(cluster: Cluster) -> list[tuple[str, str]]:
    return [(r.method.value, r.url.path) for r in cluster.requests() if r.method.value in ("POST", "PATCH", "PUT", "DELETE")]


async def test_apply_writes_the_deployment_and_secret_by_server_side_apply(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    w = workload()
    await runtime.apply(w)
    dep = cluster.objects(DEPLOYMENTS)[w.name]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == {"matchLabels": {"berth.dev/workload": w.name}}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == w.image and c["command"] == list(w.command)
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080, "scheme": "HTTP"}
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": w.name, "key": "TOKEN"}}} in c["env"]
    secret = cluster.objects(SECRETS)[w.name]
    assert base64.b64decode(secret["data"]["TOKEN"]).decode() == SECRET
    applies = [r for r in cluster.requests() if r.method.value == "PATCH"]
    assert {r.url.path for r in applies} == {
        f"/apis/apps/v1/namespaces/models/deployments/{w.name}", f"/api/v1/namespaces/models/secrets/{w.name}"}
    for r in applies:
        assert r.headers["Content-Type"].startswith(APPLY)
        assert r.params["fieldManager"] == "berth" and r.params["force"] == "true"


async def test_nothing_changed_means_no_write_and_replicas_go_through_scale(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    w = workload()
    await runtime.apply(w)
    before = len(writes(cluster))
    await runtime.apply(w)
    assert len(writes(cluster)) == before  # a resync with nothing to do writes nothing
    await runtime.apply(replace(w, replicas=5))
    assert writes(cluster)[before:] == [("PATCH", f"/apis/apps/v1/namespaces/models/deployments/{w.name}/scale")]
    assert cluster.objects(DEPLOYMENTS)[w.name]["spec"]["replicas"] == 5
    # stop / start: the same workload at 0, then back
    await runtime.apply(replace(w, replicas=0))
    assert cluster.objects(DEPLOYMENTS)[w.name]["spec"]["replicas"] == 0
    await runtime.apply(w)
    assert cluster.objects(DEPLOYMENTS)[w.name]["spec"]["replicas"] == 2
    assert [x.replicas for x in await runtime.workloads()] == [2]


async def test_a_new_revision_is_a_second_deployment_and_delete_is_foreground(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    old, new = workload(), workload("fedcba9876543210", image="ghcr.io/acme/model:2")
    await runtime.apply(old)
    await runtime.apply(new)
    assert set(cluster.objects(DEPLOYMENTS)) == {old.name, new.name}
    held = {w.name: w for w in await runtime.workloads()}
    assert held[new.name].revision_id == "fedcba9876543210" and held[new.name].image == "ghcr.io/acme/model:2"
    assert held[old.name].spec_id == "spec-1" and held[old.name].secret_env == {"TOKEN"}
    await runtime.delete(old.name)
    assert set(cluster.objects(DEPLOYMENTS)) == {new.name} and set(cluster.objects(SECRETS)) == {new.name}
    deletes = [r for r in cluster.requests() if r.method.value == "DELETE"]
    assert all(r.data["propagationPolicy"] == "Foreground" for r in deletes)
    await runtime.delete(old.name)  # already gone: done, no error


async def test_pod_status_reaches_replicas(cluster: Cluster, runtime: KubernetesRuntime) -> None:
    w = workload()
    await runtime.apply(w)
    kubelet = Kubelet(cluster)
    ready, unready, looping, oom = await kubelet.run(w.name, 4)
    await kubelet.report(unready, running(ready=False))
    await kubelet.report(looping, crash_looping(restarts=3, exit_code=1, reason="Error"))
    await kubelet.report(oom, terminated(exit_code=137, reason="OOMKilled"))
    got = {r.replica_id: r for r in await runtime.replicas(w.name)}
    pod_ip = cluster.objects(PODS)[ready]["status"]["podIP"]
    assert (got[ready].state, got[ready].ready, got[ready].host, got[ready].ports) == ("running", True, pod_ip,
                                                                                       {8080: 8080})
    assert (got[unready].state, got[unready].ready) == ("running", False)
    assert (got[looping].state, got[looping].restart_count, got[looping].last_exit_code) == ("backoff", 3, 1)
    assert got[looping].reason == "CrashLoopBackOff (Error)"
    assert (got[oom].state, got[oom].last_exit_code, got[oom].reason) == ("exited", 137, "OOMKilled")
    assert {r.revision_id for r in got.values()} == {w.revision_id}
    assert {r.spec_id for r in got.values()} == {"spec-1"} and {r.deployment_id for r in got.values()} == {"dep-1"}
    assert await runtime.replicas("team-model-ffffffffffffffff") == []


async def test_the_watch_turns_pod_changes_into_replica_events(cluster: Cluster, runtime: KubernetesRuntime) -> None:
    seen: list[tuple[str, str, int | None]] = []

    async def hook(kind: str, replica: Replica, code: int | None) -> None:
        seen.append((kind, replica.replica_id, code))

    runtime.on_replica_event = hook
    w = workload()
    await runtime.apply(w)
    kubelet = Kubelet(cluster)
    (pod,) = await kubelet.run(w.name)
    await eventually(lambda: ("started", pod, None) in seen, what="started")
    await kubelet.report(pod, running(restarts=1, last={"exitCode": 137, "reason": "OOMKilled"}))
    await eventually(lambda: ("exited", pod, 137) in seen, what="exited after a restart")
    assert seen.count(("started", pod, None)) == 2  # it runs again
    await kubelet.remove(pod)
    await eventually(lambda: any(k == "stopped" and p == pod for k, p, _ in seen), what="stopped")


async def test_restart_deletes_the_pod_and_logs_come_from_the_api(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    w = workload()
    await runtime.apply(w)
    (pod,) = await Kubelet(cluster).run(w.name)
    cluster.emulator[f"get /api/v1/namespaces/models/pods/{pod}/log"] << b"one\ntwo\nthree\n"
    assert await runtime.logs(pod, tail=2) == ["two", "three"]
    log_request = [r for r in cluster.requests() if r.url.path.endswith("/log")][-1]
    assert log_request.params["tailLines"] == "2" and log_request.params["container"] == "model"
    await runtime.restart(pod)
    assert pod not in cluster.objects(PODS)
    with pytest.raises(ReplicaNotFound):
        await runtime.restart(pod)


async def test_a_restarted_runtime_adopts_what_exists_without_writing(cluster: Cluster) -> None:
    first = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig)
    await first.start()
    w = workload()
    await first.apply(w)
    await first.close()
    before = len(writes(cluster))
    second = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig)
    await second.start()
    try:
        (adopted,) = await second.workloads()
        assert (adopted.name, adopted.revision_id, adopted.replicas, adopted.spec_id) == (w.name, w.revision_id, 2,
                                                                                          "spec-1")
        await second.apply(w)
        assert len(writes(cluster)) == before  # adopted, not duplicated or rewritten
    finally:
        await second.close()


async def test_no_secret_value_outside_the_secret(
    cluster: Cluster, runtime: KubernetesRuntime, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    w = workload()
    await runtime.apply(w)
    await Kubelet(cluster).run(w.name, 2)
    await runtime.apply(replace(w, replicas=3))
    await runtime.replicas()
    await runtime.delete(w.name)
    encoded = base64.b64encode(SECRET.encode()).decode()
    for req in cluster.requests():
        if "/secrets/" not in req.url.path:
            assert SECRET not in req.text and encoded not in req.text, req.url.path
    for plural in (DEPLOYMENTS, PODS):
        assert SECRET not in json.dumps(cluster.objects(plural))
    out = capsys.readouterr()
    assert SECRET not in caplog.text + out.out + out.err


async def test_make_runtime_picks_kubernetes_from_settings(cluster: Cluster) -> None:
    settings = Settings(runtime="kubernetes", kubeconfig=cluster.kubeconfig, kubernetes_namespace="models",
                        kubernetes_integrations_image="reg.example/berth:3")  # fmt: skip
    rt = make_runtime(settings)
    assert isinstance(rt, KubernetesRuntime) and rt.namespace == "models"
    assert rt.fetch_image == "reg.example/berth:3" and rt.fetches_integrations
    assert rt.not_provided(workload(machine_type="H100")) == [
        "machineType H100 is not in the machine type table (docs/kubernetes.md)"]
    assert rt.not_provided(workload(machine_type="A100-80G")) == []
    with_integration = dataclasses.replace(workload(), mounts=(Mount("falcon", "/models/falcon", ""),))
    assert rt.not_provided(with_integration) == []  # an init container fetches them into the Pod
    await asyncio.sleep(0)


async def test_a_410_gone_watch_lists_again_and_sees_what_changed_meanwhile(cluster: Cluster) -> None:
    # The first watch answers 410 Gone (its resourceVersion is too old); a Pod appears before the
    # runtime lists again, and only the new list can show it.
    w = workload()
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                       "reason": "Expired", "message": "too old resource version"}}
    cluster.emulator[kmock.action.WATCH, kmock.resource("v1/pods")][:1] << iter([gone])
    rt = KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig)
    started: list[str] = []

    async def hook(kind: str, replica: Replica, code: int | None) -> None:
        if kind == "started":
            started.append(replica.replica_id)

    rt.on_replica_event = hook
    await rt.start()
    try:
        await rt.apply(w)
        (pod,) = await Kubelet(cluster).run(w.name)
        await eventually(lambda: pod in started, what="the pod seen after the re-list")
        watch_requests = [r for r in cluster.requests() if r.params.get("watch") == "true"]
        lists = [r for r in cluster.requests() if r.url.path.endswith("/pods") and "watch" not in r.params
                 and r.method.value == "GET"]
        # replicas() in start(), the watch's first list, and the list after 410 (not a bare re-watch)
        assert len(watch_requests) >= 2 and len(lists) >= 3
    finally:
        await rt.close()


async def test_usage_comes_from_metrics_k8s_io_and_is_none_without_it(
    cluster: Cluster, runtime: KubernetesRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    w = workload(cpu=0.5, memory_gb=1.0)
    await runtime.apply(w)
    with_metrics, without = await Kubelet(cluster).run(w.name, 2)
    cluster.emulator[f"get /apis/metrics.k8s.io/v1beta1/namespaces/models/pods/{with_metrics}"] << {
        "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": with_metrics, "namespace": "models"}, "timestamp": "2026-01-01T00:00:00Z",
        "window": "15s", "containers": [{"name": "model", "usage": {"cpu": "250m", "memory": "250M"}}],
    }
    usage = await runtime.usage(with_metrics)
    assert usage is not None
    # of what the Pod requests: 250m of 500m cores, 250 MB of 1 GB
    assert (usage.cpu_percent, usage.memory_percent, usage.memory_bytes) == (50.0, 25.0, 250_000_000)
    assert await runtime.usage(without) is None


async def test_scale_down_marks_the_newest_pods_to_go_first(cluster: Cluster, runtime: KubernetesRuntime) -> None:
    w = workload(replicas=3)
    await runtime.apply(w)
    oldest, middle, newest = await Kubelet(cluster).run(w.name, 3)  # created one second apart
    await runtime.apply(replace(w, replicas=1))
    pods = cluster.objects(PODS)
    cost = {name: (pods[name]["metadata"].get("annotations") or {}).get("controller.kubernetes.io/pod-deletion-cost")
            for name in (oldest, middle, newest)}
    assert cost == {oldest: None, middle: "-1000", newest: "-1000"}
    assert cluster.objects(DEPLOYMENTS)[w.name]["spec"]["replicas"] == 1
