"""The health-monitor end to end: real nats-server, real replica servers, the monitor in-process.

Replicas are `tests/servers/switchable.py` processes whose probe answers the tests flip. Probes run
every second; the tests await events and request counts, never a fixed time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.bus import make_broker, publish
from libs.config import Settings
from libs.events import (
    Event,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    decode_event,
    utcnow,
)
from libs.natsd import free_port
from libs.spec import Header, HealthChecks, Probe
from services.health_monitor import HealthMonitorHandle, start_health_monitor
from tests.conftest import StartSwitchable
from tests.helpers import eventually
from tests.servers.switchable import SwitchableServer

SPEC_PORT = 8000


def fast(path: str, **fields: Any) -> Probe:
    return Probe(path=path, periodSeconds=fields.pop("periodSeconds", 1), **fields)


class Recorder:
    """Every health event and restart request the monitor publishes, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def on_message(self, message: Msg) -> None:
        self.events.append(decode_event(message.data))

    def health(self, replica_id: str) -> list[ReplicaHealthChanged]:
        return [e for e in self.events if isinstance(e, ReplicaHealthChanged) and e.replica_id == replica_id]

    def last_health(self, replica_id: str) -> ReplicaHealthChanged | None:
        health = self.health(replica_id)
        return health[-1] if health else None

    def restarts(self, replica_id: str) -> list[ReplicaRestartRequested]:
        return [
            e for e in self.events if isinstance(e, ReplicaRestartRequested) and e.replica_id == replica_id
        ]


@pytest.fixture
async def recorder(nc: Client) -> Recorder:
    recorder = Recorder()
    await nc.subscribe("berth.health.v1.>", cb=recorder.on_message)
    await nc.subscribe("berth.control.v1.>", cb=recorder.on_message)
    return recorder


@pytest.fixture
async def broker(nats_url: str, nc: Client) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url, "test")
    await broker.start()
    yield broker
    await broker.stop()


@pytest.fixture
def monitor_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"health_monitor_ops_port": 0})


StartMonitor = Callable[..., Awaitable[HealthMonitorHandle]]


@pytest.fixture
async def start_monitor(monitor_settings: Settings, nc: Client) -> AsyncIterator[StartMonitor]:
    handles: list[HealthMonitorHandle] = []

    async def start(**kwargs: Any) -> HealthMonitorHandle:
        handles.append(await start_health_monitor(monitor_settings, **kwargs))
        return handles[-1]

    yield start
    for handle in handles:
        await handle.stop()


@pytest.fixture
async def monitor(start_monitor: StartMonitor) -> HealthMonitorHandle:
    return await start_monitor()


def started(
    replica_id: str, port: int, restart_count: int = 0, spec_id: str = "spec-1", **checks: Probe
) -> ReplicaStarted:
    return ReplicaStarted(
        deployment_id="dep",
        project="default",
        slug="iris",
        spec_id=spec_id,
        replica_id=replica_id,
        host="127.0.0.1",
        ports={SPEC_PORT: port},
        primary_port=SPEC_PORT,
        restart_count=restart_count,
        health_checks=HealthChecks(**checks),
    )


def stopped(replica: ReplicaStarted) -> ReplicaStopped:
    return ReplicaStopped(
        **replica.model_dump(include={"deployment_id", "project", "slug", "spec_id", "replica_id"}),
        reason="scaled down",
    )


async def until_probed(server: SwitchableServer, path: str, more_than: int = 0, timeout: float = 10) -> int:
    return await eventually(
        lambda: _count_above(server, path, more_than), timeout, what=f"{path} > {more_than}"
    )


async def _count_above(server: SwitchableServer, path: str, floor: int) -> int:
    count = await server.count(path)
    return count if count > floor else 0


async def ready_is(
    recorder: Recorder, replica_id: str, ready: bool, timeout: float = 10
) -> ReplicaHealthChanged:
    def check() -> ReplicaHealthChanged | None:
        last = recorder.last_health(replica_id)
        return last if last is not None and last.ready is ready else None

    return await eventually(check, timeout, what=f"{replica_id} ready={ready}")


