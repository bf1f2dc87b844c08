"""libs.quantiles against Prometheus' own expectations: the classic-histogram cases of
prometheus/promql/promqltest/testdata/histograms.test (values at 50m and 7m of its `load 5m` series),
with its cumulative `le` buckets turned into the per-bucket counts berth's reports carry."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from libs.quantiles import add_buckets, histogram_quantile

INF = math.inf


def per_bucket(cumulative: list[float]) -> list[float]:
    """Prometheus' cumulative bucket values as counts per bucket."""
    return [cumulative[0], *(b - a for a, b in pairwise(cumulative))]


# testhistogram at 50m: 10 steps of 0+5x10 etc.
POSITIVE = ((0.1, 0.2, 1.0, INF), per_bucket([50, 70, 110, 120]))
NEGATIVE = ((-0.2, -0.1, 0.3, INF), per_bucket([10, 20, 20, 30]))
# testhistogram3: no observations in +Inf
POSITIVE3 = ((0.0, 0.1, 0.2, 1.0, INF), per_bucket([0, 50, 70, 110, 110]))
NEGATIVE3 = ((-0.25, -0.2, -0.1, 0.3, INF), per_bucket([0, 10, 20, 20, 20]))
# testhistogram2 at 7m (the value of the 5m sample): q(1/6), q(1/2), q(5/6) mid-bucket
SECOND = ((0.0, 2.0, 4.0, 6.0, INF), per_bucket([0, 1, 2, 3, 3]))


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        (POSITIVE, 0, 0.0), (NEGATIVE, 0, -0.2),  # quantile value in lowest bucket
        (POSITIVE, 1, 1.0), (NEGATIVE, 1, 0.3),  # quantile value in highest bucket
        (POSITIVE, 0.2, 0.048), (NEGATIVE, 0.2, -0.2),  # "finally some useful quantiles"
        (POSITIVE, 0.5, 0.15), (NEGATIVE, 0.5, -0.15),
        (POSITIVE, 0.8, 0.72), (NEGATIVE, 0.8, 0.3),
        (POSITIVE3, 0, 0.0), (NEGATIVE3, 0, -0.25),
        (POSITIVE3, 0.25, 0.055), (NEGATIVE3, 0.25, -0.225),
        (POSITIVE3, 0.5, 0.125), (NEGATIVE3, 0.5, -0.2),
        (POSITIVE3, 0.75, 0.45), (NEGATIVE3, 0.75, -0.15),
        (POSITIVE3, 1, 1.0), (NEGATIVE3, 1, -0.1),
        (SECOND, 1 / 6, 1.0), (SECOND, 0.5, 3.0), (SECOND, 5 / 6, 5.0),
    ],
)  # fmt: skip
def test_histogram_quantile_matches_prometheus(
    histogram: tuple[tuple[float, ...], list[float]], q: float, expected: float
) -> None:
    bounds, counts = histogram
    assert histogram_quantile(q, counts, bounds) == pytest.approx(expected)


def test_quantiles_out_of_range_are_infinite_as_in_prometheus() -> None:
    bounds, counts = POSITIVE
    assert histogram_quantile(-0.1, counts, bounds) == -INF
    assert histogram_quantile(1.01, counts, bounds) == INF


def test_rates_over_a_window_give_the_same_quantiles() -> None:
    # rate(testhistogram_bucket[10m]) at 50m: two 5m increments over 600 s.
    bounds, _ = POSITIVE
    rates = [increase / 600 for increase in per_bucket([10, 14, 22, 24])]
    assert histogram_quantile(0.2, rates, bounds) == pytest.approx(0.048)
    assert histogram_quantile(0.5, rates, bounds) == pytest.approx(0.15)
    assert histogram_quantile(0.8, rates, bounds) == pytest.approx(0.72)


# request_duration_seconds_bucket per job and instance: increments per 5m step of le 0.1, 0.2, +Inf.
DURATION_BOUNDS = (0.1, 0.2, INF)
REQUESTS = {
    ("job1", "ins1"): per_bucket([1, 3, 4]),
    ("job1", "ins2"): per_bucket([2, 5, 6]),
    ("job2", "ins1"): per_bucket([3, 4, 6]),
    ("job2", "ins2"): per_bucket([4, 7, 9]),
}


def _sum_by(index: int | None) -> dict[str | None, list[float]]:
    groups: dict[str | None, list[list[float]]] = {}
    for labels, counts in REQUESTS.items():
        groups.setdefault(None if index is None else labels[index], []).append(counts)
    return {key: add_buckets(parts, size=3) for key, parts in groups.items()}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("by", "q", "expected"),
    [
        (None, 0.3, {None: 0.075}), (None, 0.5, {None: 0.1277777777777778}),  # sum(...) by (le)
        (1, 0.3, {"ins1": 0.075, "ins2": 0.075}), (1, 0.5, {"ins1": 0.1333333333, "ins2": 0.125}),
        (0, 0.3, {"job1": 0.1, "job2": 0.0642857142857143}), (0, 0.5, {"job1": 0.14, "job2": 0.1125}),
    ],
)  # fmt: skip
def test_aggregated_histograms_as_sum_by_le(by: int | None, q: float, expected: dict[str | None, float]) -> None:
    found = {key: histogram_quantile(q, counts, DURATION_BOUNDS) for key, counts in _sum_by(by).items()}
    assert found == pytest.approx(expected)


def test_no_observations_is_none_where_prometheus_gives_nan() -> None:
    assert histogram_quantile(0.5, [0, 0, 0], DURATION_BOUNDS) is None
