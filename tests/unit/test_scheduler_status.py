"""The phase and reason of a deployment, from what the scheduler observed (pure)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from libs.events import (
    DeploymentRef,
    IntegrationsProgress,
    IntegrationsReady,
    ProbeResult,
    ReplicaExited,
    ReplicaHealthChanged,
    SpecApplied,
    utcnow,
)
from libs.runtime.base import Replica
from libs.spec import validate_spec
from services.scheduler.desired import Desired, compose
from services.scheduler.status import (
    ObservedReplica,
    compute_status,
    deleted_status,
    same_status,
    waiting_for_integrations,
)


def applied(replicas: int = 2, enabled: bool = True) -> Desired:
    spec = validate_spec(
        {"name": "iris", "image": "python:3.11", "command": ["serve"], "enabled": enabled,
         "resources": {"ports": [8000], "replicas": replicas}}
    )  # fmt: skip
    event = SpecApplied(deployment_id="d1", project="default", slug="iris", name="iris", spec_id="s2", spec_version=2, spec=spec)
    return compose(event, {})


def health(replica_id: str, ready: bool, probe_ok: bool | None = None, status_code: int | None = None) -> ReplicaHealthChanged:
    probe = None if probe_ok is None else ProbeResult(probe="readiness", ok=probe_ok, status_code=status_code)
    return ReplicaHealthChanged(
        deployment_id="d1", project="default", slug="iris", replica_id=replica_id, spec_id="s2",
        address="127.0.0.1:1", started=True, ready=ready, live=True, last_probe=probe,
    )  # fmt: skip


def observed(
    replica_id: str, state: str = "running", ready: bool = False, current: bool = True, **extra: Any
) -> ObservedReplica:
    replica = Replica(
        replica_id=replica_id, workload="w", deployment_id="d1", spec_id="s2", host="127.0.0.1",
        ports={8000: 40000}, state=state, restart_count=extra.pop("restart_count", 0),  # type: ignore[arg-type]
        last_exit_code=extra.pop("exit_code", None),
    )  # fmt: skip
    h = extra.pop("health", health(replica_id, ready) if ready else None)
    return ObservedReplica(replica, "s2", current, 8000, health=h, **extra)


def test_ready_when_every_desired_replica_is_ready() -> None:
    status = compute_status(applied(2), [observed("a", ready=True), observed("b", ready=True)])
    assert (status.phase, status.reason, status.desired_replicas, status.ready_replicas) == (
        "Ready", "2/2 replicas ready", 2, 2,
    )
    assert [r.address for r in status.replicas] == ["127.0.0.1:40000", "127.0.0.1:40000"]


def test_provisioning_while_replicas_start() -> None:
    status = compute_status(applied(3), [observed("a", ready=True), observed("b", state="starting"), observed("c")])
    assert (status.phase, status.reason) == ("Provisioning", "1/3 replicas ready; 2 starting")


def test_degraded_when_a_replica_fails_readiness() -> None:
    failing = health("b", ready=False, probe_ok=False, status_code=503)
    status = compute_status(applied(2), [observed("a", ready=True), observed("b", health=failing)])
    assert status.phase == "Degraded"
    assert status.reason == "1/2 replicas ready; replica b not ready: readiness probe returned 503"


def test_crash_loop_back_off_names_the_replica_the_delay_and_the_exit_code() -> None:
    exit = ReplicaExited(
        deployment_id="d1", project="default", slug="iris", replica_id="b", spec_id="s2",
        exit_code=1, restart_count=2, next_restart_in_seconds=20.0, log_tail=["Traceback", "ImportError: torch"],
    )  # fmt: skip
    crashed = observed("b", state="backoff", exit_code=1, restart_count=2, exit=exit)
    status = compute_status(applied(3), [observed("a", ready=True), observed("c", ready=True), crashed])
    assert status.phase == "CrashLoopBackOff"
    assert status.reason == "2/3 replicas ready; replica b restarting in 20 s (exit code 1)"
    assert status.replicas[1].log_tail == ["Traceback", "ImportError: torch"]
    assert status.replicas[1].restart_count == 2 and status.replicas[1].last_exit_code == 1


def test_stopped_only_once_no_replica_is_left() -> None:
    assert compute_status(applied(2, enabled=False), [observed("a", state="stopping")]).phase == "Provisioning"
    status = compute_status(applied(2, enabled=False), [])
    assert (status.phase, status.reason, status.desired_replicas) == ("Stopped", "stopped (enabled: false)", 0)


def test_failed_says_why_and_that_the_previous_version_still_serves() -> None:
    error = "env API_KEY refers to secret 'key', which project 'default' does not have"
    assert compute_status(applied(1), [], error).reason == error
    status = compute_status(applied(1), [observed("old", ready=True, current=False)], error)
    assert status.phase == "Failed"
    assert status.reason == f"{error}; 1 replica of the previous version keeps serving"


def test_update_in_progress_then_stuck() -> None:
    old = [observed("o1", ready=True, current=False), observed("o2", ready=True, current=False)]
    status = compute_status(applied(2), [*old, observed("n1", ready=True), observed("n2")])
    assert status.phase == "Provisioning"
    assert status.reason == "updating: 1/2 new replicas ready; 2 replicas of the previous version keep serving"
    assert status.ready_replicas == 3  # every replica that takes traffic
    stuck = compute_status(applied(2), [*old, observed("n1", ready=True), observed("n2", state="backoff", exit_code=2)])
    assert stuck.phase == "Degraded"
    assert stuck.reason.startswith("update stuck: replica n2 exited (exit code 2)")


def test_deleted() -> None:
    status = deleted_status(DeploymentRef(deployment_id="d1", project="default", slug="iris"))
    assert (status.phase, status.spec_id, status.desired_replicas) == ("Deleted", None, 0)


def test_same_status_ignores_when_it_was_observed() -> None:
    before = compute_status(applied(1), [observed("a", health=health("a", True, probe_ok=True))])
    later_probe = health("a", True, probe_ok=True)
    later_probe.last_probe.at = utcnow() + timedelta(seconds=30)  # type: ignore[union-attr]
    assert same_status(before, compute_status(applied(1), [observed("a", health=later_probe)]))
    assert not same_status(before, compute_status(applied(1), [observed("a")]))
    assert not same_status(None, before)


def test_a_failing_liveness_probe_is_not_called_not_ready() -> None:
    failing = health("a", ready=True, probe_ok=False, status_code=500)
    failing.last_probe.probe = "liveness"  # type: ignore[union-attr]
    status = compute_status(applied(2), [observed("a", health=failing), observed("b")])
    assert (status.phase, status.reason) == ("Degraded", "1/2 replicas ready; replica a not live: liveness probe returned 500")


def test_a_restarted_replica_says_why() -> None:
    requested = (1, "liveness probe failed 3 consecutive times")
    again = observed("a", state="starting", restart_count=1, restart_reason=requested[1])
    status = compute_status(applied(1), [again])
    assert status.reason == "0/1 replicas ready; 1 starting; replica a restarted: liveness probe failed 3 consecutive times"
    assert status.replicas[0].last_restart_reason == requested[1]


def test_a_fetch_under_way_shows_its_progress_until_the_outcome() -> None:
    spec = validate_spec(
        {"name": "iris", "image": "python:3.11", "command": ["serve"], "resources": {"ports": [8000]},
         "integrations": [{"type": "s3", "name": "weights", "path": "/models", "url": "s3://b/"}]}
    )  # fmt: skip
    event = SpecApplied(deployment_id="d1", project="default", slug="iris", name="iris", spec_id="s2", spec_version=2, spec=spec)
    desired = compose(event, {})
    ref = {"deployment_id": "d1", "project": "default", "slug": "iris", "revision_id": desired.revision_id, "spec_version": 2}
    progress = IntegrationsProgress(**ref, integration="weights", fetched_files=3, fetched_bytes=4096)
    status = compute_status(desired, [], pending=waiting_for_integrations(desired, progress), integrations=progress)
    assert status.phase == "Provisioning"
    assert status.reason.startswith("waiting for integrations weights to be fetched (weights: 3 files, 4096 bytes so far)")
    assert status.fetching is not None and status.fetching.model_dump() == {
        "integration": "weights", "fetched_files": 3, "fetched_bytes": 4096,
    }  # fmt: skip
    ready = IntegrationsReady(**ref, integrations=[])
    done = compute_status(desired, [], pending=waiting_for_integrations(desired, ready), integrations=ready)
    assert done.fetching is None and "so far" not in done.reason
