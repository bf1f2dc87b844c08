"""The scheduler end to end: real nats-server, the real LocalRuntime running real replica processes
(tests/servers/echo.py) that answer real HTTP, and the real health-monitor in-process for readiness
(its TCP probe: ready once the replica's port accepts connections). The tests publish spec events as
the registry would, and await what a user would notice: processes answering, events, the status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.bus import LOGS_RPC, make_broker, publish
from libs.config import Settings
from libs.events import (
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentStatusChanged,
    Event,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    SpecApplied,
    TrafficAssigned,
    decode_event,
    new_id,
    utcnow,
)
from libs.natsd import free_port, wait_for_port
from libs.runtime.base import Replica
from libs.runtime.local import LocalRuntime
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec, validate_spec
from services.health_monitor import HealthMonitorHandle, start_health_monitor
from services.scheduler import SchedulerHandle, start_scheduler
from tests.helpers import eventually

ECHO = str(Path(__file__).parents[1] / "servers" / "echo.py")
DEPLOYMENT = "dep-echo"


def echo_spec(replicas: int = 2, **fields: Any) -> DeploymentSpec:
    document: dict[str, Any] = {
        "name": "echo",
        "image": "python:3.11",
        "command": [sys.executable, ECHO],
        "resources": {"ports": [8000], "replicas": replicas},
    }
    document.update(fields)
    return validate_spec(document)


@dataclass
class Bus:
    """Publishes spec events as the registry does; records every replica and status event in order."""

    broker: NatsBroker
    nc: Client
    events: list[Event] = field(default_factory=list)
    version: int = 0

    async def on_message(self, message: Msg) -> None:
        self.events.append(decode_event(message.data))

    async def apply(self, spec: DeploymentSpec, deployment_id: str = DEPLOYMENT) -> SpecApplied:
        self.version += 1
        event = SpecApplied(
            deployment_id=deployment_id, project="default", slug=spec.slug, name=spec.name,
            spec_id=new_id(), spec_version=self.version, spec=spec,
        )  # fmt: skip
        await publish(self.broker, event)
        return event

    async def delete(self, deployment_id: str = DEPLOYMENT) -> None:
        await publish(self.broker, DeploymentDeleted(deployment_id=deployment_id, project="default", slug="echo"))

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def status(self) -> DeploymentStatusChanged | None:
        statuses = self.of(DeploymentStatusChanged)
        return statuses[-1] if statuses else None

    async def phase(self, phase: str, **expected: Any) -> DeploymentStatusChanged:
        def probe() -> DeploymentStatusChanged | None:
            status = self.status()
            if status is None or status.phase != phase:
                return None
            return status if all(getattr(status, k) == v for k, v in expected.items()) else None

        return await eventually(probe, what=f"status {phase} {expected}; last {self.status()!r}")


@pytest.fixture
async def bus(nats_url: str, nc: Client) -> AsyncIterator[Bus]:
    broker = make_broker(nats_url, "test")
    await broker.start()
    recorder = Bus(broker, nc)
    await nc.subscribe("berth.replica.v1.>", cb=recorder.on_message)
    await nc.subscribe("berth.status.v1.>", cb=recorder.on_message)
    await nc.subscribe("berth.health.v1.>", cb=recorder.on_message)
    await nc.subscribe("berth.traffic.v1.>", cb=recorder.on_message)
    yield recorder
    await broker.stop()


@pytest.fixture
def scheduler_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"reconcile_interval_seconds": 1.0, "stop_grace_seconds": 2.0, "scheduler_ops_port": 0,
                "health_monitor_ops_port": 0}
    )  # fmt: skip


@pytest.fixture
async def health_monitor(scheduler_settings: Settings, nc: Client) -> AsyncIterator[HealthMonitorHandle]:
    handle = await start_health_monitor(scheduler_settings)
    yield handle
    await handle.stop()


@pytest.fixture
async def scheduler(
    scheduler_settings: Settings, nc: Client, health_monitor: HealthMonitorHandle
) -> AsyncIterator[SchedulerHandle]:
    runtime = LocalRuntime(
        scheduler_settings.data_dir / "replicas", grace_seconds=2.0, backoff_initial_seconds=1.0
    )
    handle = await start_scheduler(scheduler_settings, runtime)
    yield handle
    await handle.stop(stop_replicas=True)


async def answers(replica: Replica, path: str = "/") -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"http://{replica.host}:{replica.ports[8000]}{path}")
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


async def serving(scheduler: SchedulerHandle, count: int) -> list[Replica]:
    """Wait until exactly `count` replicas run and each answers HTTP as itself."""

    async def probe() -> list[Replica] | None:
        replicas = [r for r in await scheduler.runtime.replicas() if r.deployment_id == DEPLOYMENT]
        if len(replicas) != count or any(r.state != "running" for r in replicas):
            return None
        for replica in replicas:
            reply = await answers(replica)
            if reply is None or reply["replica_id"] != replica.replica_id:
                return None
        return sorted(replicas, key=lambda r: r.replica_id)

    return await eventually(probe, what=f"{count} replicas answering")


@pytest.mark.slow
async def test_apply_scale_stop_start_delete(scheduler: SchedulerHandle, bus: Bus) -> None:
    await bus.apply(echo_spec(replicas=2))
    first = await serving(scheduler, 2)
    status = await bus.phase("Ready", desired_replicas=2, ready_replicas=2)
    assert {r.replica_id for r in status.replicas} == {r.replica_id for r in first}
    assert all(r.ready and r.address for r in status.replicas)
    started = bus.of(ReplicaStarted)
    assert sorted(e.replica_id for e in started) == [r.replica_id for r in first]
    assert all(e.ports[8000] == r.ports[8000] for e, r in zip(sorted(started, key=lambda e: e.replica_id), first))

    await bus.apply(echo_spec(replicas=3))
    three = await serving(scheduler, 3)
    assert {r.replica_id for r in first} < {r.replica_id for r in three}  # scaled, not replaced
    await bus.phase("Ready", desired_replicas=3, ready_replicas=3)

    await bus.apply(echo_spec(replicas=1))
    (one,) = await serving(scheduler, 1)
    await bus.phase("Ready", desired_replicas=1, ready_replicas=1)
    stopped = bus.of(ReplicaStopped)
    assert sorted(e.replica_id for e in stopped) == sorted({r.replica_id for r in three} - {one.replica_id})
    assert all(e.reason == "scaled down to 1" for e in stopped)

    await bus.apply(echo_spec(replicas=1, enabled=False))
    await bus.phase("Stopped", desired_replicas=0, ready_replicas=0)
    assert await answers(one) is None
    assert await scheduler.runtime.replicas() == []

    await bus.apply(echo_spec(replicas=1, enabled=True))
    (again,) = await serving(scheduler, 1)
    await bus.phase("Ready", desired_replicas=1, ready_replicas=1)
    assert again.replica_id != one.replica_id

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{scheduler.ops_port}") as ops:
        assert (await ops.get("/healthz")).json() == {"healthy": True}
        assert "berth_scheduler_reconcile_duration_seconds_count" in (await ops.get("/metrics")).text

    await bus.delete()
    await bus.phase("Deleted")
    assert await scheduler.runtime.replicas() == [] and await scheduler.runtime.workloads() == []
    assert await answers(again) is None
    assert bus.of(ReplicaStopped)[-1].reason == "deployment deleted"


@pytest.mark.slow
async def test_a_user_scale_decision_scales_without_a_spec_version(scheduler: SchedulerHandle, bus: Bus) -> None:
    await bus.apply(echo_spec(replicas=1))
    (first,) = await serving(scheduler, 1)
    await bus.phase("Ready", ready_replicas=1, replicas_source="spec")
    decision = DeploymentScaled(
        deployment_id=DEPLOYMENT, project="default", slug="echo", source="user", replicas=2,
        spec_version=bus.version, spec_replicas=1,
    )  # fmt: skip
    await publish(bus.broker, decision)
    two = await serving(scheduler, 2)
    assert first.replica_id in {r.replica_id for r in two}
    await bus.phase("Ready", desired_replicas=2, ready_replicas=2, replicas_source="user")
    assignment = await eventually(
        lambda: (t := bus.of(TrafficAssigned)) and len(t[-1].targets[0].replicas) == 2 and t[-1], what="assignment of 2"
    )
    assert assignment.targets[0].percent == 100 and assignment.spec_version == 1


@pytest.mark.slow
async def test_command_change_starts_new_replicas_ready_before_old_stop(
    scheduler: SchedulerHandle, bus: Bus
) -> None:
    await bus.apply(echo_spec(replicas=2))
    old = await serving(scheduler, 2)
    await bus.phase("Ready", ready_replicas=2)

    # Blue-green (no hold): the whole new set is ready before the first old replica stops. The default
    # rolling update steps within maxSurge/maxUnavailable instead (tests/unit/test_scheduler_strategies.py).
    blue_green = {"type": "blue-green", "scaleDownDelaySeconds": 0}
    await bus.apply(echo_spec(replicas=2, command=[sys.executable, ECHO, "--version-two"], updateStrategy=blue_green))
    await eventually(lambda: len(bus.of(ReplicaStopped)) == 2, what="old replicas stopped")
    new = await serving(scheduler, 2)
    assert not {r.replica_id for r in new} & {r.replica_id for r in old}
    for replica in new:
        assert (await answers(replica))["argv"] == ["--version-two"]  # type: ignore[index]
    status = await bus.phase("Ready", desired_replicas=2, ready_replicas=2)
    assert {r.replica_id for r in status.replicas} == {r.replica_id for r in new}

    # Order on the bus: every new replica started and was ready before the first old one stopped.
    def position(kind: type[Event], replica_id: str, **match: Any) -> int:
        return next(
            i for i, e in enumerate(bus.events)
            if isinstance(e, kind) and e.replica_id == replica_id and all(getattr(e, k) == v for k, v in match.items())
        )  # fmt: skip

    first_stop = min(position(ReplicaStopped, r.replica_id) for r in old)
    assert all(position(ReplicaStarted, r.replica_id) < first_stop for r in new)
    assert all(position(ReplicaHealthChanged, r.replica_id, ready=True) < first_stop for r in new)
    assert {e.reason for e in bus.of(ReplicaStopped)} == {"replaced by spec version 2"}
    # Traffic: the assignment with only the new replicas was published before the first old one stopped.
    cut_over = next(
        i for i, e in enumerate(bus.events)
        if isinstance(e, TrafficAssigned) and {s.replica_id for t in e.targets for s in t.replicas} == {r.replica_id for r in new}
    )  # fmt: skip
    assert cut_over < first_stop
    generations = [e.generation for e in bus.of(TrafficAssigned)]
    assert generations == sorted(set(generations))


@pytest.mark.slow
async def test_missing_secret_fails_naming_the_variable_then_runs_once_it_exists(
    scheduler: SchedulerHandle, bus: Bus, js: JetStreamContext
) -> None:
    spec = echo_spec(replicas=1, env=[{"name": "API_KEY", "value": "secret:model-key"}])
    await bus.apply(spec)
    status = await bus.phase("Failed")
    assert "API_KEY" in status.reason and "model-key" in status.reason
    assert await scheduler.runtime.replicas() == []

    secrets = await SecretStore.open(js)
    await secrets.put("default", "model-key", "value-never-on-the-bus")
    (replica,) = await serving(scheduler, 1)  # the periodic reconcile picks it up
    assert (await answers(replica, "/?env=API_KEY"))["env"] == {"API_KEY": "value-never-on-the-bus"}  # type: ignore[index]
    await bus.phase("Ready", ready_replicas=1)
    assert all("value-never-on-the-bus" not in e.model_dump_json() for e in bus.events)


@pytest.mark.slow
async def test_health_check_change_keeps_processes_and_reannounces_them(scheduler: SchedulerHandle, bus: Bus) -> None:
    await bus.apply(echo_spec(replicas=2))
    before = await serving(scheduler, 2)
    await bus.phase("Ready", ready_replicas=2)

    second = await bus.apply(echo_spec(replicas=2, healthChecks={"readiness": {"path": "/ready", "periodSeconds": 1}}))
    await eventually(lambda: len(bus.of(ReplicaStarted)) == 4, what="replicas re-announced")
    after = await serving(scheduler, 2)
    assert [(r.replica_id, r.pid) for r in after] == [(r.replica_id, r.pid) for r in before]
    reannounced = bus.of(ReplicaStarted)[2:]
    assert {e.spec_id for e in reannounced} == {second.spec_id}
    assert all(e.health_checks.readiness and e.health_checks.readiness.path == "/ready" for e in reannounced)
    assert bus.of(ReplicaStopped) == []
    assert not [e for e in bus.of(ReplicaHealthChanged) if e.occurred_at > second.occurred_at and not e.ready]
    await bus.phase("Ready", spec_id=second.spec_id, ready_replicas=2)


@pytest.mark.slow
async def test_crashing_replica_is_crash_loop_back_off_with_its_log_tail(scheduler: SchedulerHandle, bus: Bus) -> None:
    crash = [sys.executable, "-c", "print('loading model'); print('no such model: iris'); raise SystemExit(3)"]
    await bus.apply(echo_spec(replicas=1, command=crash))
    status = await bus.phase("CrashLoopBackOff")
    assert "exit code 3" in status.reason and "restarting in" in status.reason
    (replica,) = status.replicas
    assert replica.last_exit_code == 3 and replica.log_tail[-1] == "no such model: iris"
    exited, *later = bus.of(ReplicaExited)
    assert exited.exit_code == 3 and exited.log_tail == ["loading model", "no such model: iris"]
    assert not exited.next_restart_in_seconds  # the kubelet restarts at once after a first exit
    assert any(e.next_restart_in_seconds for e in later)  # the next ones wait the back-off


@pytest.mark.slow
async def test_restart_request_restarts_the_process_once(scheduler: SchedulerHandle, bus: Bus) -> None:
    await bus.apply(echo_spec(replicas=1))
    (replica,) = await serving(scheduler, 1)
    await bus.phase("Ready", ready_replicas=1)
    stale = ReplicaRestartRequested(
        deployment_id=DEPLOYMENT, project="default", slug="echo", replica_id=replica.replica_id,
        spec_id="x", reason="liveness probe failed 3 consecutive times", occurred_at=utcnow() - timedelta(hours=1),
    )  # fmt: skip
    request = stale.model_copy(update={"event_id": "restart-1", "occurred_at": utcnow()})

    await publish(bus.broker, stale)  # about a process older than the running one: ignored
    await publish(bus.broker, request)
    restarted = await eventually(
        lambda: [e for e in bus.of(ReplicaStarted) if e.restart_count == 1], what="restarted replica announced"
    )
    (now,) = await serving(scheduler, 1)
    assert now.replica_id == replica.replica_id and now.pid != replica.pid and now.restart_count == 1
    assert restarted[0].ports == replica.ports
    assert [e.restart_count for e in bus.of(ReplicaExited)] == [0]
    await bus.phase("Ready", ready_replicas=1)


@pytest.mark.slow
async def test_logs_rpc_returns_tail_then_only_new_lines(scheduler: SchedulerHandle, bus: Bus, nc: Client) -> None:
    await bus.apply(echo_spec(replicas=1))
    (replica,) = await serving(scheduler, 1)

    async def ask(**request: Any) -> dict[str, Any]:
        reply = await nc.request(LOGS_RPC, json.dumps({"deployment_id": DEPLOYMENT, **request}).encode(), timeout=5)
        return json.loads(reply.data)

    async def requests_logged(since: str) -> dict[str, Any] | None:
        reply = await ask(since=since)
        return reply if [line["line"] for line in reply["lines"]][-2:] == ["echo request GET /one", "echo request GET /two"] else None

    first = await ask(tail=10)
    written = first["lines"][0].pop("time")
    assert first["lines"][0] == {"replica_id": replica.replica_id, "offset": 0, "line": f"echo listening on {replica.ports[8000]}",
                                 "replaced": False}  # fmt: skip
    assert datetime.fromisoformat(written) <= datetime.now(UTC)  # when the shim read the line
    seen = len(first["lines"])  # the listening line, and the requests `serving` made
    await answers(replica, "/one")
    await answers(replica, "/two")
    follow = await eventually(lambda: requests_logged(first["next"]), what="new lines")
    assert [(line["offset"], line["replica_id"]) for line in follow["lines"]] == [(seen, replica.replica_id), (seen + 1, replica.replica_id)]
    assert (await ask(since=follow["next"]))["lines"] == []


@pytest.mark.slow
async def test_stop_with_stop_replicas_stops_and_announces_every_replica(
    scheduler_settings: Settings, nc: Client, bus: Bus, health_monitor: HealthMonitorHandle
) -> None:
    handle = await start_scheduler(scheduler_settings)
    await bus.apply(echo_spec(replicas=2))
    replicas = await serving(handle, 2)
    await handle.stop(stop_replicas=True)
    await eventually(lambda: len(bus.of(ReplicaStopped)) == 2, what="replicas announced stopped")
    assert {e.reason for e in bus.of(ReplicaStopped)} == {"berth stopped"}
    for replica in replicas:
        assert await answers(replica) is None


# -- the scheduler as its own process ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


class SchedulerProcess:
    def __init__(self, settings: Settings, logs: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.logs = logs
        self.env = env or {}  # more settings, e.g. the kubernetes runtime's
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, stop_replicas_on_exit: bool = False) -> None:
        ops_port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BERTH_NATS_URL": self.settings.resolved_nats_url,
            "BERTH_DATA_DIR": str(self.settings.data_dir),
            "BERTH_SCHEDULER_OPS_PORT": str(ops_port),
            "BERTH_RECONCILE_INTERVAL_SECONDS": "1",
            "BERTH_STOP_GRACE_SECONDS": "2",
            "BERTH_STOP_REPLICAS_ON_EXIT": str(stop_replicas_on_exit).lower(),
            **self.env,
        }
        with self.logs.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.scheduler"], env=env, cwd=REPO, stdout=log, stderr=log
            )
        wait_for_port("127.0.0.1", ops_port, timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(30)


@pytest.fixture
def scheduler_process(scheduler_settings: Settings, tmp_path: Path) -> Iterator[SchedulerProcess]:
    process = SchedulerProcess(scheduler_settings, tmp_path / "scheduler.log")
    yield process
    if process.process is not None and process.process.poll() is None:
        process.signal(signal.SIGKILL)


@pytest.fixture
async def no_replica_left(scheduler_settings: Settings) -> AsyncIterator[None]:
    yield
    cleaner = LocalRuntime(scheduler_settings.data_dir / "replicas", grace_seconds=1.0)
    await cleaner.start()
    await cleaner.close(stop_replicas=True)


def command_pid(settings: Settings, replica_id: str) -> int:
    """The pid of the replica's command, as its shim recorded it."""
    return int((settings.data_dir / "replicas" / replica_id / "pid").read_text())


