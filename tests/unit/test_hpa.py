"""The HPA algorithm, table-driven from the Kubernetes documentation (concepts/workloads/autoscaling/
horizontal-pod-autoscale: "Algorithm details", "Configurable scaling behavior") and the controller's
source (pkg/controller/podautoscaler/replica_calculator.go, horizontal.go). Expected counts are worked
out by hand from those formulas, never taken from berth's output."""

from __future__ import annotations

import pytest

from libs.autoscaling.hpa import (
    Behavior,
    History,
    Inputs,
    MetricTarget,
    Policy,
    Recommendation,
    Replica,
    ScaleEvent,
    ScalingPolicy,
    ScalingRules,
    decide,
)

CPU50 = MetricTarget("cpu", "Utilization", 50, per_replica=True)
MEM50 = MetricTarget("memory", "Utilization", 50, per_replica=True)
DEFAULTS = Behavior()
# No rate limit or stabilisation: isolates the per-metric arithmetic.
FREE = Behavior(
    scale_up=ScalingRules(0, policies=(ScalingPolicy("Percent", 10000, 15),)),
    scale_down=ScalingRules(0, policies=(ScalingPolicy("Percent", 100, 15),)),
)


def pods(*usages: float | None, metric: str = "cpu", request: float = 1.0, name: str = "r",
         **kw: object) -> tuple[Replica, ...]:
    """Replicas each given `request` and using usage (None: its sample is missing)."""
    return tuple(
        Replica(
            f"{name}{i}",
            requests={metric: request},
            usage={} if u is None else {metric: u},
            **kw,  # type: ignore[arg-type]
        )
        for i, u in enumerate(usages)
    )


def run(replicas: tuple[Replica, ...] = (), metrics: tuple[MetricTarget, ...] = (CPU50,), current: int | None = None,
        low: int = 1, high: int = 100, behavior: Behavior = FREE, **kw: object) -> int:
    inputs = Inputs(
        policy=Policy(low, high, metrics, behavior),
        current_replicas=len(replicas) if current is None else current,
        replicas=replicas,
        **kw,  # type: ignore[arg-type]
    )
    return decide(inputs).desired_replicas


# Docs: desiredReplicas = ceil[currentReplicas * (currentMetricValue / desiredMetricValue)];
# no change while the ratio is within the tolerance (0.1).
@pytest.mark.parametrize(
    ("usages", "expected", "why"),
    [
        ((1.0, 1.0), 4, "100% of request against 50%: ratio 2.0 doubles"),
        ((0.25, 0.25, 0.25, 0.25), 2, "25% against 50%: ratio 0.5 halves"),
        ((0.55, 0.55), 2, "ratio 1.1: inside the tolerance"),
        ((0.45, 0.45), 2, "ratio 0.9: inside the tolerance"),
        ((0.56, 0.56), 3, "ratio 1.12: ceil(2.24)"),
        ((0.44, 0.44, 0.44, 0.44), 4, "ratio 0.88: ceil(3.52) = 4"),
        ((0.9, 0.9, 0.9, 0.9), 8, "ratio 1.8: ceil(7.2)"),
        ((0.5555, 0.5555), 2, "55.6 % truncates to 55 (GetResourceUtilizationRatio's integer percent): 1.1"),
    ],
)
def test_utilization_and_tolerance(usages: tuple[float, ...], expected: int, why: str) -> None:
    assert run(pods(*usages)) == expected, why


def test_utilization_is_relative_to_what_each_replica_was_given() -> None:
    # Sums, not averages of ratios: (1.5 + 0.5) / (2 + 2) = 50 % of requests → at target.
    replicas = (Replica("a", requests={"cpu": 2}, usage={"cpu": 1.5}), Replica("b", requests={"cpu": 2}, usage={"cpu": 0.5}))
    assert run(replicas) == 2


