"""Health events from a runtime that probes by itself (the Pod's Ready condition), table-driven (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from libs.runtime.base import Replica
from services.scheduler.kubelet_health import kubelet_health
from tests.unit.test_scheduler_lifecycle import RUNNING, SERVING

POD = replace(RUNNING, host="10.1.0.7", ports={8000: 8000}, pid=None, ready=True)


def flags(replica: Replica, known=None):  # type: ignore[no-untyped-def]
    event = kubelet_health(replica, known, SERVING)
    return None if event is None else (event.started, event.ready, event.live)


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (POD, (True, True, True)),  # Ready condition True
        (replace(POD, ready=False), (True, False, True)),  # readiness probe failing: running, not ready
        (replace(POD, state="starting", ready=False), None),  # nothing known yet, nothing to say
        (replace(POD, state="backoff", ready=False, reason="CrashLoopBackOff (OOMKilled)"), None),
        (replace(POD, ready=None), None),  # the local runtime: the health-monitor probes
    ],
)
def test_first_health_of_a_pod(pod: Replica, expected: tuple[bool, bool, bool] | None) -> None:
    assert flags(pod) == expected


def test_a_change_is_published_once_and_each_flip_gets_a_new_id() -> None:
    ready = kubelet_health(POD, None, SERVING)
    assert ready is not None and ready.address == "10.1.0.7:8000" and ready.last_probe is None
    assert kubelet_health(POD, ready, SERVING) is None  # the bus holds it already
    unready = kubelet_health(replace(POD, ready=False), ready, SERVING)
    assert unready is not None and not unready.ready
    again = kubelet_health(POD, unready, SERVING)
    assert again is not None and again.ready and again.event_id not in (ready.event_id, unready.event_id)
    # Computed again from the same knowledge (a restarted scheduler): the same id, de-duplicated.
    assert kubelet_health(POD, unready, SERVING).event_id == again.event_id  # type: ignore[union-attr]


def test_a_crash_takes_the_pod_out_and_a_restart_is_a_new_process() -> None:
    ready = kubelet_health(POD, None, SERVING)
    crashed = kubelet_health(replace(POD, state="backoff", ready=False, restart_count=3), ready, SERVING)
    assert crashed is not None and (crashed.started, crashed.ready, crashed.live, crashed.restart_count) == (
        False, False, False, 3)
    back = kubelet_health(replace(POD, restart_count=3), crashed, SERVING)
    assert back is not None and back.ready and back.restart_count == 3
