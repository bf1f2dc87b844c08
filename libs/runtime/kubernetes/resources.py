"""The Kubernetes objects of one workload: pure functions from a `Workload` to manifests (plain dicts).

Like Knative's `pkg/reconciler/*/resources` makers, nothing here talks to a cluster: the adapter
(runtime.py) applies what these return, and `berth render` prints it. One workload (one revision's
replica set) is:

- an `apps/v1` Deployment named after the workload. Its selector is the single label
  `berth.dev/workload=<workload name>`; workload names are unique (project, slug and revision), so no
  two berth Deployments select each other's Pods. The Pod template carries only what defines the
  revision: a new spec version that changes replicas only (or `spec_id`) does not roll the Pods.
- a `v1` Secret of the same name, only when env entries or integration credentials come from secrets:
  they reach the containers through `secretKeyRef`, so their values are in no other object (not in the
  Deployment, not in an annotation).
- integrations: git-lfs and s3 ones are fetched by an init container (berth's own image, running
  `python -m services.integrations.fetch`) into an emptyDir that the model container mounts, one
  subPath per integration, read-only, at `<path>/<name>`; a volume is a PersistentVolumeClaim
  (`claimName`) or a hostPath volume, mounted there with the spec's readOnly.

No Service: the router sends requests to ready Pods by Pod IP (as Knative's activator does with
EndpointSlices), so a readiness change takes effect without waiting for kube-proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from libs.runtime.base import Workload
from libs.runtime.kubernetes.machines import MachineTable
from libs.spec import CREDENTIAL_FIELDS, HealthChecks, Probe

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
INIT_CONTAINER_NAME = "integrations"
# The emptyDir the init container fetches into, and where it sees it.
FETCH_VOLUME = "berth-integrations"
FETCH_DIR = "/berth/integrations"
FETCH_MODULE = "services.integrations.fetch"
FETCH_CONFIG_ENV = "BERTH_FETCH_INTEGRATIONS"  # services/integrations/fetch.py reads it
FETCH_SECRET_ENV = "BERTH_SECRET_"  # + index: the value of one secret the fetch needs
FETCHED_TYPES = ("git-lfs", "s3")
# The Secret data key of an integration's credential; env names taking this form are hashed instead.
INTEGRATION_SECRET_PREFIX = "berth.integration."
# The init container's image: berth's own, by default the tag of this version (the chart sets the
# image it is installed from: BERTH_KUBERNETES_INTEGRATIONS_IMAGE).
try:
    DEFAULT_FETCH_IMAGE = f"berth:{package_version('berth')}"
except PackageNotFoundError:  # run from a source tree that was not installed
    DEFAULT_FETCH_IMAGE = "berth:latest"
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
    if _SECRET_KEY.match(env_name) and len(env_name) <= 253 and not env_name.startswith(INTEGRATION_SECRET_PREFIX):
        return env_name
    return "env-" + hashlib.sha256(env_name.encode()).hexdigest()[:16]


def integration_secret_key(secret: str) -> str:
    """The Secret data key of a secret an integration's fetch needs (secret names are valid keys)."""
    return INTEGRATION_SECRET_PREFIX + secret


def fetched(workload: Workload) -> list[dict[str, Any]]:
    """The integrations the init container fetches (git-lfs, s3), as spec JSON."""
    return [i for i in workload.integrations if i.get("type") in FETCHED_TYPES]


def fetch_secrets(workload: Workload) -> list[str]:
    """Names of the secrets the fetch needs, sorted (the order gives their env variables)."""
    names = {
        value.removeprefix("secret:")
        for i in fetched(workload)
        for field in CREDENTIAL_FIELDS
        if isinstance(value := i.get(field), str) and value.startswith("secret:")
    }
    return sorted(names)


def secret(workload: Workload, namespace: str) -> Manifest | None:
    """The Secret holding the workload's secret env values and its integrations' credentials, or None
    when it has neither."""
    data = {
        secret_key(n): workload.env[n] for n in workload.env if n in workload.secret_env
    } | {integration_secret_key(n): workload.integration_secrets[n] for n in fetch_secrets(workload)
         if n in workload.integration_secrets}  # fmt: skip
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": workload.name, "namespace": namespace, "labels": labels(workload)},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
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


def _mount(integration: dict[str, Any]) -> str:
    return str(integration["path"]).rstrip("/") + "/" + str(integration["name"])