# Docs: "If there were any missing metrics, the control plane recomputes the average more conservatively,
# assuming those Pods were consuming 100% of the desired value in case of a scale down, and 0% in case of
# a scale up ... any not-yet-ready pods ... assumed to be consuming 0% ... After factoring in the not-yet-ready
# pods and missing metrics, the controller recalculates the usage ratio. If the new ratio reverses the
# scale direction, or is within the tolerance, the controller doesn't take any scaling action."
@pytest.mark.parametrize(
    ("replicas", "expected", "why"),
    [
        (pods(0.9, 0.9, 0.9, None), 6, "scale up, missing at 0 %: 270/400 = 67 % → 1.34 × 4 → 6 (not 8)"),
        (pods(0.2, 0.2, 0.2, None), 4, "scale down, missing at 100 %: 160/400 = 40 % → ceil(0.8 × 4) = 4, not 2"),
        (pods(0.3, 0.3, None), 3, "scale down 60 %→ with missing at 100 %: 160/300 = 53 % → 1.06 within tolerance"),
        (pods(0.05, None, None, None), 4, "missing at 100 % flips 10 % into 77 %: direction reversed, no change"),
        (pods(0.9, 0.9) + pods(0.0, 0.0, phase="Pending", name="p"), 4, "pending count 0 on a scale up: 180/400 = 45 % → no up"),
        (pods(1.0, 1.0) + pods(0.0, 0.0, phase="Pending", name="p"), 4, "100 %: 200/400 = 50 % after unready at 0: within"),
        (pods(1.0, 1.0, 1.0) + pods(0.0, phase="Pending", name="p"), 6, "300/400 = 75 % → 1.5 × 4 = 6"),
        (pods(0.2, 0.2) + pods(0.0, 0.0, phase="Pending", name="p"), 1, "scale down ignores unready: 20 % → 0.4 × 2 → 1"),
        (pods(0.9, 0.9) + pods(5.0, deleting=True, name="d"), 4, "deleting replica ignored: 90 % → 1.8 × 2 → 4"),
        (pods(0.9, 0.9) + pods(5.0, phase="Failed", name="f"), 4, "failed replica ignored"),
    ],
)
def test_missing_and_unready_replicas(replicas: tuple[Replica, ...], expected: int, why: str) -> None:
    assert run(replicas) == expected, why


# groupPods, CPU only: inside the CPU initialisation period (5 min) a replica counts as unready when it is
# not ready or its sample was taken within one metric window of turning ready; after it, when it is not
# ready and has never been ready since it started (30 s initial readiness delay).
@pytest.mark.parametrize(
    ("replica", "unready"),
    [
        (Replica("n", ready=True, started_seconds_ago=60, ready_changed_seconds_ago=50, sampled_seconds_ago=0), False),
        (Replica("n", ready=True, started_seconds_ago=60, ready_changed_seconds_ago=10, sampled_seconds_ago=0), True),
        (Replica("n", ready=False, started_seconds_ago=60, ready_changed_seconds_ago=50), True),
        (Replica("n", ready=None, started_seconds_ago=600), True),
        (Replica("n", ready=True, started_seconds_ago=None), True),
        (Replica("n", ready=False, started_seconds_ago=600, ready_changed_seconds_ago=590), True),
        (Replica("n", ready=False, started_seconds_ago=600, ready_changed_seconds_ago=100), False),
        (Replica("n", ready=True, started_seconds_ago=600, ready_changed_seconds_ago=1, sampled_seconds_ago=0), False),
    ],
)
def test_cpu_initialisation_period(replica: Replica, unready: bool) -> None:
    hot = Replica("hot", requests={"cpu": 1}, usage={"cpu": 1.0})  # 100 % against 50 %
    fresh = Replica(**{**replica.__dict__, "requests": {"cpu": 1}, "usage": {"cpu": 1.0}})
    # Counted: 200/200 → ratio 2 → 4. Unready on a scale up: taken at 0 → 100/200 = 50 % → within: 2.
    assert run((hot, fresh)) == (2 if unready else 4)


