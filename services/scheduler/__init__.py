"""scheduler: keeps one replica set per spec version running in the runtime (local processes or
Kubernetes), replaces replicas without downtime, restarts them on request, and publishes replica
lifecycle and deployment status events. `python -m services.scheduler`."""

from services.scheduler.app import SchedulerHandle, main, start_scheduler

__all__ = ["SchedulerHandle", "main", "start_scheduler"]
