"""Pod JSON -> Replica, and the replica events between two observations (libs/runtime/kubernetes/pods.py).
Container states as the kubelet reports them (core/v1 ContainerStatus: state.waiting/running/terminated,
lastState, restartCount; the Pod's Ready condition)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.runtime.kubernetes.pods import replica_of, transitions

LABELS = {"berth.dev/workload": "p-m-abc", "berth.dev/deployment-id": "d1", "berth.dev/revision": "abc"}


def pod(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p-m-abc-x1", "labels": LABELS, **meta},
            "spec": {"containers": [{"name": "model", "ports": [{"containerPort": 8080}]}]}, "status": status}


def container(state: dict[str, Any], restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"phase": "Running", "podIP": "10.0.0.7",
            "containerStatuses": [{"name": "model", "state": state, "restartCount": restarts,
                                   "lastState": {"terminated": last} if last else {}}]}


@pytest.mark.parametrize(
    ("status", "meta", "expected"),
    [
        ({"phase": "Pending"}, {}, ("starting", None)),
        (container({"waiting": {"reason": "ContainerCreating"}}), {}, ("starting", "ContainerCreating")),
        (container({"waiting": {"reason": "ImagePullBackOff"}}), {}, ("starting", "ImagePullBackOff")),
        (container({"running": {"startedAt": "2026-01-01T00:00:00Z"}}), {}, ("running", None)),
        (container({"waiting": {"reason": "CrashLoopBackOff"}}, 2, {"exitCode": 137, "reason": "OOMKilled"}), {},
         ("backoff", "CrashLoopBackOff (OOMKilled)")),
        (container({"terminated": {"exitCode": 1, "reason": "Error"}}), {}, ("exited", "Error")),
        ({"phase": "Failed", "reason": "Evicted"}, {}, ("exited", "Evicted")),
        (container({"running": {}}), {"deletionTimestamp": "2026-01-01T00:00:00Z"}, ("stopping", None)),
    ],
)
def test_container_states_map_to_replica_states(status: dict, meta: dict, expected: tuple) -> None:
    replica = replica_of(pod(status, **meta), "spec-1")
    assert replica is not None and (replica.state, replica.reason) == expected
    assert (replica.workload, replica.deployment_id, replica.revision_id, replica.spec_id) == ("p-m-abc", "d1", "abc",
                                                                                               "spec-1")


def initialising(init: dict[str, Any], restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"phase": "Pending", "podIP": "10.0.0.7",
            "initContainerStatuses": [{"name": "integrations", "state": init, "ready": False, "restartCount": restarts,
                                       "lastState": {"terminated": last} if last else {}}],
            "containerStatuses": [{"name": "model", "state": {"waiting": {"reason": "PodInitializing"}},
                                   "restartCount": 0}]}  # fmt: skip


FETCH_LOG = '{"event": "failed", "reason": "integration falcon: git fetch: authentication failed"}\n'


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (initialising({"running": {"startedAt": "2026-01-01T00:00:00Z"}}), ("starting", "fetching integrations")),
        (initialising({"waiting": {"reason": "CrashLoopBackOff"}}, 3, {"exitCode": 1, "reason": "Error", "message": FETCH_LOG}),
         ("backoff", "fetching integrations failed: integration falcon: git fetch: authentication failed")),
        (initialising({"terminated": {"exitCode": 1, "reason": "Error"}}), ("backoff", "fetching integrations failed: Error")),
        (initialising({"terminated": {"exitCode": 0, "reason": "Completed"}}), ("starting", "PodInitializing")),
    ],
)
def test_the_init_container_fetching_integrations_shows_in_the_replica(status: dict, expected: tuple) -> None:
    replica = replica_of(pod(status))
    assert replica is not None and (replica.state, replica.reason) == expected


def test_a_pod_berth_did_not_make_is_no_replica() -> None:
    assert replica_of({"metadata": {"name": "other", "labels": {"app": "x"}}, "status": {}}) is None


def test_transitions() -> None:
    starting = replica_of(pod({"phase": "Pending"}))
    up = replica_of(pod(container({"running": {}})))
    again = replica_of(pod(container({"running": {}}, restarts=1, last={"exitCode": 3})))
    assert transitions(None, starting) == []
    assert [k for k, _, _ in transitions(starting, up)] == ["started"]
    assert transitions(up, up) == []
    assert [(k, c) for k, _, c in transitions(up, again)] == [("exited", 3), ("started", None)]
    assert [k for k, _, _ in transitions(again, None)] == ["stopped"]
    assert transitions(None, None) == []