def test_initialisation_period_is_for_cpu_only() -> None:
    fresh = Replica("n", ready=True, started_seconds_ago=5, ready_changed_seconds_ago=1,
                    requests={"memory": 1}, usage={"memory": 1.0})
    assert run((fresh,), metrics=(MEM50,)) == 2


# computeReplicasForMetrics: the largest proposal wins; a metric that cannot be computed does not stop a
# scale up by the others, but blocks a scale down (docs: "If some metrics cannot be fetched ... the HPA
# skips scaling down").
def two_metric_pods(cpu: float, memory: float | None) -> tuple[Replica, ...]:
    usage = {"cpu": cpu} | ({} if memory is None else {"memory": memory})
    return tuple(Replica(f"r{i}", requests={"cpu": 1, "memory": 1}, usage=usage) for i in range(2))


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (two_metric_pods(1.0, 0.25), 4),  # cpu says 4, memory says 1: the maximum
        (two_metric_pods(0.25, 1.5), 6),  # memory 150 % → ratio 3 → 6
        (two_metric_pods(1.0, None), 4),  # memory missing everywhere: cpu still scales up
        (two_metric_pods(0.1, None), 2),  # memory missing, cpu would scale down: no change
    ],
)
def test_several_metrics(replicas: tuple[Replica, ...], expected: int) -> None:
    assert run(replicas, metrics=(CPU50, MEM50)) == expected


def test_no_metric_at_all_keeps_the_count() -> None:
    inputs = Inputs(policy=Policy(1, 10, (CPU50,), FREE), current_replicas=3, replicas=pods(None, None, None))
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.scaling_active) == (3, "FailedGetMetric")
    assert decision.recommendation is None  # nothing recorded for stabilisation


# Object metrics. Total value (GetObjectMetricReplicas): ceil(usage/target × ready replicas);
# average value per replica (GetObjectPerPodMetricReplicas): ceil(total / target per replica).
DURATION2 = MetricTarget("requestDuration", "Value", 2.0)
CONCURRENCY10 = MetricTarget("concurrency", "AverageValue", 10)


@pytest.mark.parametrize(
    ("metric", "value", "replicas", "expected"),
    [
        (DURATION2, 4.0, pods(0, 0, 0), 6),  # twice the target duration, 3 ready → 6
        (DURATION2, 2.1, pods(0, 0, 0), 3),  # ratio 1.05: within tolerance
        (DURATION2, 1.0, pods(0, 0, 0, 0), 2),  # half the duration → half the replicas
        (DURATION2, 4.0, pods(0, 0) + pods(0, ready=False, name="u"), 4),  # only ready replicas count: 2 × 2
        (CONCURRENCY10, 25, pods(0, 0), 3),  # 25 in flight / 10 per replica → 3
        (CONCURRENCY10, 21, pods(0, 0), 2),  # average 10.5 per replica: within tolerance
        (CONCURRENCY10, 3, pods(0, 0, 0), 1),  # → ceil(0.3)
        (MetricTarget("rps", "AverageValue", 5), 42, pods(0, 0), 9),  # 42 req/s at 5 each → 9
    ],
)
def test_object_metrics(metric: MetricTarget, value: float, replicas: tuple[Replica, ...], expected: int) -> None:
    assert run(replicas, metrics=(metric,), deployment_metrics={metric.name: value}) == expected


def test_from_zero_replicas_a_total_value_gives_ceil_of_the_ratio() -> None:
    # getUsageRatioReplicaCount with currentReplicas == 0 (minReplicas 0); the default Pods policy
    # (+4) lets it through: a Percent policy alone cannot grow from 0 (ceil(0 × 2) = 0).
    wants = dict(metrics=(DURATION2,), current=0, low=0, deployment_metrics={"requestDuration": 3.0})
    assert run((), behavior=DEFAULTS, **wants) == 2  # type: ignore[arg-type]
    assert run((), behavior=FREE, **wants) == 0  # type: ignore[arg-type]


# Stabilisation (stabilizeRecommendationWithBehaviors): the count stays between the lowest recommendation
# of the scale-up window and the highest of the scale-down window. Docs: default scale-down window 300 s.


