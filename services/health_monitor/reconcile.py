"""Rebuild the monitor's slice from the bus on start, and re-compare it periodically.

The durable subscriber delivers every lifecycle event; the periodic resync (run by the service kit)
is the level-triggered safety net that catches anything it could not (e.g. a stream purged while the
monitor was down).
"""

from __future__ import annotations

from nats.js import JetStreamContext

from libs.bus import HEALTH_EVENTS, REPLICA_EVENTS, RESTART_REQUESTS, latest_per_subject
from libs.events import ReplicaHealthChanged, ReplicaRestartRequested
from libs.logging import get_logger
from services.health_monitor.monitor import HealthMonitor

log = get_logger(__name__)


async def rebuild_from_bus(js: JetStreamContext, monitor: HealthMonitor) -> None:
    lifecycle = await latest_per_subject(js, REPLICA_EVENTS)
    health = [e for e in await latest_per_subject(js, HEALTH_EVENTS) if isinstance(e, ReplicaHealthChanged)]
    restarts = [
        e for e in await latest_per_subject(js, RESTART_REQUESTS) if isinstance(e, ReplicaRestartRequested)
    ]
    await monitor.rebuild(lifecycle, health, restarts)
    log.info("rebuilt from the bus", replicas=len(lifecycle))


async def resync(js: JetStreamContext, monitor: HealthMonitor) -> None:
    """Apply the newest lifecycle event of every replica again (idempotent), then forget replicas
    long gone."""
    for event in await latest_per_subject(js, REPLICA_EVENTS):
        await monitor.apply(event)
    monitor.forget_gone()
