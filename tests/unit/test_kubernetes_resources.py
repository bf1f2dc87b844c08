"""The manifests of the kubernetes runtime (libs/runtime/kubernetes/resources.py) and `berth render`.

Every object validates against the Kubernetes 1.37 OpenAPI schema with kubernetes-validate in strict
mode (an unknown field is an error). Probe semantics are checked against core/v1 Probe field for field
(the spec's probe fields carry Kubernetes' names and defaults: seeds/003)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from berth.cli import app
from berth.manifests import render_manifests
from libs.runtime.base import Workload
from libs.runtime.kubernetes.machines import DEFAULT_MACHINE_TYPES, GPU_PRODUCT_LABEL, load_machine_types
from libs.runtime.kubernetes.resources import (
    APPLIED_ANNOTATION,
    WORKLOAD_LABEL,
    deployment,
    manifests,
    unknown_machine_types,
)
from libs.spec import DeploymentSpec, parse_document, validate_spec

K8S_VERSION = "1.37.0"
EXAMPLES = sorted(Path("examples").glob("*.yaml"))
SECRET_VALUE = "s3cr3t-value-that-must-stay-in-the-secret"


def spec_of(text: str) -> DeploymentSpec:
    return validate_spec(parse_document(text))


def workload(**overrides: object) -> Workload:
    fields: dict[str, object] = dict(
        name="p-model-0123456789abcdef", deployment_id="dep1", project="p", slug="model", spec_id="s1",
        replicas=2, command=("python", "-m", "server"), image="ghcr.io/acme/model:1", env={"A": "1"},
        ports=(8080, 9090), revision_id="0123456789abcdef",
    )
    fields.update(overrides)
    return Workload(**fields)  # type: ignore[arg-type]


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
async def test_every_example_renders_objects_that_validate_strictly(path: Path) -> None:
    objects = await render_manifests(spec_of(path.read_text()), project="team-a", namespace="models")
    assert [o["kind"] for o in objects][-1] == "Deployment"
    for manifest in objects:
        validate(manifest)


def test_strict_validation_catches_an_unknown_field() -> None:
    # The check above can fail: a misspelt field is an error, not ignored.
    manifest = deployment(workload(), "ns", DEFAULT_MACHINE_TYPES)
    manifest["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)


def test_seed_000_renders_gpu_machine_registry_probes_and_a_secret_ref() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["render", "-f", "examples/seed-000.yaml", "--namespace", "models"])
    assert result.exit_code == 0, result.output
    secret, dep = list(yaml.safe_load_all(result.stdout))
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}
    assert pod["imagePullSecrets"] == [{"name": "my-registry"}]
    assert c["image"] == "paperspace/app-fixture:0.1.3"
    assert c["command"][:2] == ["/bin/sh", "-c"]
    assert c["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/", "port": 8000, "scheme": "HTTP",
                    "httpHeaders": [{"name": "Authorization", "value": "some-token"}]},
        "initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 5,
        "successThreshold": 1, "failureThreshold": 5,
    }
    assert {"name": "some-env", "value": "some-value"} in c["env"]
    ref = next(e for e in c["env"] if e["name"] == "secret-env")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": dep["metadata"]["name"], "key": "secret-env"}
    assert secret["kind"] == "Secret" and ref["key"] in secret["data"]
    assert dep["metadata"]["namespace"] == secret["metadata"]["namespace"] == "models"


def test_probe_defaults_and_port_default_to_the_first_port() -> None:
    # core/v1 Probe defaults: periodSeconds 10, timeoutSeconds 1, successThreshold 1, failureThreshold 3.
    spec = spec_of("""
name: m
image: x
resources: {ports: [7000, 7001]}
healthChecks:
  liveness: {path: /live}
  startup: {path: /start, port: 7001, failureThreshold: 30}
  readiness: {path: /ready, successThreshold: 2}