@pytest.mark.parametrize(
    ("history", "now", "expected", "able"),
    [
        ((Recommendation(10, 0.0),), 100.0, 10, "ScaleDownStabilized"),  # 10 within the last 300 s
        ((Recommendation(10, 0.0),), 300.0, 5, "ReadyForNewScale"),  # exactly 300 s old: out (strictly after)
        ((Recommendation(8, 0.0), Recommendation(7, 200.0)), 301.0, 7, "ScaleDownStabilized"),
    ],
)
def test_scale_down_stabilisation(history: tuple[Recommendation, ...], now: float, expected: int, able: str) -> None:
    inputs = Inputs(Policy(1, 20, (CPU50,), DEFAULTS), current_replicas=10, replicas=pods(*[0.25] * 10),
                    recommendations=history, now=now)  # metrics alone say 5
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.able_to_scale) == (expected, able)
    assert decision.recommendation == 5  # the unstabilised recommendation is what is remembered


def test_scale_up_stabilisation_window() -> None:
    up = ScalingRules(60, policies=DEFAULTS.scale_up.policies)
    behavior = Behavior(scale_up=up)
    base = dict(policy=Policy(1, 20, (CPU50,), behavior), current_replicas=4, replicas=pods(*[1.0] * 4), now=100.0)
    # Metrics say 8; 30 s ago they said 3: the lowest in the window is 3, never below current → 4.
    held = decide(Inputs(**base, recommendations=(Recommendation(3, 70.0),)))  # type: ignore[arg-type]
    assert (held.desired_replicas, held.able_to_scale) == (4, "ScaleUpStabilized")
    later = decide(Inputs(**base, recommendations=(Recommendation(3, 30.0), Recommendation(6, 80.0))))  # type: ignore[arg-type]
    assert later.desired_replicas == 6


# Rate policies (calculate{ScaleUp,ScaleDown}Limit...): the change allowed is measured from the count at
# the start of each policy's period (current − added + removed within it). Docs example: scale down by 4
# pods or 10 % per 60 s; "when the number of replicas is more than 40, the percent policy is used".
DOCS_DOWN = (ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 10, 60))


@pytest.mark.parametrize(
    ("select", "current", "expected", "limit"),
    [
        ("Max", 80, 72, "ScaleDownLimit"),  # Pods → 76, Percent → int(72.0) = 72; Max = biggest change
        ("Max", 20, 16, "ScaleDownLimit"),  # Pods → 16, Percent → 18
        ("Min", 80, 76, "ScaleDownLimit"),  # the smallest change
        ("Disabled", 80, 80, "ScaleDownLimit"),  # no scale down at all
        ("Max", 5, 1, "DesiredWithinRange"),  # Pods → 1 allows the whole way down to 1
    ],
)
def test_scale_down_policies(select: str, current: int, expected: int, limit: str) -> None:
    behavior = Behavior(scale_down=ScalingRules(0, select, DOCS_DOWN))  # type: ignore[arg-type]
    inputs = Inputs(Policy(1, 100, (CPU50,), behavior), current_replicas=current, replicas=pods(*[0.01] * current))
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.scaling_limited) == (expected, limit)


@pytest.mark.parametrize(
    ("current", "events", "expected", "limit"),
    [
        (2, (), 6, "ScaleUpLimit"),  # default: max(2 + 4, 2 × 2) = 6
        (10, (), 20, "ScaleUpLimit"),  # default: max(14, 20) = 20
        (6, (ScaleEvent(4, 90.0),), 6, "ScaleUpLimit"),  # 4 added 10 s ago: period began at 2 → max(6, 4) = 6
        (6, (ScaleEvent(4, 85.0),), 12, "ScaleUpLimit"),  # exactly 15 s ago: out of the period → 6 + 100 %
    ],
)
def test_default_scale_up_policies(current: int, events: tuple[ScaleEvent, ...], expected: int, limit: str) -> None:
    inputs = Inputs(Policy(1, 1000, (CPU50,), DEFAULTS), current_replicas=current, replicas=pods(*[5.0] * current),
                    scale_up_events=events, now=100.0)  # 500 % against 50 %: metrics want 10 × current
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.scaling_limited, decision.limited) == (expected, limit, True)


