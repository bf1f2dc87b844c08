"""What a Pod object says about its replica: pure functions from the Pod's JSON to a `Replica`, and
from two observations of a replica to the replica events between them (the runtime's hook)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from libs.runtime.base import Replica, ReplicaEventKind, ReplicaState
from libs.runtime.kubernetes.resources import (
    CONTAINER_NAME,
    DEPLOYMENT_ID_LABEL,
    INIT_CONTAINER_NAME,
    REVISION_LABEL,
    WORKLOAD_LABEL,
)

CRASH_LOOP = "CrashLoopBackOff"
ReplicaEvent = tuple[ReplicaEventKind, Replica, int | None]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _container_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER_NAME), None)


def _fetch_failure(terminated: dict[str, Any]) -> str:
    """Why the init container failed: the reason its last log line gives (the termination message,
    terminationMessagePolicy FallbackToLogsOnError), else the kubelet's."""
    lines = [line for line in (terminated.get("message") or "").splitlines() if line.strip()]
    try:
        return str(json.loads(lines[-1])["reason"])
    except (IndexError, ValueError, KeyError, TypeError):
        return terminated.get("reason") or f"exit code {terminated.get('exitCode')}"


def _fetching(pod: dict[str, Any]) -> tuple[ReplicaState, str | None] | None:
    """While the init container fetches the integrations the model container waits (PodInitializing):
    the replica is starting, or backing off when the fetch failed (the kubelet runs it again)."""
    statuses = pod.get("status", {}).get("initContainerStatuses") or []
    init = next((s for s in statuses if s.get("name") == INIT_CONTAINER_NAME), None)
    if init is None or init.get("ready"):
        return None
    current = init.get("state") or {}
    if (done := current.get("terminated")) and done.get("exitCode") == 0:
        return None
    failed = done or ((init.get("lastState") or {}).get("terminated") or {})
    if failed.get("exitCode"):
        return "backoff", f"fetching integrations failed: {_fetch_failure(failed)}"
    return "starting", "fetching integrations"


def _state(pod: dict[str, Any], status: dict[str, Any] | None) -> tuple[ReplicaState, str | None]:
    """The replica state and, when it is not simply running, the kubelet's reason."""
    phase = pod.get("status", {}).get("phase")
    if pod["metadata"].get("deletionTimestamp"):
        return "stopping", None
    if (fetching := _fetching(pod)) is not None:
        return fetching
    current = (status or {}).get("state") or {}
    last = ((status or {}).get("lastState") or {}).get("terminated") or {}
    if "running" in current:
        return "running", None
    if terminated := current.get("terminated"):
        return "exited", terminated.get("reason")
    if phase in ("Failed", "Succeeded"):
        return "exited", pod.get("status", {}).get("reason") or phase
    waiting = (current.get("waiting") or {}).get("reason")
    if waiting == CRASH_LOOP:
        # The kubelet waits out its back-off; the last termination says why (e.g. OOMKilled).
        return "backoff", f"{CRASH_LOOP} ({last['reason']})" if last.get("reason") else CRASH_LOOP
    return "starting", waiting or pod.get("status", {}).get("reason")


def replica_of(pod: dict[str, Any], spec_id: str = "") -> Replica | None:
    """The replica a berth Pod is, or None for a Pod berth did not make."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    if WORKLOAD_LABEL not in labels:
        return None
    status = _container_status(pod)
    state, reason = _state(pod, status)
    terminated = ((status or {}).get("state") or {}).get("terminated") or (
        ((status or {}).get("lastState") or {}).get("terminated") or {}
    )
    containers = pod.get("spec", {}).get("containers") or [{}]
    ports = [p["containerPort"] for p in containers[0].get("ports") or []]
    conditions = pod.get("status", {}).get("conditions") or []
    return Replica(
        replica_id=meta["name"],
        workload=labels[WORKLOAD_LABEL],
        deployment_id=labels.get(DEPLOYMENT_ID_LABEL, ""),
        spec_id=spec_id,
        host=pod.get("status", {}).get("podIP") or "",
        ports={p: p for p in ports},  # Pod IPs are routable: the container port is the port
        state=state,
        restart_count=(status or {}).get("restartCount", 0),
        last_exit_code=terminated.get("exitCode"),
        started_at=_time((((status or {}).get("state") or {}).get("running") or {}).get("startedAt")),
        revision_id=labels.get(REVISION_LABEL, ""),
        created_at=_time(meta.get("creationTimestamp")),
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        reason=reason,
    )


def transitions(before: Replica | None, now: Replica | None) -> list[ReplicaEvent]:
    """The replica events between two observations of one Pod (None: not there)."""
    if now is None:
        return [("stopped", before, before.last_exit_code)] if before is not None else []
    events: list[ReplicaEvent] = []
    restarted = before is not None and now.restart_count > before.restart_count
    if restarted or (now.state == "exited" and (before is None or before.state != "exited")):
        events.append(("exited", now, now.last_exit_code))
    if now.state == "running" and (before is None or before.state != "running" or restarted):
        events.append(("started", now, None))
    return events
