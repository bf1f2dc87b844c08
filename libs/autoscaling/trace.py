"""The trace format: everything one HPA decision reads, as JSON (docs/autoscaling.md), and back.

A trace holds decisions; each states the policy (the spec's `autoscaling` block with `minReplicas`
spelt out), the count in force, every replica (phase, readiness, deletion, start and readiness-change
ages, what it was given and what it uses per metric), the deployment-level metric values, and the
history the HPA keeps (recommendations and scale events, with their ages). Times are ages in seconds
before the decision, so a trace replays the same whenever it is run. The autoscaler service writes the
inputs of each decision it publishes in this shape; `berth autoscale explain` reads it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.autoscaling import hpa
from libs.autoscaling.policy import behavior, metric_target
from libs.spec import AutoscalingMetric, ScalingBehavior


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TracePolicy(_Model):
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    metrics: list[AutoscalingMetric] = Field(min_length=1)
    behavior: ScalingBehavior | None = None


class TraceReplica(_Model):
    name: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Running"
    ready: bool | None = Field(default=True, description="The Ready condition; null: none yet.")
    deleting: bool = False
    startedSecondsAgo: float | None = Field(default=3600.0, description="null: not started.")
    readyChangedSecondsAgo: float = 3600.0
    requests: dict[str, float] = Field(default_factory=dict)
    usage: dict[str, float] = Field(default_factory=dict, description="Absent metric: missing sample.")
    sampledSecondsAgo: float = 0.0
    sampleWindowSeconds: float = 15.0


class Aged(_Model):
    ageSeconds: float = Field(ge=0)


class TraceRecommendation(Aged):
    replicas: int = Field(ge=0)


class TraceScaleEvent(Aged):
    change: int = Field(ge=1)


class TraceDecision(_Model):
    deployment: str = ""
    at: str = Field(default="", description="When it was decided (ISO 8601), for people; not read.")
    policy: TracePolicy
    currentReplicas: int = Field(ge=0)
    statusReplicas: int | None = None
    replicas: list[TraceReplica] = Field(default_factory=list)
    deploymentMetrics: dict[str, float] = Field(default_factory=dict)
    recommendations: list[TraceRecommendation] = Field(default_factory=list)
    scaleUpEvents: list[TraceScaleEvent] = Field(default_factory=list)
    scaleDownEvents: list[TraceScaleEvent] = Field(default_factory=list)
    decided: int | None = Field(default=None, description="What the service decided (recorded traces).")

    def inputs(self) -> hpa.Inputs:
        policy = hpa.Policy(
            self.policy.minReplicas,
            self.policy.maxReplicas,
            tuple(metric_target(m) for m in self.policy.metrics),
            behavior(self.policy.behavior),
        )
        return hpa.Inputs(
            policy=policy,
            current_replicas=self.currentReplicas,
            replicas=tuple(
                hpa.Replica(
                    r.name, r.phase, r.ready, r.deleting, r.startedSecondsAgo, r.readyChangedSecondsAgo,
                    r.requests, r.usage, r.sampledSecondsAgo, r.sampleWindowSeconds,
                )
                for r in self.replicas
            ),
            deployment_metrics=self.deploymentMetrics,
            recommendations=tuple(hpa.Recommendation(r.replicas, -r.ageSeconds) for r in self.recommendations),
            scale_up_events=tuple(hpa.ScaleEvent(e.change, -e.ageSeconds) for e in self.scaleUpEvents),
            scale_down_events=tuple(hpa.ScaleEvent(e.change, -e.ageSeconds) for e in self.scaleDownEvents),
            now=0.0,
            status_replicas=self.statusReplicas,
        )


class Trace(_Model):
    decisions: list[TraceDecision] = Field(min_length=1)


def trace_of(inputs: hpa.Inputs, spec_policy: TracePolicy, **extra: Any) -> TraceDecision:
    """The trace entry of a decision the service makes (its `now` becomes age zero)."""
    now = inputs.now

    def age(at: float) -> float:
        return max(0.0, round(now - at, 3))

    return TraceDecision(
        policy=spec_policy,
        currentReplicas=inputs.current_replicas,
        statusReplicas=inputs.status_replicas,
        replicas=[
            TraceReplica(
                name=r.name, phase=r.phase, ready=r.ready, deleting=r.deleting,
                startedSecondsAgo=r.started_seconds_ago, readyChangedSecondsAgo=r.ready_changed_seconds_ago,
                requests=dict(r.requests), usage=dict(r.usage), sampledSecondsAgo=r.sampled_seconds_ago,
                sampleWindowSeconds=r.sample_window_seconds,
            )
            for r in inputs.replicas
        ],
        deploymentMetrics=dict(inputs.deployment_metrics),
        recommendations=[TraceRecommendation(replicas=r.replicas, ageSeconds=age(r.at)) for r in inputs.recommendations],
        scaleUpEvents=[TraceScaleEvent(change=e.change, ageSeconds=age(e.at)) for e in inputs.scale_up_events],
        scaleDownEvents=[TraceScaleEvent(change=e.change, ageSeconds=age(e.at)) for e in inputs.scale_down_events],
        **extra,
    )


def explain(decision: hpa.Decision) -> dict[str, Any]:
    """A decision as data: what `berth autoscale explain -o json` prints for each one."""
    return {
        "currentReplicas": decision.current_replicas,
        "desiredReplicas": decision.desired_replicas,
        "recommendation": decision.recommendation,
        "reason": decision.reason,
        "conditions": {
            "AbleToScale": decision.able_to_scale,
            "ScalingActive": decision.scaling_active,
            "ScalingLimited": {"status": decision.limited, "reason": decision.scaling_limited},
        },
        "metrics": [
            {"metric": m.name, "replicas": m.replicas, "usage": m.usage, **({"error": m.error} if m.error else {})}
            for m in decision.metrics
        ],
    }
