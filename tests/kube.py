"""A Kubernetes API for tests: kmock's emulator over real HTTP on a free port, with a kubeconfig for
the official client, and a stand-in for the ReplicaSet controller and the kubelet (the test makes the
Pods and sets their status, as those would).

What kmock 0.8's `KubernetesEmulator` does and does not do (read from its source, kmock/_internal/k8s.py):
- every PATCH is a deep merge of the body into the stored object (dicts merged, lists replaced), so a
  server-side apply of a whole object updates it, and a PATCH of `/scale` merges `spec.replicas` into
  the Deployment; but a PATCH of a missing object is 404 - server-side apply cannot create. The
  subclass below creates on an apply to a missing object, as the API server does.
- no managedFields, no field ownership, no removal of fields the manager stopped applying.
- label selectors are ignored on list and watch (the adapter filters again by label).
- lists carry `resourceVersion: "..."`; objects get no resourceVersion, uid or creationTimestamp;
  a watch ignores `resourceVersion` and `timeoutSeconds` and begins with every object as ADDED; it
  never answers 410 Gone by itself (a test can script one).
- no controllers: no ReplicaSets, no Pods, no garbage collection (propagationPolicy is ignored);
  no pod logs unless a test declares a reaction for the `/log` path.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import kmock
import pytest
import yaml
from aiohttp.test_utils import RawTestServer
from kubernetes import client, config

APPLY = "application/apply-patch+yaml"
NAMESPACE = "models"
RESOURCES = {
    "apps/v1/deployments": kmock.ResourceInfo(kind="Deployment", namespaced=True, subresources={"scale", "status"}),
    "v1/pods": kmock.ResourceInfo(kind="Pod", namespaced=True, subresources={"log", "status"}),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True),
    "coordination.k8s.io/v1/leases": kmock.ResourceInfo(kind="Lease", namespaced=True),
}


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, creating on a server-side apply of a missing object (as the API server does)."""

    async def _handle(self, request: kmock.Request) -> Any:
        if (
            request.action == kmock.action.UPDATE
            and request.subresource is None
            and request.headers.get("Content-Type", "").startswith(APPLY)
        ):
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self.objects or self.objects[key].deleted:
                    # Create it as kmock's own create does; the merge that follows changes nothing.
                    if key in self.objects:
                        self.objects[key].create(request.data)
                    else:
                        self.objects[key] = request.data
                    added = {"type": "ADDED", "object": self.objects[key].last.raw}
                    await self._buses[request.resource].put(added)
        return await super()._handle(request)


@dataclass
class Cluster:
    emulator: ApiServerEmulator
    url: str
    kubeconfig: Path
    namespace: str = NAMESPACE

    def api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def objects(self, plural: str) -> dict[str, dict[str, Any]]:
        """Live objects of a resource (e.g. "apps/v1/deployments") by name, as stored."""
        resource = kmock.resource(plural)
        return {
            name: obj.raw for (res, _, name), obj in list(self.emulator.objects.items())
            if res == resource and not obj.deleted
        }

    def requests(self) -> list[kmock.Request]:
        return [req for req in list(self.emulator) if req.resource is not None]


def write_kubeconfig(path: Path, url: str, namespace: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": namespace}}],
        "current-context": "kmock",
    }))
    return path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The emulator on a free port of 127.0.0.1 and a kubeconfig pointing at it."""
    # aiohttp cancels a handler whose client went away only when asked to: without it, the watch
    # stream of a closed client would hold the server's shutdown (kmock's watch never ends by itself).
    server_cls = functools.partial(RawTestServer, handler_cancellation=True)
    async with ApiServerEmulator() as emulator, kmock.Server(emulator, server_cls=server_cls) as server:
        for name, info in RESOURCES.items():
            emulator.resources[name] = info
        url = str(server.url).rstrip("/")
        yield Cluster(emulator, url, write_kubeconfig(tmp_path / "kubeconfig", url, NAMESPACE))


_ips = itertools.count(10)


class Kubelet:
    """What the ReplicaSet controller and the kubelet would do: make a Deployment's Pods and report
    their container states, through the API (so the runtime's watch sees each change)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.core = client.CoreV1Api(cluster.api())

    async def run(self, deployment: str, count: int = 1, *, ready: bool = True) -> list[str]:
        dep = self.cluster.objects("apps/v1/deployments")[deployment]
        template = dep["spec"]["template"]
        names = []
        for i in range(count):
            name = f"{deployment}-{next(_ips)}"
            created = datetime.now(UTC) + timedelta(seconds=i)
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.cluster.namespace,
                             "labels": template["metadata"]["labels"],
                             "creationTimestamp": created.isoformat().replace("+00:00", "Z")},
                "spec": template["spec"],
                "status": running(ready),
            }
            pod["status"]["podIP"] = f"10.1.0.{next(_ips)}"
            await asyncio.to_thread(self.core.create_namespaced_pod, self.cluster.namespace, pod,
                                    _preload_content=False)
            names.append(name)
        return names

    async def report(self, pod: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(self.core.patch_namespaced_pod_status, pod, self.cluster.namespace,
                                {"status": status}, _preload_content=False)

    async def remove(self, pod: str) -> None:
        await asyncio.to_thread(self.core.delete_namespaced_pod, pod, self.cluster.namespace, _preload_content=False)


def condition(ready: bool) -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "True" if ready else "False"}]


def running(ready: bool = True, restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": condition(ready),
        "containerStatuses": [{
            "name": "model", "ready": ready, "restartCount": restarts, "image": "x", "imageID": "",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            "lastState": {"terminated": last} if last else {},
        }],
    }
    return status


def crash_looping(restarts: int, exit_code: int, reason: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "conditions": condition(False),
        "containerStatuses": [{
            "name": "model", "ready": False, "restartCount": restarts, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting"}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": reason}},
        }],
    }


def terminated(exit_code: int, reason: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "conditions": condition(False),
        "containerStatuses": [{
            "name": "model", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
            "lastState": {},
        }],
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
