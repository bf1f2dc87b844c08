"""The metrics history on a real SQLite file, with a simulated clock: slots, flushing, queries,
downsampling and retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.events import (
    LATENCY_BUCKETS_SECONDS,
    DeploymentStatusChanged,
    ReplicaRequests,
    ReplicaStatus,
    ReplicaUsage,
    ReplicaUsageReported,
    RequestMetricsReported,
    RevisionTarget,
    TrafficAssigned,
)
from services.metrics.history import History, QueryError, Retention
from services.metrics.store import DOWNSAMPLED, RAW, Store, open_store

T0 = 1_800_000_000  # a multiple of 300 s: slots and steps start on it
REF = {"deployment_id": "d1", "project": "p", "slug": "iris"}


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def history(tmp_path: Path, clock: Clock) -> History:
    return History(Store(open_store(f"sqlite:///{tmp_path / 'metrics.db'}")), Retention(), clock)


def bucket(seconds: float) -> int:
    return next(i for i, bound in enumerate(LATENCY_BUCKETS_SECONDS) if seconds <= bound)


def report(at: float, latencies: list[float], errors: int = 0, client_errors: int = 0, replica: str = "r1",
           revision: str = "rev1", in_flight: int = 0) -> RequestMetricsReported:  # fmt: skip
    buckets = [0] * len(LATENCY_BUCKETS_SECONDS)
    for latency in latencies:
        buckets[bucket(latency)] += 1
    return RequestMetricsReported(
        **REF, occurred_at=datetime.fromtimestamp(at, UTC), window_seconds=5.0, requests=len(latencies),
        errors=errors, client_errors=client_errors, latency_sum_seconds=sum(latencies), latency_buckets=buckets,
        in_flight=in_flight,
        replicas=[ReplicaRequests(replica_id=replica, revision_id=revision, requests=len(latencies), errors=errors,
                                  latency_buckets=buckets)],
    )  # fmt: skip


def values(answer: dict, name: str) -> list:
    return [value for _, value in answer["series"][name]]


async def test_a_query_sums_the_slots_of_each_step_and_takes_quantiles_of_the_summed_histogram(
    history: History, clock: Clock
) -> None:
    # The minute from T0: 55 fast requests, then 6 slow ones (0.3 s) of which 3 failed and 2 were 4xx.
    for second in range(5, 60, 5):
        await history.on_event(report(T0 + second, [0.02] * 5))
    await history.on_event(report(T0 + 60, [0.3] * 6, errors=3, client_errors=2))  # its middle: T0+57.5
    clock.now = T0 + 120
    history.flush()
    answer = history.series("d1", window=180, step=60, version=None)
    assert [stamp for stamp, _ in answer["series"]["request_rate"]] == [T0, T0 + 60, T0 + 120]
    assert values(answer, "request_rate") == [None, pytest.approx(61 / 60), None]
    assert values(answer, "error_rate")[1] == pytest.approx(3 / 61)
    assert values(answer, "client_error_rate")[1] == pytest.approx(2 / 61)
    # histogram_quantile: rank 0.99*61 = 60.39 lies in (0.25, 0.5], which holds the 6 above the 55 below.
    assert values(answer, "latency_p99")[1] == pytest.approx(0.25 + 0.25 * (0.99 * 61 - 55) / 6)
    assert values(answer, "latency_p50")[1] == pytest.approx(0.01 + 0.015 * (0.5 * 61) / 55)
    assert [r["replica_id"] for r in answer["replicas"]] == ["r1"]


async def test_points_are_one_per_step_and_steps_without_reports_are_null(history: History, clock: Clock) -> None:
    await history.on_event(report(T0 + 30, [0.01] * 10))
    clock.now = T0 + 600
    history.flush()
    answer = history.series("d1", window=600, step=60, version=None)
    stamps = [stamp for stamp, _ in answer["series"]["request_rate"]]
    assert len(stamps) == 10 and stamps[-1] == T0 + 600 and all(b - a == 60 for a, b in zip(stamps, stamps[1:]))
    rates = values(answer, "request_rate")
    assert rates[0] == pytest.approx(10 / 60) and rates[1:] == [None] * 9
    assert values(answer, "latency_p99")[1:] == [None] * 9


async def test_open_slots_are_in_queries_and_summaries_before_they_are_written(history: History, clock: Clock) -> None:
    await history.on_event(report(T0 + 3, [0.01] * 30, errors=3))
    clock.now = T0 + 5
    assert history.series("d1", window=60, step=10, version=None)["current"]["request_rate"] == pytest.approx(0.5)
    summary = history.summary("d1")
    assert summary.error_rate == pytest.approx(0.1) and summary.latency_p50 is not None
    (event,) = history.summaries()
    assert event.subject() == "berth.metrics.v1.summary.d1" and event.summary.request_rate == pytest.approx(0.5)


async def test_usage_is_the_mean_over_replicas_and_restarts_count_increases(history: History, clock: Clock) -> None:
    usage = ReplicaUsageReported(
        **REF, occurred_at=datetime.fromtimestamp(T0 + 20, UTC), window_seconds=10.0,
        replicas=[ReplicaUsage(replica_id="r1", revision_id="rev1", state="running", cpu_percent=20.0, memory_percent=50.0),
                  ReplicaUsage(replica_id="r2", revision_id="rev1", state="running", cpu_percent=60.0)],
    )  # fmt: skip
    await history.on_event(usage)

    def status(at: int, restarts: int) -> DeploymentStatusChanged:
        return DeploymentStatusChanged(
            **REF, occurred_at=datetime.fromtimestamp(at, UTC), spec_id="s1", phase="Ready", desired_replicas=2,
            ready_replicas=1, replicas=[ReplicaStatus(replica_id="r1", spec_id="s1", revision_id="rev1",
                                                      restart_count=restarts)],
        )  # fmt: skip

    await history.on_event(status(T0 + 21, 1))  # the first sight is the baseline
    await history.on_event(status(T0 + 25, 3))
    clock.now = T0 + 60
    history.flush()
    answer = history.series("d1", window=60, step=60, version=None)
    assert values(answer, "cpu_percent") == [pytest.approx(40.0)]
    assert values(answer, "memory_percent") == [pytest.approx(50.0)]
    assert values(answer, "gpu_percent") == [None]
    assert values(answer, "restarts") == [2]
    assert (values(answer, "replicas_desired"), values(answer, "replicas_ready")) == ([2.0], [1.0])
    per = {r["replica_id"]: r["series"] for r in answer["replicas"]}
    assert [v for _, v in per["r1"]["restarts"]] == [2] and [v for _, v in per["r2"]["cpu_percent"]] == [60.0]


async def test_a_version_selects_the_replicas_of_its_revision(history: History, clock: Clock) -> None:
    traffic = TrafficAssigned(
        **REF, generation=1, spec_version=2,
        targets=[RevisionTarget(revision_id="rev1", percent=50, spec_versions=[1]),
                 RevisionTarget(revision_id="rev2", percent=50, spec_versions=[2])],
    )  # fmt: skip
    await history.on_event(traffic)
    await history.on_event(report(T0 + 5, [0.01] * 4, replica="a", revision="rev1"))
    await history.on_event(report(T0 + 5, [2.0] * 6, errors=6, replica="b", revision="rev2"))
    clock.now = T0 + 60
    history.flush()
    v2 = history.series("d1", window=60, step=60, version=2)
    assert values(v2, "request_rate") == [pytest.approx(0.1)] and values(v2, "error_rate") == [1.0]
    assert [r["replica_id"] for r in v2["replicas"]] == ["b"]
    both = history.series("d1", window=60, step=60, version=None)
    assert values(both, "request_rate") == [pytest.approx(10 / 60)]
    with pytest.raises(QueryError) as unknown:
        history.series("d1", window=60, step=60, version=7)
    assert unknown.value.field == "version"


def test_bad_windows_and_steps_name_the_field(history: History) -> None:
    for window, step, field in [(3600, 1, "step"), (30, 60, "window"), (40 * 86400, 3600, "window"),
                                (86400 * 3, 60, "step"), (86400, 10, None)]:  # fmt: skip
        if field is None:
            history.series("d1", window=window, step=step, version=None)  # 8640 points: allowed
            continue
        with pytest.raises(QueryError) as error:
            history.series("d1", window=window, step=step, version=None)
        assert error.value.field == field


async def test_downsampling_keeps_the_figures_and_retention_drops_old_rows(history: History, clock: Clock) -> None:
    store = history.store
    history.downsample()  # the first run starts downsampling from now
    for minute in range(10):
        await history.on_event(report(T0 + minute * 60 + 5, [0.01] * 5 + [0.7]))
        clock.now = T0 + minute * 60 + 30
        history.flush()
    clock.now = T0 + 600 + 10
    history.flush()
    assert history.downsample() > 0
    clock.now = T0 + 600  # steps on the same bounds as the downsampled ones
    raw = history.series("d1", window=600, step=300, version=None)
    # Beyond the raw retention the downsampled rows answer: the same sums, the same quantiles.
    clock.now += 86400 + 600
    old = history.series("d1", window=2 * 86400, step=300, version=None)
    found = [(r, q) for r, q in zip(values(old, "request_rate"), values(old, "latency_p99"), strict=True) if r]
    assert found == list(zip(values(raw, "request_rate"), values(raw, "latency_p99"), strict=True))
    assert history.expire() > 0  # the raw rows, a day old
    assert store.read("d1", RAW, 0, 2**31) == []
    assert len(store.read("d1", DOWNSAMPLED, 0, 2**31)) > 0
    clock.now += 31 * 86400
    history.expire()
    assert store.read("d1", DOWNSAMPLED, 0, 2**31) == []


async def test_a_late_report_for_a_written_slot_adds_up(history: History, clock: Clock) -> None:
    await history.on_event(report(T0 + 5, [0.01] * 4))
    clock.now = T0 + 30
    history.flush()
    await history.on_event(report(T0 + 5, [0.01] * 6))  # redelivered after a restart, say
    history.flush(everything=True)
    answer = history.series("d1", window=60, step=60, version=None)
    assert values(answer, "request_rate") == [pytest.approx(10 / 60)]


async def test_reports_of_several_router_workers_add_up(history: History, clock: Clock) -> None:
    # Two workers report the slot [T0, T0+10). Worker a: two windows of 10 requests, 2 then 4 in
    # flight (mean 3); worker b: one window of 5 requests, 6 in flight. The router served 25 requests
    # in 10 s with 3 + 6 = 9 in flight: not the mean of the three reports (4).
    a, b = "host/1", "host/2"
    await history.on_event(report(T0 + 5, [0.01] * 10, in_flight=2).model_copy(update={"reporter": a}))
    await history.on_event(report(T0 + 6, [0.01] * 5, in_flight=6).model_copy(update={"reporter": b}))
    await history.on_event(report(T0 + 10, [0.01] * 10, in_flight=4).model_copy(update={"reporter": a}))
    clock.now = T0 + 10
    assert history.summary("d1").in_flight == 4 + 6  # each worker's latest
    clock.now = T0 + 20
    history.flush()
    answer = history.series("d1", window=20, step=10, version=None)
    assert values(answer, "request_rate") == [pytest.approx(2.5), None]
    assert values(answer, "in_flight") == [pytest.approx(9.0), None]
