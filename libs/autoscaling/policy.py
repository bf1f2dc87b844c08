"""A spec's `resources.autoscaling` as the HPA policy `hpa.decide` reads (pure).

Metric mapping (docs/autoscaling.md): cpu, memory and gpu are Resource metrics with a Utilization
target (percent of what each replica was given); requestDuration is one value for the deployment with
a Value target (its average duration against the target, times the ready replicas); concurrency and
rps are deployment totals with an AverageValue target (the total divided by the per-replica target).
"""

from __future__ import annotations

from libs.autoscaling.hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    TOLERANCE,
    Behavior,
    MetricTarget,
    Policy,
    ScalingPolicy,
    ScalingRules,
)
from libs.spec import UTILISATION_METRICS, AutoscalingMetric, DeploymentSpec
from libs.spec import ScalingBehavior as SpecBehavior
from libs.spec import ScalingRules as SpecRules

_AVERAGE_VALUE = ("concurrency", "rps")


def metric_target(metric: AutoscalingMetric) -> MetricTarget:
    if metric.metric in UTILISATION_METRICS:
        return MetricTarget(metric.metric, "Utilization", metric.value, per_replica=True)
    if metric.metric in _AVERAGE_VALUE:
        return MetricTarget(metric.metric, "AverageValue", metric.value)
    return MetricTarget(metric.metric, "Value", metric.value)


def _rules(given: SpecRules | None, default: ScalingRules) -> ScalingRules:
    # pkg/apis/autoscaling/v2/defaults.go GenerateHPAScale{Up,Down}Rules: each unset field takes the
    # direction's default.
    if given is None:
        return default
    policies = default.policies
    if given.policies is not None:
        policies = tuple(ScalingPolicy(p.type, p.value, p.periodSeconds) for p in given.policies)
    window = default.stabilization_window_seconds
    if given.stabilizationWindowSeconds is not None:
        window = given.stabilizationWindowSeconds
    tolerance = TOLERANCE if given.tolerance is None else given.tolerance
    return ScalingRules(window, given.selectPolicy, policies, tolerance)


def behavior(given: SpecBehavior | None) -> Behavior:
    if given is None:
        return Behavior()
    return Behavior(_rules(given.scaleUp, DEFAULT_SCALE_UP), _rules(given.scaleDown, DEFAULT_SCALE_DOWN))


def policy_of(spec: DeploymentSpec) -> Policy | None:
    """The HPA policy of a spec; None when autoscaling is off. The minimum is `minReplicas`, else
    `resources.replicas` (seeds/000: replicas is the floor the autoscaler scales from)."""
    bounds = spec.resources.replica_bounds()
    scaling = spec.resources.autoscaling
    if bounds is None or scaling is None:
        return None
    low, high = bounds
    return Policy(low, high, tuple(metric_target(m) for m in scaling.metrics), behavior(scaling.behavior))
