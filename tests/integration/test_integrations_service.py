"""The integrations service with the scheduler, end to end: real nats-server, a git repository with an
LFS file (file://) and a bucket on a local S3 server (moto) reached with credentials from a sealed
secret, real replica processes (python -m http.server in their working directory). The replica serves
the integrations' files at /models/falcon and /data/my-s3; a failed integration leaves the replicas of
its deployment unstarted, with the reason in status; the secret value appears nowhere."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.bus import make_broker, publish
from libs.config import Settings
from libs.events import (
    DeploymentStatusChanged,
    IntegrationsFailed,
    IntegrationsReady,
    IntegrationsRetryRequested,
    SpecApplied,
    decode_event,
    new_id,
)
from libs.runtime.local import LocalRuntime
from libs.secrets import SecretStore
from libs.spec import validate_spec
from services.health_monitor import HealthMonitorHandle, start_health_monitor
from services.integrations import git
from services.integrations.app import IntegrationsHandle, start_integrations
from services.scheduler import SchedulerHandle, start_scheduler
from tests.helpers import eventually
from tests.servers.git_http import git_http_server, make_lfs_repo
from tests.servers.s3 import S3Server, s3_server

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not git.lfs_available(), reason="needs git-lfs")]
WEIGHTS = os.urandom(2048)
SERVE_CWD = ["sh", "-c", 'exec python -m http.server --bind 127.0.0.1 "$PORT"']
# Also serves the integration found through its variable, at /via-env/.
SERVE_FALCON = ["sh", "-c", 'ln -sfn "$BERTH_INTEGRATION_FALCON" via-env && exec python -m http.server --bind 127.0.0.1 "$PORT"']


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def service_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "reconcile_interval_seconds": 1.0, "stop_grace_seconds": 2.0,
        "scheduler_ops_port": 0, "health_monitor_ops_port": 0, "integrations_ops_port": 0,
    })  # fmt: skip


@pytest.fixture
async def platform(service_settings: Settings, nc: Client) -> AsyncIterator[SchedulerHandle]:
    monitor: HealthMonitorHandle = await start_health_monitor(service_settings)
    integrations: IntegrationsHandle = await start_integrations(service_settings)
    runtime = LocalRuntime(service_settings.data_dir / "replicas", grace_seconds=2.0, backoff_initial_seconds=1.0)
    scheduler = await start_scheduler(service_settings, runtime)
    yield scheduler
    await scheduler.stop(stop_replicas=True)
    await integrations.stop()
    await monitor.stop()


class Recorder:
    def __init__(self) -> None:
        self.raw: list[bytes] = []

    async def on_message(self, message: Msg) -> None:
        self.raw.append(message.data)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in map(decode_event, self.raw) if isinstance(e, kind)]

    def status(self, deployment_id: str) -> DeploymentStatusChanged | None:
        mine = [s for s in self.of(DeploymentStatusChanged) if s.deployment_id == deployment_id]
        return mine[-1] if mine else None


@pytest.fixture
async def recorder(nc: Client) -> Recorder:
    recorder = Recorder()
    await nc.subscribe("berth.>", cb=recorder.on_message)  # every event on the bus, as published
    return recorder


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url, "test")
    await broker.start()
    yield broker
    await broker.stop()


async def apply(broker: NatsBroker, deployment_id: str, document: dict[str, Any], version: int = 1) -> SpecApplied:
    spec = validate_spec(document)
    event = SpecApplied(
        deployment_id=deployment_id, project="default", slug=spec.slug, name=spec.name,
        spec_id=new_id(), spec_version=version, spec=spec,
    )  # fmt: skip
    await publish(broker, event)
    return event


def served_spec(integrations: list[dict[str, Any]], command: list[str] = SERVE_CWD) -> dict[str, Any]:
    return {
        "name": "falcon server", "image": "python:3.11", "command": command,
        "resources": {"ports": [8000], "replicas": 1},
        "healthChecks": {"readiness": {"path": "/", "periodSeconds": 1}},
        "integrations": integrations,
    }  # fmt: skip


async def test_a_replica_serves_its_integrations_and_a_failed_one_never_starts(
    platform: SchedulerHandle, recorder: Recorder, broker: NatsBroker, nc: Client, s3: S3Server, tmp_path: Path,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    make_lfs_repo(tmp_path / "falcon-7b", {"weights.bin": WEIGHTS})
    s3.client().create_bucket(Bucket="my-integration-bucket")
    s3.client().put_object(Bucket="my-integration-bucket", Key="hello.txt", Body=b"hello from s3")
    await (await SecretStore.open(nc.jetstream())).put("default", "secretAccessKey", s3.secret_access_key)

    # seeds/000's integrations, pointed at local equivalents.
    falcon_integrations = [
        {"type": "git-lfs", "name": "falcon", "path": "/models/", "url": f"file://{tmp_path / 'falcon-7b'}"},
        {"type": "s3", "name": "my-s3", "path": "/data", "url": "s3://my-integration-bucket/", "region": "us-east-1",
         "endpointUrl": s3.endpoint, "accessKeyId": s3.access_key_id, "secretAccessKey": "secret:secretAccessKey"},
    ]  # fmt: skip
    await apply(broker, "dep-falcon", served_spec(falcon_integrations, SERVE_FALCON))
    await apply(broker, "dep-broken", served_spec([
        {"type": "s3", "name": "gone", "path": "/data", "url": "s3://nowhere/", "region": "us-east-1",
         "endpointUrl": s3.endpoint, "accessKeyId": s3.access_key_id, "secretAccessKey": "secret:secretAccessKey"},
    ]))  # fmt: skip

    ready = await eventually(lambda: recorder.of(IntegrationsReady), timeout=60, what="integrations ready")
    assert {i.name: i.type for i in ready[0].integrations} == {"falcon": "git-lfs", "my-s3": "s3"} and ready[0].integrations[0].identity
    status = await eventually(
        lambda: (s := recorder.status("dep-falcon")) and s.phase == "Ready" and s, timeout=60, what="dep-falcon Ready"
    )
    assert [(i.name, i.identity) for i in status.integrations] == [(i.name, i.identity) for i in ready[0].integrations]
    address = status.replicas[0].address
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=5) as http:
        assert (await http.get("/models/falcon/weights.bin")).content == WEIGHTS
        assert (await http.get("/data/my-s3/hello.txt")).content == b"hello from s3"
        assert (await http.get("/via-env/weights.bin")).content == WEIGHTS  # BERTH_INTEGRATION_FALCON

    failed = await eventually(lambda: recorder.of(IntegrationsFailed), timeout=60, what="integrations failed")
    assert failed[0].reason == "integration gone: s3 bucket 'nowhere' not found" and failed[0].retry_in_seconds
    broken = await eventually(
        lambda: (s := recorder.status("dep-broken")) and s.phase == "Failed" and s, what="dep-broken Failed"
    )
    assert broken.reason == "integration gone: s3 bucket 'nowhere' not found"
    assert [r for r in await platform.runtime.replicas() if r.deployment_id == "dep-broken"] == []

    # A new version of dep-falcon with another template but the same integrations: a new revision whose
    # integrations come from the cache (nothing downloaded again).
    document = served_spec(falcon_integrations, SERVE_FALCON)
    document["env"] = [{"name": "MODE", "value": "second"}]
    await apply(broker, "dep-falcon", document, version=2)
    second = await eventually(
        lambda: [e for e in recorder.of(IntegrationsReady) if e.spec_version == 2], timeout=60, what="v2 ready"
    )
    assert [(i.identity, i.fetched_files) for i in second[0].integrations] == [
        (i.identity, 0) for i in ready[0].integrations
    ]

    # The bucket appears; the user asks for a retry (`berth deployments retry`): fetched, the replica starts.
    s3.client().create_bucket(Bucket="nowhere")
    await publish(broker, IntegrationsRetryRequested(deployment_id="dep-broken", project="default", slug="falcon-server"))
    await eventually(
        lambda: (s := recorder.status("dep-broken")) and s.phase == "Ready", timeout=60, what="dep-broken Ready after a retry"
    )

    # The secret's value: in no event, no file under the test's directory (data dir, JetStream store,
    # the replicas' logs and state).
    value = s3.secret_access_key.encode()
    assert not [m for m in recorder.raw if value in m]
    output = capfd.readouterr()
    assert s3.secret_access_key not in output.out + output.err + caplog.text  # every service's log lines
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and value in p.read_bytes()]
    assert leaks == []


async def test_git_credentials_from_a_sealed_secret_clone_a_private_repository_and_leak_nowhere(
    platform: SchedulerHandle, recorder: Recorder, broker: NatsBroker, nc: Client, tmp_path: Path,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    token = "hf_" + os.urandom(16).hex()
    secrets = await SecretStore.open(nc.jetstream())
    await secrets.put("default", "hf-token", token)
    await secrets.put("default", "stale-token", "hf_" + os.urandom(16).hex())
    make_lfs_repo(tmp_path / "served" / "private", {"weights.bin": WEIGHTS})
    make_lfs_repo(tmp_path / "served" / "other", {"weights.bin": WEIGHTS})
    with git_http_server(tmp_path / "served", auth=("alice", token)) as server:
        def private(repo: str, secret: str) -> list[dict[str, Any]]:
            return [{"type": "git-lfs", "name": "falcon", "path": "/models/", "url": f"{server.url}/{repo}",
                     "username": "alice", "password": f"secret:{secret}"}]  # fmt: skip

        await apply(broker, "dep-private", served_spec(private("private", "hf-token")))
        await apply(broker, "dep-stale", served_spec(private("other", "stale-token")))
        ready = await eventually(lambda: recorder.of(IntegrationsReady), timeout=60, what="integrations ready")
        assert ready[0].deployment_id == "dep-private" and ready[0].integrations[0].files == 2  # + .gitattributes
        assert (Path(ready[0].integrations[0].local_path) / "weights.bin").read_bytes() == WEIGHTS
        failed = await eventually(lambda: recorder.of(IntegrationsFailed), timeout=60, what="integrations failed")
        assert failed[0].deployment_id == "dep-stale"
        assert failed[0].reason == "integration falcon: git fetch: authentication failed"

    # The token, and the basic-auth header made of it: in no event, no log line, no file under the
    # test's directory (data dir with the cache and its repositories, JetStream store, replicas' logs).
    header = base64.b64encode(f"alice:{token}".encode())
    assert not [m for m in recorder.raw if token.encode() in m or header in m]
    output = capfd.readouterr()
    logs = output.out + output.err + caplog.text
    assert token not in logs and header.decode() not in logs
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in files if token.encode() in p.read_bytes() or header in p.read_bytes()]


async def test_a_replica_sees_a_host_directory_given_as_a_volume(
    platform: SchedulerHandle, recorder: Recorder, broker: NatsBroker, tmp_path: Path
) -> None:
    host = tmp_path / "host-datasets"
    host.mkdir()
    (host / "train.csv").write_text("a,b\n1,2\n")
    await apply(broker, "dep-volume", served_spec([
        {"type": "volume", "name": "datasets", "path": "/data", "hostPath": str(host)},
    ]))  # fmt: skip
    status = await eventually(
        lambda: (s := recorder.status("dep-volume")) and s.phase == "Ready" and s, timeout=60, what="dep-volume Ready"
    )
    assert [(i.name, i.type, i.read_only) for i in status.integrations] == [("datasets", "volume", True)]
    async with httpx.AsyncClient(base_url=f"http://{status.replicas[0].address}", timeout=5) as http:
        assert (await http.get("/data/datasets/train.csv")).text == "a,b\n1,2\n"
    (host / "added.txt").write_text("seen at once")  # the directory itself, not a copy
    async with httpx.AsyncClient(base_url=f"http://{status.replicas[0].address}", timeout=5) as http:
        assert (await http.get("/data/datasets/added.txt")).text == "seen at once"
