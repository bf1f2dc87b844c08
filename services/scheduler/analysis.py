"""Canary analysis (pure): the canary's error rate and p99 latency against the stable revision's, over
the router's request windows since the canary began taking traffic (Flagger's and Argo Rollouts'
analysis, with bounds relative to the stable version instead of absolute thresholds).

A bound is judged only once both sides have answered `minRequests` requests: too few requests say
nothing about a rate. The p99 is the upper bound of the router's latency bucket that holds the 99th
percentile request (as Prometheus' histogram_quantile takes a bucket's upper bound at its edge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libs.events import LATENCY_BUCKETS_SECONDS, RequestMetricsReported
from libs.spec import CanaryAnalysis

if TYPE_CHECKING:
    from services.scheduler.desired import Desired
    from services.scheduler.revisions import RevisionPlan

P99 = 0.99


@dataclass
class Tally:
    """Requests of one side (canary or stable) added up over windows."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_SECONDS))

    def add(self, requests: int, errors: int, buckets: list[int]) -> None:
        self.requests += requests
        self.errors += errors
        self.buckets = [a + b for a, b in zip(self.buckets, buckets, strict=False)]

    @property
    def error_percent(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    def p99_seconds(self) -> float:
        """The upper bound of the bucket holding the 99th percentile request."""
        rank, seen = math.ceil(P99 * self.requests), 0
        for bound, count in zip(LATENCY_BUCKETS_SECONDS, self.buckets, strict=False):
            seen += count
            if seen >= rank:
                return bound
        return math.inf


@dataclass
class CanaryTally:
    """What the router reported for the canary revision and for every other one (the stable side)
    since the canary began taking traffic; held per deployment only while its canary is analysed."""

    canary_revision: str
    canary: Tally = field(default_factory=Tally)
    stable: Tally = field(default_factory=Tally)

    def add(self, report: RequestMetricsReported) -> None:
        for part in report.revisions:
            side = self.canary if part.revision_id == self.canary_revision else self.stable
            side.add(part.requests, part.errors, part.latency_buckets)


def failed_bound(analysis: CanaryAnalysis, canary: Tally, stable: Tally) -> str | None:
    """Which bound the canary fails, said for status; None while it keeps them (or too few requests)."""
    if min(canary.requests, stable.requests) < analysis.minRequests:
        return None
    increase = canary.error_percent - stable.error_percent
    if increase > analysis.maxErrorRateIncrease:
        return (
            f"canary analysis: error rate {canary.error_percent:.1f} % exceeds the stable revision's "
            f"{stable.error_percent:.1f} % by more than maxErrorRateIncrease ({analysis.maxErrorRateIncrease:g} points)"
        )
    ratio = analysis.maxP99LatencyRatio
    if ratio is not None:
        mine, theirs = canary.p99_seconds(), stable.p99_seconds()
        if mine > theirs * ratio:
            return (
                f"canary analysis: p99 latency {_seconds(mine)} is more than maxP99LatencyRatio ({ratio:g}) "
                f"times the stable revision's {_seconds(theirs)}"
            )
    return None


def _seconds(value: float) -> str:
    return "above the largest bucket" if math.isinf(value) else f"{value:g} s"


def analysed(desired: Desired, plan: RevisionPlan, held: CanaryTally | None) -> CanaryTally | None:
    """The tally to keep after a reconcile: the one of the desired revision while it is a canary
    with analysis taking an explicit weight; none otherwise (nothing is held after a canary ends)."""
    strategy = desired.applied.spec.updateStrategy
    if strategy.analysis is None or plan.share is None:
        return None
    if held is not None and held.canary_revision == desired.revision_id:
        return held
    return CanaryTally(desired.revision_id)


def canary_failure(desired: Desired, tally: CanaryTally | None) -> str | None:
    """The bound the desired revision fails as a canary, or None."""
    analysis = desired.applied.spec.updateStrategy.analysis
    if analysis is None or tally is None or tally.canary_revision != desired.revision_id:
        return None
    return failed_bound(analysis, tally.canary, tally.stable)