async def test_a_replica_without_probes_is_started_and_live_at_once_and_ready_when_its_port_accepts(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, switchable: StartSwitchable
) -> None:
    port = free_port()
    await publish(broker, started("r1", port))
    first = await eventually(lambda: recorder.last_health("r1"), what="first health event")
    assert (first.started, first.ready, first.live) == (True, False, True)
    assert first.address == f"127.0.0.1:{port}"
    await eventually(lambda: (h := monitor.monitor.health("r1")) and h.last_probe, what="a tcp probe")
    assert not recorder.last_health("r1").ready, "nothing listens on the port yet: no traffic"  # type: ignore[union-attr]

    await switchable(port=port, wait=False)  # the model server finally binds its port
    event = await ready_is(recorder, "r1", True, timeout=5)
    assert event.last_probe is not None and event.last_probe.probe == "tcp"


async def test_defaults_probe_the_primary_port_at_once(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    # periodSeconds defaults to 10 and initialDelaySeconds to 0: the first probe is immediate.
    began = time.monotonic()
    await publish(broker, started("r1", server.port, readiness=Probe(path="/readiness")))
    event = await ready_is(recorder, "r1", True, timeout=5)
    assert time.monotonic() - began < 5
    assert event.last_probe is not None and event.last_probe.status_code == 200
    assert await server.count("/readiness") == 1


async def test_probe_port_is_a_spec_port_mapped_to_the_replica_and_headers_are_sent(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    replica = started(
        "r1",
        free_port(),
        readiness=fast("/readiness", port=9000, headers=[Header(name="X-Probe", value="yes")]),
    )
    replica.ports[9000] = server.port  # the probe port of the spec, not the traffic port
    await publish(broker, replica)
    await ready_is(recorder, "r1", True)
    assert (await server.state())["headers"]["/readiness"]["X-Probe"] == "yes"


@pytest.mark.slow
async def test_startup_gates_readiness_and_liveness(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, switchable: StartSwitchable
) -> None:
    server = await switchable(startup="fail")
    await publish(
        broker,
        started(
            "r1",
            server.port,
            startup=fast("/startup", failureThreshold=30),
            readiness=fast("/readiness"),
            liveness=fast("/liveness"),
        ),
    )
    await until_probed(server, "/startup", more_than=2)
    counts = (await server.state())["counts"]
    assert "/readiness" not in counts and "/liveness" not in counts
    assert all(not (h.started or h.ready or h.live) for h in recorder.health("r1"))

    await server.switch(startup="ok")
    await ready_is(recorder, "r1", True)
    assert recorder.last_health("r1").started and recorder.last_health("r1").live  # type: ignore[union-attr]
    startup_probes = await server.count("/startup")
    await until_probed(server, "/readiness", more_than=2)
    assert await server.count("/startup") == startup_probes, "a startup probe that succeeded stops"
    assert await server.count("/liveness") >= 2


@pytest.mark.slow
async def test_startup_never_succeeding_requests_one_restart_after_its_threshold(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, switchable: StartSwitchable
) -> None:
    server = await switchable(startup="fail")
    await publish(
        broker,
        started(
            "r1", server.port, startup=fast("/startup", failureThreshold=2), readiness=fast("/readiness")
        ),
    )
    request = await eventually(lambda: recorder.restarts("r1"), what="restart requested")
    assert request[0].event_id == "restart-r1-0-startup"
    assert "startup probe failed 2 consecutive times" in request[0].reason
    assert await server.count("/startup") == 2
    assert await server.count("/readiness") == 0


@pytest.mark.slow
async def test_readiness_failing_its_threshold_leaves_the_pool_and_success_brings_it_back(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await publish(
        broker,
        started(
            "r1", server.port, readiness=fast("/readiness", failureThreshold=2), liveness=fast("/liveness")
        ),
    )
    await ready_is(recorder, "r1", True)
    before = await server.count("/readiness")
    await server.switch(readiness=404)
    unready = await ready_is(recorder, "r1", False)
    assert await server.count("/readiness") >= before + 2
    assert unready.live and unready.last_probe is not None and unready.last_probe.status_code == 404
    await server.switch(readiness=302)
    back = await ready_is(recorder, "r1", True)
    assert back.last_probe is not None and back.last_probe.status_code == 302
    assert recorder.restarts("r1") == []


@pytest.mark.slow
async def test_readiness_needs_its_success_threshold_in_a_row_before_traffic(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    # worker.go: readiness starts as Failure and a success changes it only once successThreshold
    # successes came in a row.
    await publish(broker, started("r1", server.port, readiness=fast("/readiness", successThreshold=3)))
    await ready_is(recorder, "r1", True)
    assert await server.count("/readiness") in (3, 4)  # the 4th only if it raced the event
    assert not any(h.ready for h in recorder.health("r1")[:-1])


@pytest.mark.slow
async def test_failures_must_be_consecutive(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await publish(broker, started("r1", server.port, readiness=fast("/readiness", failureThreshold=3)))
    await ready_is(recorder, "r1", True)
    for _ in range(2):  # fail, fail, ok, fail, fail, ok: four failures, never three in a row
        count = await server.count("/readiness")
        await server.switch(readiness=500)
        await until_probed(server, "/readiness", more_than=count + 1)
        await server.switch(readiness="ok")
        await until_probed(server, "/readiness", more_than=count + 2)
    assert all(h.ready for h in recorder.health("r1")[1:]), "readiness never flapped"


@pytest.mark.slow
async def test_liveness_failing_requests_exactly_one_restart_until_the_replica_starts_again(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await publish(
        broker,
        started(
            "r1",
            server.port,
            readiness=fast("/readiness/r1"),
            liveness=fast("/liveness/r1", failureThreshold=2),
        ),
    )
    await publish(broker, started("clock", server.port, readiness=fast("/readiness/clock")))
    await ready_is(recorder, "r1", True)
    await server.switch(liveness="fail")
    [request] = await eventually(lambda: recorder.restarts("r1"), what="restart requested")
    assert request.event_id == "restart-r1-0-liveness"
    last = recorder.last_health("r1")
    assert last is not None and not last.live and not last.ready

    probed = (await server.state())["counts"]
    clock = await server.count("/readiness/clock")
    await until_probed(server, "/readiness/clock", more_than=clock + 3)  # three periods later...
    after = (await server.state())["counts"]
    assert (after["/liveness/r1"], after["/readiness/r1"]) == (
        probed["/liveness/r1"],
        probed["/readiness/r1"],
    )
    assert len(recorder.restarts("r1")) == 1, "one failure episode, one restart request"

    await server.switch(liveness="ok")
    await publish(
        broker,
        started(
            "r1",
            server.port,
            restart_count=1,
            readiness=fast("/readiness/r1"),
            liveness=fast("/liveness/r1", failureThreshold=2),
        ),
    )
    await until_probed(server, "/liveness/r1", more_than=probed["/liveness/r1"])
    await ready_is(recorder, "r1", True)


async def test_a_replica_announced_again_with_new_probes_stays_in_the_pool(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await publish(broker, started("r1", server.port, readiness=fast("/readiness/old")))
    await ready_is(recorder, "r1", True)
    # The scheduler re-announces the same process (same restart count) when a new spec changes probes.
    await publish(broker, started("r1", server.port, spec_id="spec-2", readiness=fast("/readiness/new")))
    await until_probed(server, "/readiness/new")
    renewed = await eventually(
        lambda: [h for h in recorder.health("r1") if h.spec_id == "spec-2"], what="spec-2"
    )
    assert all(h.ready for h in recorder.health("r1")[1:]), "the replica never left the pool"
    assert renewed[0].ready and renewed[0].restart_count == 0
    assert monitor.monitor.health("r1").ready  # type: ignore[union-attr]


@pytest.mark.slow
async def test_a_hanging_liveness_probe_fails_after_its_timeout_and_requests_a_restart(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await server.switch(liveness="hang")
    began = time.monotonic()
    await publish(
        broker, started("r1", server.port, liveness=fast("/liveness", timeoutSeconds=1, failureThreshold=1))
    )
    [request] = await eventually(lambda: recorder.restarts("r1"), what="restart requested")
    assert 1.0 <= time.monotonic() - began < 5
    assert request.reason == "liveness probe failed 1 consecutive times (last: timed out after 1s)"


async def test_initial_delay_counts_from_the_replica_start(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    replica = started("r1", server.port, readiness=fast("/readiness", initialDelaySeconds=60))
    replica.occurred_at = utcnow() - timedelta(seconds=60)  # started a minute ago: the delay is over
    await publish(broker, replica)
    await ready_is(recorder, "r1", True, timeout=5)


@pytest.mark.slow
async def test_stopped_or_exited_replicas_are_no_longer_probed_and_leave_the_pool(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    one = started("r1", server.port, readiness=fast("/readiness/r1"), liveness=fast("/liveness/r1"))
    two = started("r2", server.port, readiness=fast("/readiness/r2"))
    clock = started("clock", server.port, readiness=fast("/readiness/clock"))
    for replica in (one, two, clock):
        await publish(broker, replica)
    await ready_is(recorder, "r1", True)
    await ready_is(recorder, "r2", True)

    await publish(broker, stopped(one))
    exited = ReplicaExited(
        **stopped(two).model_dump(exclude={"reason", "kind", "event_id", "occurred_at"}),
        exit_code=1,
        restart_count=0,
    )
    await publish(broker, exited)
    for replica_id in ("r1", "r2"):
        gone = await ready_is(recorder, replica_id, False)
        assert not gone.started and not gone.live
    counts = (await server.state())["counts"]
    await until_probed(server, "/readiness/clock", more_than=counts["/readiness/clock"] + 2)
    after = (await server.state())["counts"]
    assert [after[p] for p in ("/readiness/r1", "/liveness/r1", "/readiness/r2")] == [
        counts[p] for p in ("/readiness/r1", "/liveness/r1", "/readiness/r2")
    ]

    stale = one.model_copy(update={"event_id": "replayed-start"})  # a redelivery of the old start
    await publish(broker, stale)
    await until_probed(server, "/readiness/clock", more_than=after["/readiness/clock"] + 1)
    assert await server.count("/readiness/r1") == counts["/readiness/r1"]
    assert not monitor.monitor.is_probing("r1")


@pytest.mark.slow
async def test_a_restarted_monitor_rebuilds_without_flapping_or_restarting(
    start_monitor: StartMonitor, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    first = await start_monitor()
    await publish(
        broker,
        started(
            "ok",
            server.port,
            readiness=fast("/readiness/ok"),
            liveness=fast("/liveness/ok", failureThreshold=2),
        ),
    )
    await publish(
        broker,
        started(
            "dead",
            server.port,
            liveness=fast("/liveness/dead", failureThreshold=1),
            readiness=fast("/readiness/dead"),
        ),
    )
    await ready_is(recorder, "ok", True)
    await server.switch(liveness=404)
    await eventually(lambda: recorder.restarts("dead"), what="restart of dead")
    await server.switch(liveness="ok")  # "ok" was failing liveness too, but fewer than 2 times in a row
    await first.stop()

    events_before = len(recorder.health("ok"))
    dead_probes = await server.count("/liveness/dead")
    second = await start_monitor()
    rebuilt = second.monitor.health("ok")
    assert rebuilt is not None and rebuilt.ready and not any(rebuilt.failures.values())
    counts = (await server.state())["counts"]
    for path in ("/liveness/ok", "/readiness/ok"):  # more probes than any threshold
        await until_probed(server, path, more_than=counts[path] + 2)

    assert all(h.ready and h.live for h in recorder.health("ok")[events_before:]), "no readiness flap"
    assert len(recorder.restarts("dead")) == 1 and recorder.restarts("ok") == []
    assert await server.count("/liveness/dead") == dead_probes, "a pending restart is not probed again"


async def test_a_replica_that_stopped_while_no_monitor_ran_is_taken_out_of_the_pool(
    start_monitor: StartMonitor, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    first = await start_monitor()
    replica = started("r1", server.port, readiness=fast("/readiness"))
    await publish(broker, replica)
    await ready_is(recorder, "r1", True)
    await first.stop()
    await publish(broker, stopped(replica))
    await start_monitor()
    gone = await ready_is(recorder, "r1", False)
    assert not gone.started and not gone.live


@pytest.mark.slow
async def test_heartbeat_republishes_the_last_probe(
    start_monitor: StartMonitor, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await start_monitor(heartbeat_seconds=1)
    await publish(broker, started("r1", server.port, readiness=fast("/readiness")))
    beats = await eventually(
        lambda: len(recorder.health("r1")) >= 4 and recorder.health("r1"), what="heartbeats"
    )
    assert all(b.ready for b in beats[1:])
    probe_times = [b.last_probe.at for b in beats[1:] if b.last_probe]
    assert probe_times == sorted(probe_times) and len(set(probe_times)) == len(probe_times)


async def test_ops_endpoint_serves_health_and_probe_metrics(
    monitor: HealthMonitorHandle, broker: NatsBroker, recorder: Recorder, server: SwitchableServer
) -> None:
    await publish(broker, started("r1", server.port, readiness=fast("/readiness")))
    await ready_is(recorder, "r1", True)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{monitor.ops_port}") as session:
        async with session.get("/healthz") as response:
            assert response.status == 200
        async with session.get("/metrics") as response:
            text = await response.text()
    assert 'berth_health_probes_total{kind="readiness",result="success"}' in text
