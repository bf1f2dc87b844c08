"""Integrations on the kubernetes runtime.

- The init container berth renders, run for real as a process the way the kubelet would run it: its
  command, its environment with each `secretKeyRef` filled from the rendered Secret, the emptyDir a
  temporary directory. It fetches a git repository with an LFS file from a local git server that asks
  for basic auth, and an s3 prefix from moto's server, into `<volume>/<name>` (what the model
  container mounts with subPath `<name>` at `<path>/<name>`).
- The real scheduler on the kubernetes runtime against the emulator: once the integrations are ready,
  the Deployment it creates has the init container, the volumes and the mounts, and the Secret the
  credentials; the status no longer lists the integrations as not provided.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from libs.bus import publish
from libs.config import Settings
from libs.events import IntegrationsReady, MaterialisedIntegration, SpecApplied, new_id
from libs.revision import revision_id
from libs.runtime.kubernetes.machines import DEFAULT_MACHINE_TYPES
from libs.runtime.kubernetes.resources import FETCH_DIR, manifests
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec, validate_spec
from services.integrations import git
from services.scheduler import SchedulerHandle, start_scheduler
from services.scheduler.render import ResolvedEnv, render
from tests.helpers import eventually
from tests.integration.test_scheduler_replicas import DEPLOYMENT, Bus, bus, echo_spec, scheduler_settings  # noqa: F401
from tests.kube import Cluster, cluster  # noqa: F401
from tests.servers.git_http import git_http_server, make_lfs_repo
from tests.servers.s3 import S3Server, s3_server

pytestmark = pytest.mark.skipif(not git.lfs_available(), reason="needs git-lfs (apt-get install git-lfs)")
WEIGHTS = os.urandom(4096)
TOKEN = "hf_init-container-token-" + "t" * 16
USER = "alice"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


def spec_with(git_url: str, server: S3Server) -> DeploymentSpec:
    return echo_spec(replicas=1, integrations=[
        {"type": "git-lfs", "name": "falcon", "path": "/models/", "url": git_url, "ref": "main",
         "username": USER, "password": "secret:hf-token"},
        {"type": "s3", "name": "iris", "path": "/data/", "url": "s3://models/iris", "region": "us-east-1",
         "endpointUrl": server.endpoint, "accessKeyId": server.access_key_id, "secretAccessKey": "secret:s3key"},
        {"type": "volume", "name": "datasets", "path": "/datasets/", "claimName": "datasets"},
    ])  # fmt: skip


def rendered(spec: DeploymentSpec, secrets: dict[str, str]) -> list[dict[str, Any]]:
    applied = SpecApplied(deployment_id="d", project="default", slug=spec.slug, name=spec.name, spec_id="s",
                          spec_version=1, spec=spec)  # fmt: skip
    return manifests(render(applied, ResolvedEnv({}, frozenset()), 1, integration_secrets=secrets), "models",
                     DEFAULT_MACHINE_TYPES)  # fmt: skip


def run_init_container(objects: list[dict[str, Any]], volume: Path) -> subprocess.CompletedProcess[str]:
    """The init container as the kubelet runs it: its command and env (secretKeyRef resolved from
    the Secret), the emptyDir at FETCH_DIR replaced by `volume`."""
    secret = next((o for o in objects if o["kind"] == "Secret"), {"data": {}})
    (init,) = objects[-1]["spec"]["template"]["spec"]["initContainers"]
    env = {"PATH": os.environ["PATH"], "HOME": str(volume.parent)}
    for entry in init["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    command = [sys.executable if part == "python" else str(volume) if part == FETCH_DIR else part
               for part in init["command"]]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=Path.cwd())


def test_the_init_container_fetches_git_and_s3_into_the_volume(s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    client.create_bucket(Bucket="models")
    for n in range(3):
        client.put_object(Bucket="models", Key=f"iris/part-{n}.bin", Body=f"weights {n}".encode())
    root = tmp_path / "served"
    make_lfs_repo(root / "falcon", {"weights.bin": WEIGHTS, "config.json": b"{}"})
    volume = tmp_path / "emptydir"
    volume.mkdir()
    with git_http_server(root, auth=(USER, TOKEN)) as server:
        objects = rendered(spec_with(f"{server.url}/falcon", s3), {"hf-token": TOKEN, "s3key": s3.secret_access_key})
        done = run_init_container(objects, volume)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (volume / "falcon" / "weights.bin").read_bytes() == WEIGHTS  # the LFS content, not the pointer
    assert (volume / "falcon" / "config.json").read_bytes() == b"{}"
    assert not (volume / "falcon" / ".git").exists()
    assert {p.name: p.read_text() for p in (volume / "iris").iterdir()} == {f"part-{n}.bin": f"weights {n}" for n in range(3)}
    assert sorted(p.name for p in volume.iterdir()) == ["falcon", "iris"]  # its working cache is gone
    # What the model container sees: each fetched integration is the volume's subPath <name>.
    mounts = objects[-1]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {m["mountPath"]: m.get("subPath") for m in mounts} == {
        "/models/falcon": "falcon", "/data/iris": "iris", "/datasets/datasets": None,
    }
    log = done.stdout + done.stderr
    assert TOKEN not in log and s3.secret_access_key not in log
    assert [json.loads(line)["event"] for line in done.stdout.splitlines()] == ["fetched", "fetched", "ready"]


def test_a_failed_fetch_exits_non_zero_with_the_reason_and_no_credential(s3: S3Server, tmp_path: Path) -> None:
    root = tmp_path / "served"
    make_lfs_repo(root / "falcon", {"weights.bin": WEIGHTS})
    volume = tmp_path / "emptydir"
    volume.mkdir()
    wrong = "hf_wrong-token-" + "w" * 16
    with git_http_server(root, auth=(USER, TOKEN)) as server:
        objects = rendered(spec_with(f"{server.url}/falcon", s3), {"hf-token": wrong, "s3key": s3.secret_access_key})
        done = run_init_container(objects, volume)
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["reason"] == "integration falcon: git fetch: authentication failed"
    assert wrong not in done.stdout + done.stderr
    assert list(volume.iterdir()) == []


@pytest.fixture
async def k8s_scheduler(scheduler_settings: Settings, cluster: Cluster) -> AsyncIterator[SchedulerHandle]:  # noqa: F811
    handle = await start_scheduler(scheduler_settings, KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig,
                                                                         fetch_image="reg.example/berth:1"))  # fmt: skip
    yield handle
    await handle.stop()


async def test_the_scheduler_creates_the_init_container_volumes_and_secret_once_integrations_are_ready(
    k8s_scheduler: SchedulerHandle, bus: Bus, cluster: Cluster, js: JetStreamContext, s3: S3Server,  # noqa: F811
) -> None:
    store = await SecretStore.open(js)
    await store.put("default", "hf-token", TOKEN)
    await store.put("default", "s3key", s3.secret_access_key)
    spec = spec_with("https://git.example/falcon", s3)
    applied = await bus.apply(spec)
    status = await bus.phase("Provisioning")
    assert not any("integrations" in item for item in status.not_provided)
    assert not cluster.objects("apps/v1/deployments")  # nothing before the integrations are ready

    contents = [MaterialisedIntegration(name=i.name, type=i.type, mount=i.mount, identity="x", local_path="/cache/x")
                for i in spec.integrations]  # fmt: skip
    await publish(bus.broker, IntegrationsReady(
        deployment_id=DEPLOYMENT, project="default", slug=spec.slug, revision_id=revision_id(spec),
        spec_version=applied.spec_version, integrations=contents,
    ))  # fmt: skip
    deployments = await eventually(lambda: cluster.objects("apps/v1/deployments"), what="the Deployment")
    (name, dep), = deployments.items()
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "reg.example/berth:1"
    assert {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in pod["volumes"]} == {
        "berth-integrations": {"emptyDir": {}},
        "integration-2": {"persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
    }
    refs = [e["valueFrom"]["secretKeyRef"] for e in init["env"] if "valueFrom" in e]
    assert refs == [{"name": name, "key": "berth.integration.hf-token"}, {"name": name, "key": "berth.integration.s3key"}]
    secret = await eventually(lambda: cluster.objects("v1/secrets").get(name), what="the Secret")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "berth.integration.hf-token": TOKEN, "berth.integration.s3key": s3.secret_access_key,
    }
    others = json.dumps([cluster.objects("apps/v1/deployments"), [e.model_dump(mode="json") for e in bus.events]])
    assert TOKEN not in others and s3.secret_access_key not in others
