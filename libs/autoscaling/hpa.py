"""One autoscaling decision, exactly as the Kubernetes HPA controller makes it (autoscaling/v2); pure.

Ported from kubernetes/kubernetes pkg/controller/podautoscaler:
- replica_calculator.go: `GetResourceReplicas` (utilisation targets), `GetObjectMetricReplicas` /
  `getUsageRatioReplicaCount` (total-value targets), `GetObjectPerPodMetricReplicas` (average-value
  targets), `groupPods` (unready, pending, missing, deleted and failed pods, CPU initialisation period)
  and the conservative re-check that a direction does not flip once missing/unready pods are assumed.
- metrics/utilization.go: `GetResourceUtilizationRatio` (integer percent of milli-values).
- horizontal.go: `computeReplicasForMetrics` (maximum over metrics; an invalid metric blocks only a
  scale down), `reconcileAutoscaler` (outside min/max: straight to the bound; ScalingDisabled at 0),
  `normalizeDesiredReplicasWithBehaviors`, `stabilizeRecommendationWithBehaviors`,
  `convertDesiredReplicasWithBehaviorRate`, `calculateScaleUpLimitWithScalingRules`,
  `calculateScaleDownLimitWithBehaviors`, `getReplicasChangePerPeriod`.
Defaults from pkg/apis/autoscaling/v2/defaults.go and the kube-controller-manager flags: tolerance 0.1,
CPU initialisation period 5 min, initial readiness delay 30 s, scale-up policies Pods 4 / Percent 100 per
15 s (Max), scale-down Percent 100 per 15 s, stabilisation 0 s up and 300 s down.

One deliberate choice: with no `behavior` the controller's own code takes a legacy path
(`normalizeDesiredReplicas`: up to max(2×current, 4) at once); berth applies the documented default
behavior instead (docs/autoscaling.md), which the API server fills in whenever any behavior is given.

Time is seconds on one clock (`now`); history entries carry their own time. Quantities are converted
to milli-units and truncated as the controller does (`MilliValue()`, integer division).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

TOLERANCE = 0.1
CPU_INITIALIZATION_PERIOD_SECONDS = 300.0
INITIAL_READINESS_DELAY_SECONDS = 30.0

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]
TargetType = Literal["Utilization", "AverageValue", "Value"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class ScalingPolicy:
    type: PolicyType
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    select_policy: SelectPolicy = "Max"
    policies: tuple[ScalingPolicy, ...] = ()
    tolerance: float = TOLERANCE


DEFAULT_SCALE_UP = ScalingRules(
    stabilization_window_seconds=0,
    policies=(ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)),
)
DEFAULT_SCALE_DOWN = ScalingRules(stabilization_window_seconds=300, policies=(ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


@dataclass(frozen=True)
class MetricTarget:
    """One metric of the policy. `per_replica` metrics (cpu, memory, gpu) come from each replica's usage
    and request (a Resource metric); the others are one value for the deployment (an Object metric)."""

    name: str
    type: TargetType
    value: float
    per_replica: bool = False


@dataclass(frozen=True)
class Replica:
    """What the HPA reads of a pod. Times are seconds before `now`; None where Kubernetes has no value."""

    name: str
    phase: Phase = "Running"
    ready: bool | None = True  # the Ready condition; None: no condition yet
    deleting: bool = False
    started_seconds_ago: float | None = 3600.0  # pod.Status.StartTime
    ready_changed_seconds_ago: float = 3600.0  # the Ready condition's lastTransitionTime
    requests: Mapping[str, float] = field(default_factory=dict)  # per metric: what the replica was given
    usage: Mapping[str, float] = field(default_factory=dict)  # per metric; absent: the metric is missing
    sampled_seconds_ago: float = 0.0  # when the usage sample was taken (metric.Timestamp)
    sample_window_seconds: float = 15.0  # the window the sample averages (metric.Window)


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    at: float


@dataclass(frozen=True)
class ScaleEvent:
    change: int  # replicas added (scale up) or removed (scale down), positive
    at: float


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricTarget, ...]
    behavior: Behavior = Behavior()


@dataclass(frozen=True)
class Inputs:
    """Everything one decision reads. `current_replicas` is the count in force (scale.Spec.Replicas);
    `status_replicas` the replicas that exist (scale.Status.Replicas), defaulting to those not deleting."""

    policy: Policy
    current_replicas: int
    replicas: tuple[Replica, ...] = ()
    deployment_metrics: Mapping[str, float] = field(default_factory=dict)
    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()
    now: float = 0.0
    status_replicas: int | None = None


@dataclass(frozen=True)
class MetricResult:
    name: str
    replicas: int | None  # None: could not be computed
    usage: float | None = None  # utilisation % or the metric's value, as the HPA reports it
    error: str = ""


@dataclass(frozen=True)
class Decision:
    desired_replicas: int
    current_replicas: int
    reason: str  # why the count moves (or not), as the HPA words its events
    able_to_scale: str  # AbleToScale condition reason: ReadyForNewScale, ScaleUpStabilized, ...
    scaling_limited: str  # ScalingLimited reason: DesiredWithinRange, TooManyReplicas, ScaleUpLimit, ...
    limited: bool
    scaling_active: str  # ValidMetricFound, FailedGetMetric (no decision), ScalingDisabled
    metrics: tuple[MetricResult, ...] = ()
    recommendation: int | None = None  # the unstabilised recommendation to remember (None: none made)

    @property
    def rescale(self) -> bool:
        return self.desired_replicas != self.current_replicas


class MetricUnavailable(Exception):
    """A metric cannot give a replica count now; other metrics still decide (except a scale down)."""


# -- replica_calculator.go -------------------------------------------------------------------------


def _milli(value: float) -> int:
    # resource.Quantity.MilliValue() rounds up to the next milli-unit.
    return math.ceil(round(value * 1000, 6))


def _within(ratio: float, up: ScalingRules, down: ScalingRules) -> bool:
    # tolerances.isWithin: (1 - scaleDown tolerance) <= ratio <= (1 + scaleUp tolerance).
    return (1.0 - down.tolerance) <= ratio <= (1.0 + up.tolerance)


@dataclass
class _Groups:
    ready: int = 0
    unready: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)


def _group(replicas: Sequence[Replica], metric: str, is_cpu: bool) -> _Groups:
    """groupPods: deleted or failed → ignored; pending → unready; no sample → missing; for CPU, a pod
    without a Ready condition or start time, or unready/not yet sampled since it turned ready inside the
    initialisation period, or unready and never ready since start → unready."""
    groups = _Groups()
    for pod in replicas:
        if pod.deleting or pod.phase == "Failed":
            groups.ignored.add(pod.name)
            continue
        if pod.phase == "Pending":
            groups.unready.add(pod.name)
            continue
        if metric not in pod.usage:
            groups.missing.add(pod.name)
            continue
        if is_cpu and _cpu_unready(pod):
            groups.unready.add(pod.name)
            continue
        groups.ready += 1
    return groups


def _cpu_unready(pod: Replica) -> bool:
    if pod.ready is None or pod.started_seconds_ago is None:
        return True
    if pod.started_seconds_ago < CPU_INITIALIZATION_PERIOD_SECONDS:  # StartTime + period is after now
        # metric.Timestamp before condition.LastTransitionTime + metric.Window
        sampled_before_window = (pod.ready_changed_seconds_ago - pod.sampled_seconds_ago) < pod.sample_window_seconds
        return not pod.ready or sampled_before_window
    # StartTime + delay after LastTransitionTime: the condition last changed right at start, so it has
    # not been ready since.
    never_ready = pod.ready_changed_seconds_ago > pod.started_seconds_ago - INITIAL_READINESS_DELAY_SECONDS
    return (not pod.ready) and never_ready


def _utilization_ratio(values: Mapping[str, int], requests: Mapping[str, int], target: int) -> tuple[float, int]:
    """GetResourceUtilizationRatio: integer percent of the summed milli-values, over the target."""
    used = sum(values[name] for name in values if name in requests)
    given = sum(requests[name] for name in values if name in requests)
    if given == 0:
        raise MetricUnavailable("no metrics returned matched known replicas")
    utilization = used * 100 // given
    return utilization / target, utilization


def resource_replicas(inputs: Inputs, metric: MetricTarget) -> MetricResult:
    """GetResourceReplicas for a Utilization target (percent of what each replica was given)."""
    pods = inputs.replicas
    if not pods:
        raise MetricUnavailable("no replicas to compute a replica count from")
    groups = _group(pods, metric.name, is_cpu=metric.name == "cpu")
    dropped = groups.ignored | groups.unready
    values = {p.name: _milli(p.usage[metric.name]) for p in pods if metric.name in p.usage and p.name not in dropped}
    if not values:
        raise MetricUnavailable(f"no {metric.name} sample from a ready replica")
    requests = {p.name: _milli(p.requests[metric.name]) for p in pods if metric.name in p.requests}
    if len(requests) < len(pods):  # calculatePodRequests fails when any pod has no request for the resource
        raise MetricUnavailable(f"missing request for {metric.name}")
    target = int(metric.value)
    ratio, utilization = _utilization_ratio(values, requests, target)
    up, down = inputs.policy.behavior.scale_up, inputs.policy.behavior.scale_down
    current = inputs.current_replicas
    scale_up_with_unready = bool(groups.unready) and ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if _within(ratio, up, down):
            return MetricResult(metric.name, current, utilization)
        return MetricResult(metric.name, math.ceil(ratio * groups.ready), utilization)
    if groups.missing:
        if ratio < 1.0:  # scale down: a missing replica is taken to use max(100 %, target) of its request
            fallback = max(100, target)
            values.update({name: requests[name] * fallback // 100 for name in groups.missing})
        elif ratio > 1.0:  # scale up: a missing replica is taken to use nothing
            values.update({name: 0 for name in groups.missing})
    if scale_up_with_unready:  # scale up: unready replicas are taken to use nothing
        values.update({name: 0 for name in groups.unready})
    new_ratio, _ = _utilization_ratio(values, requests, target)
    return MetricResult(metric.name, _recheck(current, ratio, new_ratio, len(values), up, down), utilization)


def _recheck(current: int, ratio: float, new_ratio: float, counted: int, up: ScalingRules, down: ScalingRules) -> int:
    """No change when the assumptions bring the ratio within tolerance or flip the direction, or when
    the count they give would move the other way."""
    if _within(new_ratio, up, down) or (ratio > 1.0 > new_ratio) or (ratio < 1.0 < new_ratio):
        return current
    proposed = math.ceil(new_ratio * counted)
    if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
        return current
    return proposed


def _deployment_value(inputs: Inputs, metric: MetricTarget) -> int:
    if metric.name not in inputs.deployment_metrics:
        raise MetricUnavailable(f"no {metric.name} value reported")
    return _milli(inputs.deployment_metrics[metric.name])


def value_replicas(inputs: Inputs, metric: MetricTarget) -> MetricResult:
    """GetObjectMetricReplicas + getUsageRatioReplicaCount: a total value against the target, scaled by
    the ready replicas; from zero replicas, ceil(ratio)."""
    usage = _deployment_value(inputs, metric)
    ratio = usage / _milli(metric.value)
    current = inputs.current_replicas
    behavior = inputs.policy.behavior
    if current == 0:
        return MetricResult(metric.name, math.ceil(ratio), usage / 1000)
    if _within(ratio, behavior.scale_up, behavior.scale_down):
        return MetricResult(metric.name, current, usage / 1000)
    if not inputs.replicas:
        raise MetricUnavailable("no replicas to count as ready")
    ready = sum(1 for p in inputs.replicas if p.phase == "Running" and p.ready)  # getReadyPodsCount
    return MetricResult(metric.name, math.ceil(ratio * ready), usage / 1000)


def average_value_replicas(inputs: Inputs, metric: MetricTarget) -> MetricResult:
    """GetObjectPerPodMetricReplicas: the total divided by the per-replica target, unless the average
    over the existing replicas is within tolerance."""
    usage = _deployment_value(inputs, metric)
    target = _milli(metric.value)
    status = _status_replicas(inputs)
    replicas = status
    behavior = inputs.policy.behavior
    ratio = usage / (target * status) if status else math.inf
    if not _within(ratio, behavior.scale_up, behavior.scale_down):
        replicas = math.ceil(usage / target)
    average = math.ceil(usage / status) / 1000 if status else usage / 1000
    return MetricResult(metric.name, replicas, average)


def _status_replicas(inputs: Inputs) -> int:
    if inputs.status_replicas is not None:
        return inputs.status_replicas
    return sum(1 for p in inputs.replicas if not p.deleting)


def metric_replicas(inputs: Inputs, metric: MetricTarget) -> MetricResult:
    if metric.type == "Utilization":
        return resource_replicas(inputs, metric)
    if metric.type == "AverageValue":
        return average_value_replicas(inputs, metric)
    return value_replicas(inputs, metric)


# -- horizontal.go ---------------------------------------------------------------------------------


def replicas_for_metrics(inputs: Inputs) -> tuple[int | None, str, tuple[MetricResult, ...]]:
    """computeReplicasForMetrics: the largest proposal; None when every metric failed, or when one
    failed and the others would scale down (a missing metric must not let the count fall)."""
    results: list[MetricResult] = []
    best, best_name, invalid = 0, "", 0
    for metric in inputs.policy.metrics:
        try:
            result = metric_replicas(inputs, metric)
        except MetricUnavailable as exc:
            results.append(MetricResult(metric.name, None, error=str(exc)))
            invalid += 1
            continue
        results.append(result)
        assert result.replicas is not None
        if best == 0 or result.replicas > best:
            best, best_name = result.replicas, metric.name
    if invalid >= len(inputs.policy.metrics) or (invalid > 0 and best < inputs.current_replicas):
        return None, "", tuple(results)
    return best, best_name, tuple(results)


def decide(inputs: Inputs) -> Decision:
    """One decision: the HPA's, then berth's one addition, activation (scale from zero).

    At zero replicas no replica reports usage and no request completes, so the HPA's metrics cannot
    ask for the first replica; requests the router holds for a scaled-to-zero deployment (in flight,
    `concurrency` > 0) ask for one, as Knative's activator does, and while requests are in flight
    the count does not fall to zero (the held ones have not completed, so request metrics read 0).
    Nothing else differs from the HPA."""
    decision = hpa_decide(inputs)
    waiting = inputs.deployment_metrics.get("concurrency", 0.0)
    if decision.desired_replicas == 0 and waiting > 0 and inputs.policy.max_replicas:
        why = "activation: {:g} requests in flight at zero replicas" if inputs.current_replicas == 0 else (
            "kept at 1 replica: {:g} requests in flight")
        return replace(decision, desired_replicas=1, recommendation=1, limited=False,
                       scaling_limited="DesiredWithinRange", reason=why.format(waiting))
    return decision


def hpa_decide(inputs: Inputs) -> Decision:
    """reconcileAutoscaler: one decision from the inputs and the history they carry."""
    policy, current = inputs.policy, inputs.current_replicas
    if current == 0 and policy.min_replicas != 0:
        return Decision(0, 0, "scaling is disabled since the replica count of the target is zero",
                        "ReadyForNewScale", "DesiredWithinRange", False, "ScalingDisabled")
    if current > policy.max_replicas:
        return Decision(policy.max_replicas, current, "Current number of replicas above Spec.MaxReplicas",
                        "ReadyForNewScale", "TooManyReplicas", True, "ValidMetricFound")
    if current < policy.min_replicas:
        return Decision(policy.min_replicas, current, "Current number of replicas below Spec.MinReplicas",
                        "ReadyForNewScale", "TooFewReplicas", True, "ValidMetricFound")
    proposed, name, results = replicas_for_metrics(inputs)
    if proposed is None:
        failed = next((r for r in results if r.replicas is None), None)
        reason = f"failed to compute desired number of replicas: {failed.error if failed else 'no metric'}"
        return Decision(current, current, reason, "ReadyForNewScale", "DesiredWithinRange", False,
                        "FailedGetMetric", results)
    reason = "no change: every metric within tolerance of its target"
    if proposed > current:
        reason = f"{name} above target"
    elif proposed < current:
        reason = "All metrics below target"
    stabilized, able = _stabilize(inputs, proposed)
    desired, limit_reason = _rate_limit(inputs, stabilized)
    return Decision(desired, current, reason, able, limit_reason, desired != stabilized, "ValidMetricFound",
                    results, recommendation=proposed)


def _stabilize(inputs: Inputs, proposed: int) -> tuple[int, str]:
    """stabilizeRecommendationWithBehaviors: keep the count between the lowest recommendation of the
    scale-up window and the highest of the scale-down window (the proposal itself included)."""
    behavior, now = inputs.policy.behavior, inputs.now
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up_limit = down_limit = proposed
    for rec in inputs.recommendations:
        if rec.at > up_cutoff:
            up_limit = min(rec.replicas, up_limit)
        if rec.at > down_cutoff:
            down_limit = max(rec.replicas, down_limit)
    recommendation = min(max(inputs.current_replicas, up_limit), down_limit)
    if recommendation == proposed:
        return recommendation, "ReadyForNewScale"
    return recommendation, "ScaleUpStabilized" if proposed >= inputs.current_replicas else "ScaleDownStabilized"


def _change_in_period(period_seconds: int, events: Sequence[ScaleEvent], now: float) -> int:
    cutoff = now - period_seconds
    return sum(e.change for e in events if e.at > cutoff)


def _period_start(inputs: Inputs, policy: ScalingPolicy) -> int:
    added = _change_in_period(policy.period_seconds, inputs.scale_up_events, inputs.now)
    removed = _change_in_period(policy.period_seconds, inputs.scale_down_events, inputs.now)
    return inputs.current_replicas - added + removed


def scale_up_limit(inputs: Inputs) -> int:
    """calculateScaleUpLimitWithScalingRules: Max picks the largest allowed count, Min the smallest."""
    return _policy_limit(inputs, inputs.policy.behavior.scale_up, grow=True)


def scale_down_limit(inputs: Inputs) -> int:
    """calculateScaleDownLimitWithBehaviors: Max allows the lowest count (the biggest change)."""
    return _policy_limit(inputs, inputs.policy.behavior.scale_down, grow=False)


def _policy_limit(inputs: Inputs, rules: ScalingRules, grow: bool) -> int:
    if rules.select_policy == "Disabled":
        return inputs.current_replicas
    proposals = []
    for policy in rules.policies:
        start = _period_start(inputs, policy)
        if policy.type == "Pods":
            proposals.append(start + policy.value if grow else start - policy.value)
        elif grow:  # rounded up, or a small percentage of few replicas would never add one
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
        else:  # int32() truncates
            proposals.append(int(start * (1 - policy.value / 100)))
    # Max: the policy allowing the biggest change (the highest count up, the lowest down); Min: the least.
    pick = max if (rules.select_policy == "Max") == grow else min
    if not proposals:  # the controller's starting value: MinInt32 for max, MaxInt32 for min
        return -(2**31) if pick is max else 2**31 - 1
    return pick(proposals)


def _rate_limit(inputs: Inputs, desired: int) -> tuple[int, str]:
    """convertDesiredReplicasWithBehaviorRate: the policies' rate, then min/max."""
    policy, current = inputs.policy, inputs.current_replicas
    if desired > current:
        limit = max(scale_up_limit(inputs), current)
        if policy.max_replicas > limit:
            maximum, reason = limit, "ScaleUpLimit"
        else:
            maximum, reason = policy.max_replicas, "TooManyReplicas"
        if desired > maximum:
            return maximum, reason
    elif desired < current:
        limit = min(scale_down_limit(inputs), current)
        if policy.min_replicas < limit:
            minimum, reason = limit, "ScaleDownLimit"
        else:
            minimum, reason = policy.min_replicas, "TooFewReplicas"
        if desired < minimum:
            return minimum, reason
    return desired, "DesiredWithinRange"