def integration_volumes(workload: Workload) -> list[dict[str, Any]]:
    """The Pod's volumes: one emptyDir for everything fetched, one per volume integration (named by
    its index: integration names may hold characters a volume name may not)."""
    out: list[dict[str, Any]] = [{"name": FETCH_VOLUME, "emptyDir": {}}] if fetched(workload) else []
    for index, i in enumerate(workload.integrations):
        if i.get("type") != "volume":
            continue
        read_only = bool(i.get("readOnly", True))
        if i.get("claimName"):
            source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": i["claimName"], "readOnly": read_only}}
        else:  # a directory of whichever node runs the Pod; it must exist there (type Directory)
            source = {"hostPath": {"path": i["hostPath"], "type": "Directory"}}
        out.append({"name": f"integration-{index}", **source})
    return out


def integration_mounts(workload: Workload) -> list[dict[str, Any]]:
    """The model container's mounts: each integration at `<path>/<name>`. Fetched content is read-only
    (replicas share nothing, but a server writing its model would hide a bad fetch); a volume follows
    the spec's readOnly."""
    out: list[dict[str, Any]] = []
    for index, i in enumerate(workload.integrations):
        if i.get("type") == "volume":
            out.append({"name": f"integration-{index}", "mountPath": _mount(i), "readOnly": bool(i.get("readOnly", True))})
        elif i.get("type") in FETCHED_TYPES:
            out.append({"name": FETCH_VOLUME, "mountPath": _mount(i), "subPath": i["name"], "readOnly": True})
    return out


def init_container(workload: Workload, image: str, machines: MachineTable) -> dict[str, Any] | None:
    """The container that fetches the git-lfs and s3 integrations before the model starts, or None.
    Its environment holds the integrations' spec (secret references only) and, per secret it needs, a
    `secretKeyRef` into the workload's Secret: no value is in the Pod spec."""
    items = fetched(workload)
    if not items:
        return None
    names = fetch_secrets(workload)
    variables = {name: f"{FETCH_SECRET_ENV}{index}" for index, name in enumerate(names)}
    config = json.dumps({"integrations": items, "secrets": variables}, sort_keys=True)
    env: list[dict[str, Any]] = [{"name": FETCH_CONFIG_ENV, "value": config}]
    env += [
        {"name": variables[n], "valueFrom": {"secretKeyRef": {"name": workload.name, "key": integration_secret_key(n)}}}
        for n in names
    ]
    container: dict[str, Any] = {
        "name": INIT_CONTAINER_NAME,
        "image": image,
        "command": ["python", "-m", FETCH_MODULE, FETCH_DIR],
        "env": env,
        "volumeMounts": [{"name": FETCH_VOLUME, "mountPath": FETCH_DIR}],
        # `kubectl describe pod` shows why a fetch failed (its last log line) without reading logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # The model's CPU and memory (no GPU): the Pod keeps its Guaranteed QoS (init containers count),
    # and asks for no more than before (its request is the larger of the init and the app containers').
    amounts = {kind: {k: v for k, v in values.items() if k != GPU_RESOURCE}
               for kind, values in resources(workload, machines).items()}  # fmt: skip
    if any(amounts.values()):
        container["resources"] = {kind: values for kind, values in amounts.items() if values}
    return container


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
    if mounts := integration_mounts(workload):
        c["volumeMounts"] = mounts
    return c


def pod_spec(workload: Workload, machines: MachineTable, fetch_image: str = DEFAULT_FETCH_IMAGE) -> dict[str, Any]:
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
    if (init := init_container(workload, fetch_image, machines)) is not None:
        spec["initContainers"] = [init]
    if volumes := integration_volumes(workload):
        spec["volumes"] = volumes
    if gpu_count(workload, machines):
        # GPU node pools are commonly tainted so that only GPU workloads land there.
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def deployment(
    workload: Workload, namespace: str, machines: MachineTable, fetch_image: str = DEFAULT_FETCH_IMAGE
) -> Manifest:
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
            "template": {"metadata": {"labels": labels(workload)}, "spec": pod_spec(workload, machines, fetch_image)},
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


def manifests(
    workload: Workload, namespace: str, machines: MachineTable, fetch_image: str = DEFAULT_FETCH_IMAGE
) -> list[Manifest]:
    """Every object of the workload, in apply order (the Secret before the Pods that read it)."""
    s = secret(workload, namespace)
    return ([s] if s else []) + [deployment(workload, namespace, machines, fetch_image)]
