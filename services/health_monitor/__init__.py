"""health-monitor: probes every replica (startup, readiness, liveness; Kubernetes semantics) and
publishes ReplicaHealthChanged and ReplicaRestartRequested. `python -m services.health_monitor`."""

from services.health_monitor.app import HealthMonitorHandle, main, start_health_monitor

__all__ = ["HealthMonitorHandle", "main", "start_health_monitor"]
