"""The Kubernetes objects of one workload: pure functions from a `Workload` to manifests (plain dicts).

Like Knative's `pkg/reconciler/*/resources` makers, nothing here talks to a cluster: the adapter
(runtime.py) applies what these return, and `berth render` prints it. One workload (one revision's
replica set) is:

- an `apps/v1` Deployment named after the workload. Its selector is the single label
  `berth.dev/workload=<workload name>`; workload names are unique (project, slug and revision), so no
  two berth Deployments select each other's Pods. The Pod template carries only what defines the
  revision: a new spec version that changes replicas only (or `spec_id`) does not roll the Pods.
- a `v1` Secret of the same name, only when env entries come from secrets: those entries reach the
  container through `secretKeyRef`, so their values are in no other object (not in the Deployment, not
  in an annotation).

No Service: the router sends requests to ready Pods by Pod IP (as Knative's activator does with
EndpointSlices), so a readiness change takes effect without waiting for kube-proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from libs.runtime.base import Workload
from libs.runtime.kubernetes.machines import MachineTable
from libs.spec import HealthChecks, Probe

Manifest = dict[str, Any]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "berth"
WORKLOAD_LABEL = "berth.dev/workload"
DEPLOYMENT_ID_LABEL = "berth.dev/deployment-id"
PROJECT_LABEL = "berth.dev/project"
SLUG_LABEL = "berth.dev/slug"
REVISION_LABEL = "berth.dev/revision"
SPEC_ID_ANNOTATION = "berth.dev/spec-id"
# A digest of the Deployment as berth renders it (no secret value is in it): equal digests mean
# nothing to write, so a resync with nothing changed makes no write (replicas go through /scale).
APPLIED_ANNOTATION = "berth.dev/applied"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER_NAME = "model"
PROBE_FIELDS = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def selector(workload: Workload) -> dict[str, str]:
    return {WORKLOAD_LABEL: workload.name}


def labels(workload: Workload) -> dict[str, str]:
    """Labels on the Deployment, its Pods and its Secret (the values are DNS labels or hex ids)."""
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        WORKLOAD_LABEL: workload.name,
        DEPLOYMENT_ID_LABEL: workload.deployment_id,
        PROJECT_LABEL: workload.project,
        SLUG_LABEL: workload.slug,
        REVISION_LABEL: workload.revision_id,
    }


def secret_key(env_name: str) -> str:
    """The Secret data key of an env entry: its name when Kubernetes allows it, else a digest of it."""
    if _SECRET_KEY.match(env_name) and len(env_name) <= 253:
        return env_name
    return "env-" + hashlib.sha256(env_name.encode()).hexdigest()[:16]


def secret(workload: Workload, namespace: str) -> Manifest | None:
    """The Secret holding the workload's secret env values, or None when it has none."""
    names = [name for name in workload.env if name in workload.secret_env]
    if not names:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": workload.name, "namespace": namespace, "labels": labels(workload)},
        "type": "Opaque",
        "data": {secret_key(n): base64.b64encode(workload.env[n].encode()).decode() for n in names},
    }


def env(workload: Workload) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, value in workload.env.items():
        if name in workload.secret_env:
            ref = {"name": workload.name, "key": secret_key(name)}
            out.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": name, "value": value})
    return out


def quantity_cpu(cores: float) -> str:
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def quantity_memory(gigabytes: float) -> str:
    # The spec's memory is in GB (decimal); Kubernetes' G and M suffixes are decimal too.
    return f"{int(gigabytes)}G" if float(gigabytes).is_integer() else f"{round(gigabytes * 1000)}M"


def gpu_count(workload: Workload, machines: MachineTable) -> int:
    if workload.gpu_count:
        return workload.gpu_count
    machine = machines.get(workload.machine_type or "") or machines.get(workload.gpu_type or "")
    return machine.gpuCount if machine else 0


def node_selector(workload: Workload, machines: MachineTable) -> dict[str, str]:
    """machineType's selector, then gpuType's (a spec may name both: machineType wins on a clash)."""
    selected: dict[str, str] = {}
    for name in (workload.gpu_type, workload.machine_type):
        if name and name in machines:
            selected.update(machines[name].nodeSelector)
    return selected