# -- the history a decision leaves (the controller's recommendations and scale events) ---------------


@dataclass
class History:
    """Per deployment: recent recommendations and scale events, pruned to what a decision can read."""

    recommendations: list[Recommendation] = field(default_factory=list)
    scale_up_events: list[ScaleEvent] = field(default_factory=list)
    scale_down_events: list[ScaleEvent] = field(default_factory=list)

    def record(self, decision: Decision, behavior: Behavior, now: float) -> None:
        """Remember the decision's recommendation and, when it rescales, its scale event; forget what
        falls out of every window and period (the controller reuses such slots)."""
        if decision.recommendation is not None:
            keep = max(behavior.scale_up.stabilization_window_seconds,
                       behavior.scale_down.stabilization_window_seconds)
            self.recommendations = [r for r in self.recommendations if r.at >= now - keep]
            self.recommendations.append(Recommendation(decision.recommendation, now))
        change = decision.desired_replicas - decision.current_replicas
        if change > 0:
            self.scale_up_events = _prune(self.scale_up_events, behavior.scale_up, now)
            self.scale_up_events.append(ScaleEvent(change, now))
        elif change < 0:
            self.scale_down_events = _prune(self.scale_down_events, behavior.scale_down, now)
            self.scale_down_events.append(ScaleEvent(-change, now))


def _prune(events: list[ScaleEvent], rules: ScalingRules, now: float) -> list[ScaleEvent]:
    longest = max((p.period_seconds for p in rules.policies), default=0)  # getLongestPolicyPeriod
    return [e for e in events if e.at > now - longest]
