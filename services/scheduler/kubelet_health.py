"""Health of replicas whose runtime probes them itself (kubernetes: the kubelet), as bus events.

On such a runtime the scheduler is the one owner of health: it already watches the Pods, and the
health-monitor stays idle (docs/architecture.md, "Who decides health"). The Pod's Ready condition is the
readiness the kubelet's probes decided; a running container is started and live (the kubelet restarts
one whose liveness or startup probe fails, which shows as a new restart count). The event carries the
same fields the health-monitor's does, so the assignment, status and CLI read it unchanged.
"""

from __future__ import annotations

from libs.events import ReplicaHealthChanged
from libs.runtime.base import Replica
from services.scheduler.lifecycle import Serving, event_id


def kubelet_health(
    replica: Replica, known: ReplicaHealthChanged | None, serving: Serving
) -> ReplicaHealthChanged | None:
    """The health to publish for a replica the runtime reports readiness of; None when the bus already
    holds it (or the runtime leaves probing to the health-monitor: `ready` is None)."""
    if replica.ready is None:
        return None
    running = replica.state == "running"
    flags = (running, running and replica.ready, running)
    was = (known.started, known.ready, known.live) if known is not None else (False, False, False)
    if known is not None and known.restart_count == replica.restart_count and was == flags:
        return None
    if not any(flags) and not any(was):
        return None  # nothing said of it but "not ready", and nothing else to say
    port = replica.ports.get(serving.primary_port)
    return ReplicaHealthChanged(
        # Deterministic, chained to what the bus held: a repeated comparison (a restarted scheduler)
        # is de-duplicated, while ready -> not ready -> ready gets a new id each time.
        event_id=event_id("kubelet-health", replica.replica_id, replica.restart_count, flags,
                          known.event_id if known else ""),
        **serving.ref.model_dump(include={"deployment_id", "project", "slug"}),
        replica_id=replica.replica_id,
        spec_id=serving.spec_id,
        revision_id=replica.revision_id or serving.revision_id,
        address=f"{replica.host}:{port}" if port else replica.host,
        started=flags[0],
        ready=flags[1],
        live=flags[2],
        restart_count=replica.restart_count,
    )
