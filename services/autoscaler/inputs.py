"""From what the bus says about a deployment to the inputs of one HPA decision (pure).

- The count in force is composed as the scheduler composes it: the autoscaler's last decision while
  the spec keeps the `resources.replicas` it was made against, else the spec's count.
- Request metrics: the router's reports of the last `window` seconds combined: requestDuration is
  their summed latency over their requests; rps and concurrency are summed over the reporters (each
  worker of each router reports its own windows), each reporter's rps its requests over its summed
  windows and its concurrency its mean in-flight count. No report within the window counts as no traffic (zeros) when the last
  report known was quiet (the router stops reporting after one quiet window) or none was ever seen;
  a stale report with traffic means the router stopped reporting: the metrics are missing.
- Replicas: the scheduler's last usage report; a report older than three of its windows gives no
  samples (missing metrics), but still the replicas and their readiness.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from libs.autoscaling import hpa
from libs.events import DeploymentScaled, ReplicaUsage, ReplicaUsageReported, RequestMetricsReported, SpecApplied

MAX_REPORTS = 64  # request reports kept per deployment (more than a window holds at any interval)
REQUEST_METRICS = ("requestDuration", "rps", "concurrency")
_PHASES: dict[str, hpa.Phase] = {"starting": "Running", "running": "Running", "exited": "Running",
                                 "backoff": "Running", "stopping": "Running"}


@dataclass
class View:
    """What the autoscaler holds about one deployment."""

    applied: SpecApplied | None = None
    decision: DeploymentScaled | None = None  # its own last decision
    reports: deque[RequestMetricsReported] = field(default_factory=lambda: deque(maxlen=MAX_REPORTS))
    usage: ReplicaUsageReported | None = None
    history: hpa.History = field(default_factory=hpa.History)
    published: tuple[object, ...] | None = None  # what the last published decision said
    seen_at: float = 0.0


def current_replicas(applied: SpecApplied, decision: DeploymentScaled | None) -> int:
    spec_replicas = applied.spec.resources.replicas
    if decision is not None and decision.spec_replicas == spec_replicas:
        return decision.replicas
    return spec_replicas


def request_metrics(reports: Iterable[RequestMetricsReported], now: float, window: float) -> dict[str, float]:
    held = list(reports)
    recent = [r for r in held if now - r.occurred_at.timestamp() <= window]
    if not recent:
        quiet = not held or (held[-1].requests == 0 and held[-1].in_flight == 0)
        return dict.fromkeys(REQUEST_METRICS, 0.0) if quiet else {}
    requests = sum(r.requests for r in recent)
    latency = sum(r.latency_sum_seconds for r in recent)
    by_reporter: dict[str, list[RequestMetricsReported]] = {}
    for report in recent:
        by_reporter.setdefault(report.reporter, []).append(report)
    rps = concurrency = 0.0
    for reports_of_one in by_reporter.values():
        seconds = sum(r.window_seconds for r in reports_of_one)
        rps += sum(r.requests for r in reports_of_one) / seconds if seconds else 0.0
        concurrency += sum(r.in_flight for r in reports_of_one) / len(reports_of_one)
    return {"requestDuration": latency / requests if requests else 0.0, "rps": rps, "concurrency": concurrency}


def _ago(now: float, at: datetime | None) -> float | None:
    return None if at is None else max(0.0, now - at.timestamp())


def replica(sample: ReplicaUsage, now: float, sampled_at: float, window: float, fresh: bool) -> hpa.Replica:
    usage = {}
    if fresh:
        for metric, percent in (("cpu", sample.cpu_percent), ("memory", sample.memory_percent),
                                ("gpu", sample.gpu_percent)):
            if percent is not None:
                usage[metric] = percent / 100
    started = _ago(now, sample.started_at)
    ready = sample.ready if sample.state in ("starting", "running", "stopping") else False
    changed = _ago(now, sample.ready_changed_at)
    return hpa.Replica(
        name=sample.replica_id,
        phase="Pending" if sample.state == "starting" and started is None else _PHASES[sample.state],
        ready=ready,
        deleting=sample.state == "stopping",
        started_seconds_ago=started,
        ready_changed_seconds_ago=changed if changed is not None else (started or 0.0),
        # The runtime reports utilisation relative to what each replica was given, so every replica
        # is given "1" (100 %) and uses its fraction of it.
        requests={"cpu": 1.0, "memory": 1.0, "gpu": 1.0},
        usage=usage,
        sampled_seconds_ago=max(0.0, now - sampled_at),
        sample_window_seconds=window,
    )


def replicas_of(report: ReplicaUsageReported | None, now: float) -> tuple[hpa.Replica, ...]:
    if report is None:
        return ()
    at = report.occurred_at.timestamp()
    fresh = now - at <= 3 * report.window_seconds
    return tuple(replica(s, now, at, report.window_seconds, fresh) for s in report.replicas)


def inputs_of(view: View, policy: hpa.Policy, now: float, window: float) -> hpa.Inputs:
    assert view.applied is not None
    return hpa.Inputs(
        policy=policy,
        current_replicas=current_replicas(view.applied, view.decision),
        replicas=replicas_of(view.usage, now),
        deployment_metrics=request_metrics(view.reports, now, window),
        recommendations=tuple(view.history.recommendations),
        scale_up_events=tuple(view.history.scale_up_events),
        scale_down_events=tuple(view.history.scale_down_events),
        now=now,
    )