@pytest.mark.parametrize(("select", "expected"), [("Max", 8), ("Min", 5), ("Disabled", 4)])
def test_scale_up_select_policy(select: str, expected: int) -> None:
    rules = ScalingRules(0, select, (ScalingPolicy("Pods", 1, 60), ScalingPolicy("Percent", 100, 60)))  # type: ignore[arg-type]
    inputs = Inputs(Policy(1, 100, (CPU50,), Behavior(scale_up=rules)), current_replicas=4, replicas=pods(*[5.0] * 4))
    assert decide(inputs).desired_replicas == expected


def test_percent_scale_up_rounds_up() -> None:
    # ceil(1 × 1.1) = 2: a small percentage of few replicas still adds one.
    rules = ScalingRules(0, "Max", (ScalingPolicy("Percent", 10, 60),))
    inputs = Inputs(Policy(1, 100, (CPU50,), Behavior(scale_up=rules)), current_replicas=1, replicas=pods(5.0))
    assert decide(inputs).desired_replicas == 2


# Min/max (convertDesiredReplicasWithBehaviorRate and reconcileAutoscaler).
@pytest.mark.parametrize(
    ("current", "usage", "low", "high", "expected", "limit"),
    [
        (8, 1.0, 1, 10, 10, "TooManyReplicas"),  # metrics 16, rate 16, max 10
        (4, 0.01, 3, 10, 3, "TooFewReplicas"),  # metrics 1, min 3
        (12, 0.5, 1, 10, 10, "TooManyReplicas"),  # already above max: straight to max
        (2, 0.5, 3, 10, 3, "TooFewReplicas"),  # below min: straight to min
    ],
)
def test_min_max(current: int, usage: float, low: int, high: int, expected: int, limit: str) -> None:
    inputs = Inputs(Policy(low, high, (CPU50,), DEFAULTS), current_replicas=current, replicas=pods(*[usage] * current))
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.scaling_limited) == (expected, limit)


def test_zero_replicas_with_a_minimum_disables_scaling() -> None:
    decision = decide(Inputs(Policy(1, 10, (CPU50,)), current_replicas=0))
    assert (decision.desired_replicas, decision.scaling_active) == (0, "ScalingDisabled")


def test_history_remembers_and_forgets() -> None:
    history, behavior = History(), DEFAULTS
    policy = Policy(1, 20, (CPU50,), behavior)
    first = decide(Inputs(policy, current_replicas=4, replicas=pods(*[1.0] * 4), now=0.0))
    history.record(first, behavior, now=0.0)
    assert first.desired_replicas == 8 and history.scale_up_events == [ScaleEvent(4, 0.0)]
    low = pods(*[0.05] * 8)
    held = decide(Inputs(policy, 8, low, recommendations=tuple(history.recommendations), now=100.0))
    assert held.desired_replicas == 8  # 8 was recommended within 300 s
    history.record(held, behavior, now=100.0)
    history.record(held, behavior, now=401.0)
    assert [r.at for r in history.recommendations] == [401.0]  # older than every window: forgotten
    assert history.scale_up_events == [ScaleEvent(4, 0.0)]  # pruned on the next scale up only


# -- the spec's autoscaling block as the HPA policy ---------------------------------------------------


def _spec(autoscaling: dict[str, object], replicas: int = 2) -> object:
    from libs.spec import validate_spec

    return validate_spec({"name": "d", "image": "i", "resources": {"ports": [8000], "replicas": replicas,
                                                                     "autoscaling": autoscaling}})


