"""Replica lifecycle events from comparing the runtime's replica with what the bus was told (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from libs.events import (
    DeploymentRef,
    ReplicaExited,
    ReplicaStarted,
    ReplicaStopped,
    utcnow,
)
from libs.runtime.base import Replica
from libs.spec import HealthChecks, Probe
from services.scheduler.lifecycle import Ledger, Serving, lifecycle_events

SERVING = Serving(DeploymentRef(deployment_id="d1", project="default", slug="iris"), "s1", 8000, HealthChecks())
STARTED_AT = utcnow()
RUNNING = Replica(
    replica_id="r1", workload="w", deployment_id="d1", spec_id="s1", host="127.0.0.1",
    ports={8000: 41000}, state="running", pid=100, started_at=STARTED_AT,
)  # fmt: skip


async def tail(_: str) -> list[str]:
    return ["line 1", "boom"]


async def test_a_running_replica_is_announced_once() -> None:
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "scaled down")
    assert isinstance(started, ReplicaStarted)
    assert (started.address, started.primary_port, started.restart_count, started.spec_id) == ("127.0.0.1:41000", 8000, 0, "s1")
    assert await lifecycle_events(RUNNING, started, SERVING, tail, "scaled down") == []
    # Same process: the same event id, whoever computes it (a restarted scheduler too).
    (again,) = await lifecycle_events(RUNNING, None, SERVING, tail, "scaled down")
    assert again.event_id == started.event_id


async def test_nothing_is_announced_before_the_process_runs() -> None:
    assert await lifecycle_events(replace(RUNNING, state="starting", pid=None), None, SERVING, tail, "") == []


async def test_a_new_spec_version_that_only_scales_keeps_the_announcement() -> None:
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "")
    assert await lifecycle_events(RUNNING, started, replace(SERVING, spec_id="s2"), tail, "") == []


async def test_new_health_checks_reannounce_the_same_replica() -> None:
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "")
    checks = HealthChecks(readiness=Probe(path="/ready"))
    (again,) = await lifecycle_events(RUNNING, started, replace(SERVING, spec_id="s2", health_checks=checks), tail, "")
    assert isinstance(again, ReplicaStarted) and again.event_id != started.event_id
    assert (again.replica_id, again.restart_count, again.spec_id) == ("r1", 0, "s2")
    assert again.health_checks == checks


async def test_a_crash_is_announced_with_exit_code_delay_and_log_tail() -> None:
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "")
    crashed = replace(RUNNING, state="backoff", pid=None, last_exit_code=1, next_restart_at=utcnow() + timedelta(seconds=10))
    (exited,) = await lifecycle_events(crashed, started, SERVING, tail, "")
    assert isinstance(exited, ReplicaExited)
    assert (exited.exit_code, exited.restart_count, exited.log_tail) == (1, 0, ["line 1", "boom"])
    assert exited.next_restart_in_seconds is not None and 9 < exited.next_restart_in_seconds <= 10
    assert await lifecycle_events(crashed, exited, SERVING, tail, "") == []


async def test_a_restart_missed_between_two_looks_is_an_exit_then_a_start_in_that_order() -> None:
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "")
    restarted = replace(RUNNING, pid=200, restart_count=1, last_exit_code=137, started_at=utcnow())
    exited, started_again = await lifecycle_events(restarted, started, SERVING, tail, "")
    assert isinstance(exited, ReplicaExited) and (exited.restart_count, exited.exit_code) == (0, 137)
    assert isinstance(started_again, ReplicaStarted) and started_again.restart_count == 1
    assert started_again.occurred_at >= exited.occurred_at  # consumers order a replica's events by time


async def test_a_stopping_replica_is_announced_stopped_and_leaves_the_ledger() -> None:
    ledger = Ledger()
    (started,) = await lifecycle_events(RUNNING, None, SERVING, tail, "")
    ledger.record(started)
    (stopped,) = await lifecycle_events(replace(RUNNING, state="stopping"), started, SERVING, tail, "scaled down to 1")
    assert isinstance(stopped, ReplicaStopped) and stopped.reason == "scaled down to 1"
    ledger.record(stopped)
    assert ledger.last("r1") is None and ledger.started("r1") is None and len(ledger) == 0
