"""Quantiles from latency histograms, computed the way Prometheus' `histogram_quantile` does, so a
figure berth shows matches the one a team's Prometheus computes from berth's `/metrics`.

Histograms on the bus (`RequestMetricsReported.latency_buckets`) count each request once, in the
first bucket whose upper bound holds it (not cumulative), with the bounds of
`libs.events.LATENCY_BUCKETS_SECONDS`, the last being +Inf. Summing the counts of several windows and
then taking the quantile is what `histogram_quantile(q, sum(rate(..._bucket[w])) by (le))` does.

Semantics follow prometheus/promql/quantile.go (`bucketQuantile`): linear interpolation inside the
bucket holding rank q·n; the first bucket's lower bound is 0 (its upper bound being positive); a rank
in the +Inf bucket yields the upper bound of the highest finite bucket; no observations yields None
(Prometheus: NaN).
"""

from __future__ import annotations

import math
from itertools import accumulate
from collections.abc import Iterable, Sequence

from libs.events import LATENCY_BUCKETS_SECONDS


def add_buckets(histograms: Iterable[Sequence[int]], size: int = len(LATENCY_BUCKETS_SECONDS)) -> list[int]:
    """The element-wise sum of per-bucket counts (a `sum by (le)` over windows, revisions or replicas)."""
    total = [0] * size
    for counts in histograms:
        for index, count in enumerate(counts):
            total[index] += count
    return total


def histogram_quantile(
    q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS_SECONDS
) -> float | None:
    """The q-quantile (0 <= q <= 1) of a non-cumulative histogram; None when it holds no observations.

    q < 0 gives -inf and q > 1 gives +inf, as in Prometheus.
    """
    if len(counts) != len(bounds):
        raise ValueError("counts and bounds differ in length")
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    observations = sum(counts)
    if observations == 0:
        return None
    rank = q * observations
    cumulative = list(accumulate(counts))
    # sort.Search over all but the +Inf bucket: the first whose cumulative count reaches the rank.
    index = next((i for i in range(len(counts) - 1) if cumulative[i] >= rank), len(counts) - 1)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    if index == 0 and upper <= 0:
        return upper
    lower, in_bucket = 0.0, cumulative[index]
    if index > 0:
        lower = bounds[index - 1]
        in_bucket -= cumulative[index - 1]
        rank -= cumulative[index - 1]
    if in_bucket == 0:  # q = 0 over an empty first bucket: Prometheus gives NaN
        return None
    return lower + (upper - lower) * (rank / in_bucket)