def test_policy_from_seed_shaped_spec() -> None:
    from libs.autoscaling.policy import policy_of

    spec = _spec({"enabled": True, "maxReplicas": 5, "metrics": [
        {"metric": "cpu", "value": 50}, {"metric": "requestDuration", "value": 2},
        {"metric": "concurrency", "value": 10}, {"metric": "rps", "value": 20}, {"metric": "gpu", "value": 80}]})
    policy = policy_of(spec)  # type: ignore[arg-type]
    assert policy is not None and (policy.min_replicas, policy.max_replicas) == (2, 5)  # min is replicas
    assert [(m.name, m.type) for m in policy.metrics] == [
        ("cpu", "Utilization"), ("requestDuration", "Value"), ("concurrency", "AverageValue"),
        ("rps", "AverageValue"), ("gpu", "Utilization")]
    assert policy.behavior == Behavior()


def test_policy_behavior_fills_unset_fields_with_the_hpa_defaults() -> None:
    from libs.autoscaling.policy import policy_of

    spec = _spec({"enabled": True, "minReplicas": 1, "maxReplicas": 5, "metrics": [{"metric": "cpu", "value": 50}],
                  "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30},
                               "scaleUp": {"selectPolicy": "Min",
                                           "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}})
    policy = policy_of(spec)  # type: ignore[arg-type]
    assert policy is not None and policy.min_replicas == 1
    assert policy.behavior.scale_down == ScalingRules(30, "Max", (ScalingPolicy("Percent", 100, 15),))
    assert policy.behavior.scale_up == ScalingRules(0, "Min", (ScalingPolicy("Pods", 1, 60),))


def test_autoscaling_off_has_no_policy() -> None:
    from libs.autoscaling.policy import policy_of

    assert policy_of(_spec({"enabled": False, "maxReplicas": 5}, replicas=1)) is None  # type: ignore[arg-type]


# Scale to zero (berth's addition, "activation"): the HPA alone never leaves 0 on a request-duration
# metric (no request completes); requests held by the router (in flight) bring one replica.
@pytest.mark.parametrize(
    ("metrics", "expected", "reason"),
    [
        ({"requestDuration": 0.0, "concurrency": 3.0}, 1, "activation: 3 requests in flight at zero replicas"),
        ({"requestDuration": 0.0, "concurrency": 0.0}, 0, "no change: every metric within tolerance of its target"),
        ({"requestDuration": 4.0, "concurrency": 3.0}, 2, "requestDuration above target"),  # the HPA: ceil(2.0)
    ],
)
def test_activation_from_zero(metrics: dict[str, float], expected: int, reason: str) -> None:
    inputs = Inputs(Policy(0, 5, (DURATION2,), DEFAULTS), current_replicas=0, deployment_metrics=metrics)
    decision = decide(inputs)
    assert (decision.desired_replicas, decision.reason) == (expected, reason)


def test_idle_replicas_scale_to_zero_after_the_window() -> None:
    policy = Policy(0, 5, (DURATION2,), DEFAULTS)
    quiet = {"requestDuration": 0.0, "concurrency": 0.0}
    held = decide(Inputs(policy, 2, pods(0, 0), quiet, (Recommendation(2, 0.0),), now=299.0))
    gone = decide(Inputs(policy, 2, pods(0, 0), quiet, (Recommendation(2, 0.0),), now=300.0))
    assert (held.desired_replicas, gone.desired_replicas) == (2, 0)
    # A replica coming up for held requests is not scaled away before they complete.
    starting = decide(Inputs(policy, 1, pods(0, ready=False), {"requestDuration": 0.0, "concurrency": 3.0}))
    assert (starting.desired_replicas, starting.recommendation) == (1, 1)


def test_a_replica_without_a_request_makes_utilisation_unavailable() -> None:
    # calculatePodRequests: "missing request for cpu" for any pod, even one being deleted.
    replicas = pods(1.0, 1.0) + (Replica("d", deleting=True, usage={"cpu": 1.0}),)
    decision = decide(Inputs(Policy(1, 10, (CPU50,), FREE), current_replicas=2, replicas=replicas))
    assert (decision.desired_replicas, decision.scaling_active) == (2, "FailedGetMetric")
    assert "missing request" in decision.reason