def shim_count(settings: Settings) -> int:
    marker = str(settings.data_dir / "replicas")
    return sum(
        1 for p in psutil.process_iter(["cmdline"])
        if any(arg.startswith(marker) for arg in p.info["cmdline"] or []) and "--dir" in (p.info["cmdline"] or [])
    )  # fmt: skip


async def answers_as(event: ReplicaStarted) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"http://{event.address}/")
    except httpx.TransportError:
        return False
    return response.status_code == 200 and json.loads(response.text)["replica_id"] == event.replica_id


@pytest.mark.slow
async def test_killed_scheduler_leaves_replicas_serving_and_a_new_one_adopts_them(
    scheduler_process: SchedulerProcess,
    scheduler_settings: Settings,
    bus: Bus,
    health_monitor: HealthMonitorHandle,
    no_replica_left: None,
) -> None:
    scheduler_process.start()
    await bus.apply(echo_spec(replicas=2))
    await bus.phase("Ready", ready_replicas=2)
    started: list[ReplicaStarted] = bus.of(ReplicaStarted)
    pids = {e.replica_id: command_pid(scheduler_settings, e.replica_id) for e in started}

    scheduler_process.signal(signal.SIGKILL)
    for event in started:
        assert await answers_as(event), "a replica stopped answering when the scheduler died"

    scheduler_process.start(stop_replicas_on_exit=True)
    await bus.apply(echo_spec(replicas=3))
    await bus.phase("Ready", desired_replicas=3, ready_replicas=3)
    assert shim_count(scheduler_settings) == 3
    assert {e.replica_id: command_pid(scheduler_settings, e.replica_id) for e in started} == pids
    assert all([await answers_as(e) for e in started])
    ids = [e.replica_id for e in bus.of(ReplicaStarted)]
    assert len(ids) == len(set(ids)) == 3  # the adopted two were not announced again
    assert bus.of(ReplicaStopped) == []

    statuses = len(bus.of(DeploymentStatusChanged))
    scheduler_process.signal(signal.SIGTERM)  # as `berth up` stops it: replicas go too
    assert scheduler_process.process is not None and scheduler_process.process.returncode == 0
    await eventually(lambda: len(bus.of(ReplicaStopped)) == 3, what="every replica announced stopped")
    assert shim_count(scheduler_settings) == 0
    assert len(bus.of(DeploymentStatusChanged)) == statuses