def unknown_machine_types(workload: Workload, machines: MachineTable) -> list[str]:
    return [n for n in (workload.machine_type, workload.gpu_type) if n and n not in machines]


def resources(workload: Workload, machines: MachineTable) -> dict[str, dict[str, str]]:
    """Requests equal limits (Guaranteed QoS for what the spec names); GPUs are limits only, as the
    device plugin requires (requests of an extended resource default to its limit)."""
    amounts: dict[str, str] = {}
    if workload.cpu is not None:
        amounts["cpu"] = quantity_cpu(workload.cpu)
    if workload.memory_gb is not None:
        amounts["memory"] = quantity_memory(workload.memory_gb)
    out: dict[str, dict[str, str]] = {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}
    if gpus := gpu_count(workload, machines):
        out.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
    return out


def probe(spec: Probe, default_port: int) -> dict[str, Any]:
    """A spec probe as a core/v1 Probe, field for field (the spec's names and defaults are Kubernetes')."""
    get: dict[str, Any] = {"path": spec.path, "port": spec.port or default_port, "scheme": "HTTP"}
    if spec.headers:
        get["httpHeaders"] = [{"name": h.name, "value": h.value} for h in spec.headers]
    return {"httpGet": get, **{name: getattr(spec, name) for name in PROBE_FIELDS}}


def probes(checks: dict[str, Any] | None, default_port: int) -> dict[str, Any]:
    """The workload's health checks (the spec's JSON, validated again here for its defaults)."""
    if not checks:
        return {}
    parsed = HealthChecks.model_validate(checks)
    return {f"{kind}Probe": probe(spec, default_port) for kind, spec in parsed.probes()}


def container(workload: Workload, machines: MachineTable) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": workload.image,
        "ports": [{"containerPort": p, "protocol": "TCP"} for p in workload.ports],
    }
    if workload.command:
        c["command"] = list(workload.command)
    if workload.env:
        c["env"] = env(workload)
    if res := resources(workload, machines):
        c["resources"] = res
    c.update(probes(workload.health_checks, workload.ports[0]))
    return c


def pod_spec(workload: Workload, machines: MachineTable) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(workload, machines)],
        # A model server needs neither the API nor a variable per Service of the namespace.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if workload.container_registry:
        spec["imagePullSecrets"] = [{"name": workload.container_registry}]
    if selected := node_selector(workload, machines):
        spec["nodeSelector"] = selected
    if gpu_count(workload, machines):
        # GPU node pools are commonly tainted so that only GPU workloads land there.
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def deployment(workload: Workload, namespace: str, machines: MachineTable) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload.name,
            "namespace": namespace,
            "labels": labels(workload),
            "annotations": {SPEC_ID_ANNOTATION: workload.spec_id},
        },
        "spec": {
            "replicas": workload.replicas,
            "selector": {"matchLabels": selector(workload)},
            # A berth revision is a workload of its own; the ReplicaSet history would only repeat it.
            "revisionHistoryLimit": 0,
            "template": {"metadata": {"labels": labels(workload)}, "spec": pod_spec(workload, machines)},
        },
    }
    manifest["metadata"]["annotations"][APPLIED_ANNOTATION] = applied_digest(manifest)
    return manifest


def applied_digest(manifest: Manifest) -> str:
    """Digest of the Deployment without its replicas and this annotation."""
    spec = {k: v for k, v in manifest["spec"].items() if k != "replicas"}
    meta = {**manifest["metadata"], "annotations": {
        k: v for k, v in manifest["metadata"].get("annotations", {}).items() if k != APPLIED_ANNOTATION
    }}
    return hashlib.sha256(json.dumps([meta, spec], sort_keys=True).encode()).hexdigest()[:16]


def manifests(workload: Workload, namespace: str, machines: MachineTable) -> list[Manifest]:
    """Every object of the workload, in apply order (the Secret before the Pods that read it)."""
    s = secret(workload, namespace)
    return ([s] if s else []) + [deployment(workload, namespace, machines)]