""")
    c = deployment(workload(health_checks=spec.healthChecks.model_dump(), ports=(7000, 7001)), "ns", {})["spec"]["template"][
        "spec"]["containers"][0]
    defaults = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                "failureThreshold": 3}
    assert c["livenessProbe"] == {"httpGet": {"path": "/live", "port": 7000, "scheme": "HTTP"}, **defaults}
    assert c["startupProbe"]["httpGet"]["port"] == 7001 and c["startupProbe"]["failureThreshold"] == 30
    assert c["readinessProbe"]["successThreshold"] == 2
    assert "httpHeaders" not in c["livenessProbe"]


def test_secret_values_are_only_in_the_secret() -> None:
    w = workload(env={"TOKEN": SECRET_VALUE, "PLAIN": "p"}, secret_env=frozenset({"TOKEN"}))
    secret, dep = manifests(w, "ns", DEFAULT_MACHINE_TYPES)
    assert base64.b64decode(secret["data"]["TOKEN"]).decode() == SECRET_VALUE
    text = json.dumps(dep)
    assert SECRET_VALUE not in text and base64.b64encode(SECRET_VALUE.encode()).decode() not in text
    for manifest in (secret, dep):
        validate(manifest)


def test_resources_map_to_requests_limits_gpus_and_node_selectors() -> None:
    w = workload(cpu=0.5, memory_gb=1.5, gpu_count=2, gpu_type="T4")
    pod = deployment(w, "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "500m", "memory": "1500M"}
    assert res["limits"] == {"cpu": "500m", "memory": "1500M", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {GPU_PRODUCT_LABEL: "Tesla-T4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu_only = deployment(workload(cpu=2, memory_gb=4), "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]
    assert cpu_only["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4G"}
    assert "nodeSelector" not in cpu_only and "tolerations" not in cpu_only


def test_an_operator_extends_the_machine_type_table(tmp_path: Path) -> None:
    table = tmp_path / "machines.yaml"
    table.write_text("L4:\n  nodeSelector: {cloud.google.com/gke-accelerator: nvidia-l4}\n  gpuCount: 1\n"
                     "C8:\n  nodeSelector: {node.kubernetes.io/instance-type: c2-standard-8}\n")
    machines = load_machine_types(table)
    assert "A100-80G" in machines  # the defaults stay
    pod = deployment(workload(machine_type="L4"), "ns", machines)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert unknown_machine_types(workload(machine_type="H100"), machines) == ["H100"]


def test_selectors_of_two_workloads_never_overlap_and_replicas_do_not_change_the_template() -> None:
    a = deployment(workload(), "ns", {})
    b = deployment(workload(name="p-model-fedcba9876543210", revision_id="fedcba9876543210"), "ns", {})
    assert a["spec"]["selector"]["matchLabels"] == {WORKLOAD_LABEL: "p-model-0123456789abcdef"}
    assert a["spec"]["selector"]["matchLabels"].items() - b["spec"]["template"]["metadata"]["labels"].items()
    scaled = deployment(workload(replicas=7), "ns", {})
    assert scaled["spec"]["template"] == a["spec"]["template"]
    assert scaled["metadata"]["annotations"][APPLIED_ANNOTATION] == a["metadata"]["annotations"][APPLIED_ANNOTATION]
    newer = deployment(workload(spec_id="s2"), "ns", {})
    assert newer["spec"]["template"] == a["spec"]["template"]  # a new spec version does not roll Pods


INTEGRATIONS = [
    {"type": "git-lfs", "name": "falcon", "path": "/models/", "url": "https://git.example/falcon", "ref": "main",
     "username": "alice", "password": "secret:hf-token"},
    {"type": "s3", "name": "my-s3", "path": "/some/s3/mount/path", "url": "s3://bucket/prefix", "region": "us-east-1",
     "accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "secret:s3key"},
    {"type": "volume", "name": "datasets", "path": "/data", "claimName": "shared-datasets", "readOnly": False},
    {"type": "volume", "name": "scratch", "path": "/scratch", "hostPath": "/srv/scratch"},
]
HF_TOKEN, S3_KEY = "hf_token-that-must-stay-in-the-secret", "s3-key-that-must-stay-in-the-secret"


def integrations_workload() -> Workload:
    spec = spec_of(json.dumps({"name": "m", "image": "i", "resources": {"ports": [8080]},
                               "integrations": INTEGRATIONS}))  # fmt: skip
    return workload(
        integrations=tuple(i.model_dump(mode="json", exclude_none=True) for i in spec.integrations),
        integration_secrets={"hf-token": HF_TOKEN, "s3key": S3_KEY},
    )


def test_integrations_become_an_init_container_volumes_and_mounts_that_validate() -> None:
    objects = manifests(integrations_workload(), "models", DEFAULT_MACHINE_TYPES, fetch_image="reg.example/berth:9")
    for manifest in objects:
        validate(manifest)
    secret, dep = objects
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "reg.example/berth:9"
    assert init["command"] == ["python", "-m", "services.integrations.fetch", "/berth/integrations"]
    assert init["volumeMounts"] == [{"name": "berth-integrations", "mountPath": "/berth/integrations"}]
    env = {e["name"]: e for e in init["env"]}
    config = json.loads(env["BERTH_FETCH_INTEGRATIONS"]["value"])
    assert [i["name"] for i in config["integrations"]] == ["falcon", "my-s3"]  # volumes are the kubelet's
    assert config["integrations"][0]["password"] == "secret:hf-token"  # the reference, not the value
    refs = {config["secrets"][name]: name for name in config["secrets"]}
    for variable, name in refs.items():
        assert env[variable]["valueFrom"] == {"secretKeyRef": {"name": dep["metadata"]["name"],
                                                               "key": f"berth.integration.{name}"}}  # fmt: skip
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"berth.integration.hf-token": HF_TOKEN, "berth.integration.s3key": S3_KEY}

    assert pod["volumes"] == [
        {"name": "berth-integrations", "emptyDir": {}},
        {"name": "integration-2", "persistentVolumeClaim": {"claimName": "shared-datasets", "readOnly": False}},
        {"name": "integration-3", "hostPath": {"path": "/srv/scratch", "type": "Directory"}},
    ]
    (model,) = pod["containers"]
    assert model["volumeMounts"] == [
        {"name": "berth-integrations", "mountPath": "/models/falcon", "subPath": "falcon", "readOnly": True},
        {"name": "berth-integrations", "mountPath": "/some/s3/mount/path/my-s3", "subPath": "my-s3", "readOnly": True},
        {"name": "integration-2", "mountPath": "/data/datasets", "readOnly": False},
        {"name": "integration-3", "mountPath": "/scratch/scratch", "readOnly": True},
    ]
    rendered = json.dumps(dep)
    for value in (HF_TOKEN, S3_KEY):
        assert value not in rendered and base64.b64encode(value.encode()).decode() not in rendered


def test_the_init_container_keeps_the_pod_guaranteed_and_asks_for_no_gpu() -> None:
    sized = Workload(**{**integrations_workload().__dict__, "cpu": 2.0, "memory_gb": 8.0, "gpu_count": 1})
    pod = deployment(sized, "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod})
    model, init = pod["containers"][0]["resources"], pod["initContainers"][0]["resources"]
    assert model["limits"]["nvidia.com/gpu"] == "1"
    # Guaranteed: every container, init ones included, has requests equal to limits for cpu and memory.
    assert init == {"requests": {"cpu": "2", "memory": "8G"}, "limits": {"cpu": "2", "memory": "8G"}}
    unsized = deployment(integrations_workload(), "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]
    assert "resources" not in unsized["initContainers"][0]


def test_without_fetched_integrations_there_is_no_init_container() -> None:
    only_volume = workload(integrations=({"type": "volume", "name": "d", "path": "/d", "claimName": "c"},))
    pod = deployment(only_volume, "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert pod["volumes"] == [{"name": "integration-0", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}}]
    assert "initContainers" not in deployment(workload(), "ns", DEFAULT_MACHINE_TYPES)["spec"]["template"]["spec"]


def test_an_env_name_shaped_like_an_integration_key_cannot_overwrite_it() -> None:
    clash = integrations_workload()
    clash = Workload(**{**clash.__dict__, "env": {"berth.integration.hf-token": "other"},
                        "secret_env": frozenset({"berth.integration.hf-token"})})  # fmt: skip
    data = manifests(clash, "ns", DEFAULT_MACHINE_TYPES)[0]["data"]
    assert base64.b64decode(data["berth.integration.hf-token"]).decode() == HF_TOKEN
    assert len(data) == 3


def test_berth_render_of_seed_000_fetches_its_integrations_in_an_init_container() -> None:
    result = CliRunner().invoke(app, ["render", "-f", "examples/seed-000.yaml", "--namespace", "models"])
    assert result.exit_code == 0, result.output
    secret, dep = list(yaml.safe_load_all(result.stdout))
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models/falcon"]["subPath"] == "falcon"
    assert "/some/s3/mount/path/my-s3-integration" in mounts
    assert "berth.integration.secretAccessKey" in secret["data"]
    assert any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "berth.integration.secretAccessKey"
               for e in init["env"])  # fmt: skip
