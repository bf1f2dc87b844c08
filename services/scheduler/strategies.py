"""How a new revision replaces the running ones, by `updateStrategy` (pure).

rolling - Kubernetes' RollingUpdate, computed as its Deployment controller does (pkg/controller/
  deployment/rolling.go and util/deployment_util.go): `ResolveFenceposts` scales maxSurge with the
  desired count rounding UP and maxUnavailable rounding DOWN (both 0 -> maxUnavailable 1). The new
  revision grows while all replicas stay within desired + maxSurge (`NewRSNewReplicas`); old replicas
  go while at least desired - maxUnavailable stay ready, unready old ones first
  (`reconcileOldReplicaSets`, `cleanupUnhealthyReplicas`, `scaleDownOldReplicaSetsForRollingUpdate`),
  the oldest revision first. "Available" is "ready" here (berth has no minReadySeconds).
blue-green - the new revision starts all its replicas beside the old, takes no traffic until every
  one is ready, then takes all of it at once; the old set stays scaleDownDelaySeconds (at 0 %) so that
  a rollback within that time switches back without starting anything.
canary - the new revision starts all its replicas beside the old; once all are ready it takes each
  weight of canarySteps (default [canaryPercent], 10 %) of the traffic for canaryStepSeconds (60), the
  old revision the rest, then all of it and the old one stops. Applying the previous spec aborts it
  (the old revision is current again and serves alone at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from libs.spec import (
    DEFAULT_CANARY_PERCENT,
    DEFAULT_CANARY_STEP_SECONDS,
    DEFAULT_SCALE_DOWN_DELAY_SECONDS,
    DEFAULT_SURGE,
    DEFAULT_UNAVAILABLE,
    UpdateStrategy,
)

FULL = 100


def scaled(value: int | str, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: a count as is, a percent of `total` rounded up or down."""
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * total
    return math.ceil(share / FULL) if round_up else share // FULL


def fenceposts(strategy: UpdateStrategy, desired: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as counts for `desired` replicas: deploymentutil.ResolveFenceposts."""
    surge = scaled(strategy.maxSurge if strategy.maxSurge is not None else DEFAULT_SURGE, desired, True)
    unavailable = scaled(
        strategy.maxUnavailable if strategy.maxUnavailable is not None else DEFAULT_UNAVAILABLE, desired, False
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1  # "surge might not work due to quota"
    return surge, unavailable


@dataclass(frozen=True)
class Counts:
    """Replicas of the new revision and of the old ones together, and how many of each are ready."""

    new: int
    new_ready: int
    old: int
    old_ready: int


@dataclass(frozen=True)
class RollingStep:
    new: int  # replicas the new revision runs
    old_unready_to_stop: int  # unready old replicas to stop
    old_ready_to_stop: int  # ready old replicas to stop (after the assignment without them)


def rolling_step(strategy: UpdateStrategy, desired: int, now: Counts) -> RollingStep:
    """One step of a rolling update from `now`."""
    surge, unavailable = fenceposts(strategy, desired)
    unavailable = min(unavailable, desired)  # deploymentutil.MaxUnavailable
    total = now.new + now.old
    if now.new >= desired:  # reconcileNewReplicaSet: never above desired
        new = desired
    elif total >= desired + surge:  # NewRSNewReplicas: grow only within desired + maxSurge
        new = now.new
    else:
        new = now.new + min(desired + surge - total, desired - now.new)
    if new > now.new:
        return RollingStep(new, 0, 0)  # rolloutRolling: a sync that scaled up does not also scale down
    min_available = desired - unavailable
    max_scaled_down = total - min_available - (now.new - now.new_ready)  # reconcileOldReplicaSets
    if now.old == 0 or max_scaled_down <= 0:
        return RollingStep(new, 0, 0)
    unready = min(now.old - now.old_ready, max_scaled_down)  # cleanupUnhealthyReplicas first
    available = now.new_ready + now.old_ready  # scaleDownOldReplicaSetsForRollingUpdate
    ready = max(0, min(available - min_available, now.old_ready))
    return RollingStep(new, unready, ready)


def blue_green_hold_seconds(strategy: UpdateStrategy) -> int:
    delay = strategy.scaleDownDelaySeconds
    return DEFAULT_SCALE_DOWN_DELAY_SECONDS if delay is None else delay


def canary_weight(strategy: UpdateStrategy, since: float, now: float) -> int | None:
    """The canary's percent `now` for a canary whose replicas were all ready at `since`; None when
    its last step is over (it takes all traffic)."""
    steps = strategy.canarySteps or [strategy.canaryPercent or DEFAULT_CANARY_PERCENT]
    step = int((now - since) // (strategy.canaryStepSeconds or DEFAULT_CANARY_STEP_SECONDS))
    return steps[step] if step < len(steps) else None


def next_change(strategy: UpdateStrategy, since: float, now: float) -> float | None:
    """When the plan changes by time alone (blue-green's hold ends, a canary step ends), after `now`."""
    if strategy.type == "blue-green":
        at = since + blue_green_hold_seconds(strategy)
        return at if at > now else None
    if strategy.type == "canary":
        length = strategy.canaryStepSeconds or DEFAULT_CANARY_STEP_SECONDS
        steps = len(strategy.canarySteps or [0])
        step = int((now - since) // length) + 1
        return since + step * length if step <= steps else None
    return None
