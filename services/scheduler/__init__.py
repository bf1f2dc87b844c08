"""scheduler: keeps one replica set per revision running in the runtime (local processes or
Kubernetes), replaces replicas without downtime, restarts them on request, decides which replicas
serve (the traffic assignment), and publishes replica lifecycle, traffic and deployment status events.
`python -m services.scheduler`."""

from services.scheduler.app import SchedulerHandle, main, start_scheduler

__all__ = ["SchedulerHandle", "main", "start_scheduler"]
