"""The per-replica state machine: Kubernetes probe semantics, without any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.events import ProbeResult
from libs.spec import HealthChecks, Probe
from services.health_monitor.prober import is_success
from services.health_monitor.state import Flags, ReplicaHealth
from services.health_monitor.watch import first_probe_delay

ALL_PROBES = HealthChecks(
    startup=Probe(path="/startup"), readiness=Probe(path="/readiness"), liveness=Probe(path="/liveness")
)


def ok(kind: str) -> ProbeResult:
    return ProbeResult(probe=kind, ok=True, status_code=200)  # type: ignore[arg-type]


def fail(kind: str, status: int = 503) -> ProbeResult:
    return ProbeResult(probe=kind, ok=False, status_code=status, error=f"HTTP {status}")  # type: ignore[arg-type]


def test_probe_defaults_are_those_of_the_docs() -> None:
    # seeds/003 and the Kubernetes API reference (core/v1 Probe): 0, 10, 1, 1, 3.
    probe = Probe(path="/health")
    assert (
        probe.initialDelaySeconds,
        probe.periodSeconds,
        probe.timeoutSeconds,
        probe.successThreshold,
        probe.failureThreshold,
    ) == (0, 10, 1, 1, 3)
    assert probe.port is None and probe.headers == []


def run(kind: str, results: str, success_threshold: int = 1, failure_threshold: int = 3) -> str:
    """Feed results ('+' success, '-' failure) to a fresh replica; after each: R ready, . not, ! restart."""
    health = ReplicaHealth.fresh(HealthChecks(readiness=Probe(path="/r"), liveness=Probe(path="/l")))
    seen = ""
    for mark in results:
        result = ok(kind) if mark == "+" else fail(kind)
        restart = health.record(result, failure_threshold, success_threshold)
        seen += "!" if restart else "R" if health.ready else "."
    return seen


# Each row is derived from pkg/kubelet/prober/worker.go (doProbe): resultRun counts equal results in a
# row; "Success or failure is below threshold - leave the probe state unchanged"; readiness starts at
# its initialValue results.Failure; liveness at Success. And from the API reference: successThreshold is
# "Minimum consecutive successes for the probe to be considered successful after having failed",
# failureThreshold "After a probe fails failureThreshold times in a row, Kubernetes considers that the
# overall check has failed".
@pytest.mark.parametrize(
    ("kind", "success_threshold", "failure_threshold", "results", "expected"),
    [
        # readiness starts failed: one success makes it ready with the default successThreshold 1
        ("readiness", 1, 3, "+", "R"),
        # ... and successThreshold successes in a row with a higher one, from the very start
        ("readiness", 3, 3, "+++", "..R"),
        # a failure in between starts the success run again
        ("readiness", 2, 3, "+-++", "...R"),
        # failures below failureThreshold leave a ready replica ready; a success breaks the run
        ("readiness", 1, 3, "+--+--", "RRRRRR"),
        ("readiness", 1, 3, "+---", "RRR."),
        # after having failed, successThreshold successes in a row are needed to be ready again
        ("readiness", 2, 3, "++---+-++", ".RRR....R"),
        # failureThreshold 1: the first failure counts
        ("readiness", 1, 1, "+-+", "R.R"),
        # berth's TCP readiness (no readiness probe) follows the same rules
        ("tcp", 1, 3, "---+", "...R"),
        # liveness: failureThreshold failures in a row restart, fewer do not
        ("liveness", 1, 3, "--+--", "....."),
        ("liveness", 1, 3, "--+---", ".....!"),
        ("liveness", 1, 1, "-", "!"),
    ],
)
def test_thresholds_follow_the_kubelet(
    kind: str, success_threshold: int, failure_threshold: int, results: str, expected: str
) -> None:
    assert run(kind, results, success_threshold, failure_threshold) == expected


def test_startup_succeeds_on_its_first_success_and_fails_after_its_threshold() -> None:
    # worker.go: startup's result is Set once its run reaches the threshold (successThreshold is 1 for
    # startup, validation.go); a failed startup restarts the container like a failed liveness probe.
    health = ReplicaHealth.fresh(ALL_PROBES)
    assert [health.record(fail("startup"), 3) for _ in range(2)] == [None, None]
    assert health.record(ok("startup"), 3) is None and health.started
    again = ReplicaHealth.fresh(ALL_PROBES)
    assert again.record(fail("startup"), 2) is None
    assert again.record(fail("startup"), 2) is not None and not again.started


def test_without_startup_probe_a_replica_is_started_and_live_at_once_but_not_ready() -> None:
    assert ReplicaHealth.fresh(HealthChecks()).flags == Flags(started=True, ready=False, live=True)


def test_with_startup_probe_nothing_is_true_until_startup_succeeds() -> None:
    health = ReplicaHealth.fresh(ALL_PROBES)
    assert health.flags == Flags(started=False, ready=False, live=False)
    assert health.record(ok("startup"), failure_threshold=3) is None
    assert health.flags == Flags(started=True, ready=False, live=True)


def test_readiness_needs_threshold_consecutive_failures_and_one_success_to_come_back() -> None:
    health = ReplicaHealth.fresh(HealthChecks(readiness=Probe(path="/r")))
    health.record(ok("readiness"), 3)
    assert health.ready
    health.record(fail("readiness"), 3)
    health.record(fail("readiness"), 3)
    assert health.ready, "two failures of three keep the replica ready"
    health.record(fail("readiness"), 3)
    assert not health.ready
    health.record(ok("readiness"), 3)
    assert health.ready


def test_a_success_resets_the_consecutive_failure_count() -> None:
    health = ReplicaHealth.fresh(HealthChecks(liveness=Probe(path="/l")))
    for result in [fail("liveness"), fail("liveness"), ok("liveness"), fail("liveness"), fail("liveness")]:
        assert health.record(result, 3) is None
    assert health.live and health.failures["liveness"] == 2


def test_liveness_failing_its_threshold_asks_for_a_restart_and_leaves_the_pool() -> None:
    health = ReplicaHealth.fresh(HealthChecks(liveness=Probe(path="/l")))
    health.record(ok("tcp"), 3)
    assert health.record(fail("liveness", 500), 2) is None
    reason = health.record(fail("liveness", 500), 2)
    assert reason == "liveness probe failed 2 consecutive times (last: HTTP 500)"
    assert health.flags == Flags(started=True, ready=False, live=False)


def test_startup_not_succeeding_within_its_threshold_asks_for_a_restart() -> None:
    health = ReplicaHealth.fresh(ALL_PROBES)
    timeout = ProbeResult(probe="startup", ok=False, error="timed out after 1s")
    assert health.record(timeout, 2) is None
    assert health.record(timeout, 2) == "startup probe failed 2 consecutive times (last: timed out after 1s)"
    assert health.flags == Flags(started=False, ready=False, live=False)


def test_probe_kinds_count_failures_separately() -> None:
    health = ReplicaHealth.fresh(HealthChecks(readiness=Probe(path="/r"), liveness=Probe(path="/l")))
    health.record(fail("readiness"), 2)
    assert health.record(fail("liveness"), 2) is None
    assert health.failures == {"readiness": 1, "liveness": 1}


def test_resumed_health_keeps_the_known_flags_and_restarts_counting_at_zero() -> None:
    known = Flags(started=True, ready=True, live=True)
    health = ReplicaHealth.resumed(ALL_PROBES, known, last_probe=ok("readiness"))
    assert health.flags == known and health.failures == {}
    health.record(fail("liveness"), 2)
    assert health.live, "one failure after a monitor restart is one failure, not the old count plus one"


@pytest.mark.parametrize(
    ("status", "success"),
    [
        (199, False),
        (200, True),
        (204, True),
        (302, True),
        (399, True),
        (400, False),
        (404, False),
        (500, False),
    ],
)
def test_success_is_a_status_from_200_to_399(status: int, success: bool) -> None:
    assert is_success(status) is success


def test_initial_delay_counts_from_the_replica_start_not_from_now() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    assert first_probe_delay(started, 5, now=started + timedelta(seconds=2)) == 3
    assert first_probe_delay(started, 5, now=started + timedelta(seconds=60)) == 0
    assert first_probe_delay(started, 0, now=started) == 0
