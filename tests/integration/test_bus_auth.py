"""The nats-server `berth up` starts admits only berth's services, each with the permissions of
libs/busauth.py: a real nats-server with the generated config, and clients that try what a process
of the machine (or a compromised service) would try."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from faststream.nats import NatsUserPassword
from nats.aio.client import Client
from nats.js.api import StreamConfig, StreamSource

from berth.prepare import set_up_bus
from libs.bus import SECRETS_BUCKET, SPECS, inbox_prefix
from libs.events import RequestMetricsReported, SpecApplied
from libs.natsd import CONFIG_FILE, CREDENTIALS_FILE, free_port, service_passwords, start_nats_server
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec

DENIED_WAIT_SECONDS = 1.0  # a refused publish is never acknowledged: how long to wait for the ack


@dataclass
class Server:
    url: str
    auth_dir: Path

    @property
    def passwords(self) -> dict[str, str]:
        return service_passwords(self.auth_dir)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    port = free_port()
    process = start_nats_server(tmp_path / "jetstream", port, auth_dir=tmp_path / "nats")
    try:
        server = Server(f"nats://127.0.0.1:{port}", tmp_path / "nats")
        await set_up_bus(server.url, NatsUserPassword("spec-registry", server.passwords["spec-registry"]))
        yield server
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Session:
    """A connection as one service, with the permission errors the server sent it."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in self.errors)


Connect = Callable[[str], Awaitable[Session]]


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Connect]:
    sessions: list[Session] = []

    async def as_service(service: str) -> Session:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            server.url,
            user=service,
            password=server.passwords[service],
            inbox_prefix=inbox_prefix(service),
            error_cb=on_error,
            allow_reconnect=False,
        )
        session = Session(nc, errors)
        sessions.append(session)
        return session

    yield as_service
    for session in sessions:
        await session.nc.close()


def spec_applied() -> SpecApplied:
    spec = DeploymentSpec.model_validate(
        {"name": "iris", "image": "python:3.11", "command": ["true"], "resources": {"ports": [8000]}}
    )
    return SpecApplied(
        deployment_id="dep-1", project="default", slug="iris", name="iris", spec_id="s1", spec_version=1, spec=spec
    )


def encode(event: object) -> bytes:
    return json.dumps(event.model_dump(mode="json")).encode()  # type: ignore[attr-defined]


async def specs_held(registry: Session) -> int:
    return (await registry.nc.jetstream().stream_info(SPECS.name)).state.messages


def test_the_data_dir_holds_the_passwords_owner_only_and_the_config_none(tmp_path: Path) -> None:
    passwords = service_passwords(tmp_path / "nats")
    assert service_passwords(tmp_path / "nats") == passwords, "made once, then kept"
    assert set(passwords) >= {"spec-registry", "scheduler", "health-monitor", "router"}
    assert len(set(passwords.values())) == len(passwords)
    assert (tmp_path / "nats").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "nats" / CREDENTIALS_FILE).stat().st_mode & 0o777 == 0o600


async def test_anonymous_and_wrong_passwords_are_refused(server: Server) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            server.url, user="spec-registry", password="guessed", allow_reconnect=False, max_reconnect_attempts=0
        )
    config = (server.auth_dir / CONFIG_FILE).read_text()
    assert not any(password in config for password in server.passwords.values())


@pytest.mark.parametrize("service", ["router", "scheduler", "health-monitor"])
async def test_only_the_registry_publishes_spec_events(connect: Connect, service: str) -> None:
    registry, other = await connect("spec-registry"), await connect(service)
    event = spec_applied()

    with pytest.raises(nats.errors.TimeoutError):
        await other.nc.jetstream().publish(event.subject(), encode(event), timeout=DENIED_WAIT_SECONDS)
    assert other.refused(event.subject())
    assert await specs_held(registry) == 0

    ack = await registry.nc.jetstream().publish(event.subject(), encode(event))
    assert ack.stream == SPECS.name and await specs_held(registry) == 1


async def test_only_the_registry_writes_secrets_and_the_health_monitor_reads_none(connect: Connect) -> None:
    registry, router, scheduler, monitor = [
        await connect(s) for s in ("spec-registry", "router", "scheduler", "health-monitor")
    ]
    await (await SecretStore.open(registry.nc.jetstream())).put("default", "gate", "hunter2")

    router_store = await SecretStore.open(router.nc.jetstream(timeout=DENIED_WAIT_SECONDS))
    assert await router_store.get("default", "gate") == "hunter2", "the router reads basic-auth keys"
    assert await (await SecretStore.open(scheduler.nc.jetstream())).get("default", "gate") == "hunter2"
    with pytest.raises(nats.errors.TimeoutError):
        await router_store.put("default", "gate", "overwritten")
    assert router.refused(f"$KV.{SECRETS_BUCKET}.default.gate")
    with pytest.raises(nats.errors.TimeoutError):
        await router_store.delete("default", "gate")
    assert await router_store.get("default", "gate") == "hunter2"

    monitor_js = monitor.nc.jetstream(timeout=DENIED_WAIT_SECONDS)
    with pytest.raises(nats.errors.TimeoutError):
        await (await monitor_js.key_value(SECRETS_BUCKET)).get("default.gate")
    assert monitor.refused(f"KV_{SECRETS_BUCKET}")


async def test_the_router_publishes_its_metrics_and_nothing_else(connect: Connect) -> None:
    router = await connect("router")
    js = router.nc.jetstream(timeout=DENIED_WAIT_SECONDS)
    metrics = RequestMetricsReported(
        deployment_id="dep-1", project="default", slug="iris", window_seconds=5.0, requests=3, errors=0,
        latency_sum_seconds=0.1, latency_buckets=[3],
    )
    assert (await js.publish(metrics.subject(), encode(metrics))).stream == "BERTH_METRICS"

    health = "berth.health.v1.dep-1.r-1"
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish(health, b"{}")
    assert router.refused(health)
    # Nor may it reconfigure a stream, e.g. make the specs stream take in its metrics as spec events.
    forged = StreamConfig(name=SPECS.name, subjects=["berth.spec.v1.>"], sources=[StreamSource(name="BERTH_METRICS")])
    with pytest.raises(nats.errors.TimeoutError):
        await js.update_stream(forged)
    assert router.refused(f"$JS.API.STREAM.UPDATE.{SPECS.name}")


async def test_no_service_reads_the_replies_of_another(connect: Connect) -> None:
    router = await connect("router")
    for subject in ("_INBOX.>", f"{inbox_prefix('spec-registry')}.>", "berth.rpc.v1.logs"):
        await router.nc.subscribe(subject)
        await router.nc.flush()
    await router.nc.flush()
    assert router.refused("_INBOX.>") and router.refused(f"{inbox_prefix('spec-registry')}.>")
    assert router.refused("berth.rpc.v1.logs"), "only the scheduler answers logs requests"
