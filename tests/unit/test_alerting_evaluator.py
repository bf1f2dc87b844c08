"""The alerting service's figures and evaluation with simulated time: rates as Prometheus' rate(),
quantiles as histogram_quantile, restarts and replica counts from status; each transition published
once, states restored after a restart without firing again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.events import (
    AlertChanged,
    DeploymentDeleted,
    DeploymentStatusChanged,
    Event,
    ReplicaStatus,
    RequestMetricsReported,
    SpecApplied,
)
from libs.spec import load_spec
from services.alerting.evaluator import Evaluator
from services.alerting.window import Window, extrapolated_rate

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REF = {"deployment_id": "d1", "project": "default", "slug": "iris"}
BUCKETS = 12


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> float:
    return at(seconds).timestamp()


def report(
    end: float, requests: int, errors: int = 0, window: float = 1.0, bucket: int = 0, client_errors: int = 0
) -> RequestMetricsReported:
    buckets = [0] * BUCKETS
    buckets[bucket] = requests
    return RequestMetricsReported(
        **REF, occurred_at=at(end), window_seconds=window, requests=requests, errors=errors,
        client_errors=client_errors, latency_sum_seconds=0.0, latency_buckets=buckets,
    )  # fmt: skip


def spec(alerts: str) -> SpecApplied:
    document = f"name: iris\nimage: x\nresources: {{ports: [8000]}}\nalerts: {alerts}"
    return SpecApplied(**REF, name="iris", spec_id="s1", spec_version=1, spec=load_spec(document))


ERRORS_5S = '[{name: Errors, metric: error_rate_percent, op: ">", threshold: 1, for: 5s, window: 10s}]'


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Published(list[AlertChanged]):
    fail = False

    async def __call__(self, event: Event) -> None:
        if self.fail:
            raise ConnectionError("bus away")
        assert isinstance(event, AlertChanged)
        self.append(event)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> Published:
    return Published()


async def evaluate(evaluator: Evaluator, clock: Clock, seconds: float) -> None:
    clock.now = at(seconds)
    await evaluator.evaluate_all()


# -- figures --------------------------------------------------------------------------------------


def test_rate_extrapolates_to_the_range_boundaries_as_prometheus_does() -> None:
    # A counter rising 10 every 10 s, sampled at 10..60 over the range (0, 60]: the first sample is
    # within 1.1 average intervals of the start, so the slope is extended to it: 60 over 60 s.
    samples = [(float(t), float(t - 10)) for t in range(10, 61, 10)]
    assert extrapolated_rate(samples, 0.0, 60.0) == pytest.approx(1.0)
    # A series that starts in the middle of the range is extended by half an interval only.
    late = [(float(t), float(t - 40)) for t in range(40, 61, 10)]
    assert extrapolated_rate(late, 0.0, 60.0) == pytest.approx(20 * (20 + 5) / 20 / 60)
    # A counter reset (a lower value) counts the value before it, as rate() does; the range is
    # left-open, so a sample at its start is outside.
    reset = [(10.0, 5.0), (20.0, 8.0), (30.0, 2.0)]
    assert extrapolated_rate(reset, 5.0, 30.0) == pytest.approx((8 - 5 + 2) * 25 / 20 / 25)
    assert extrapolated_rate(reset, 10.0, 30.0) == pytest.approx((2 - 8 + 8) * 20 / 10 / 20)
    assert extrapolated_rate([(10.0, 5.0)], 0.0, 60.0) is None  # one sample: no rate


def test_error_rate_and_request_rate_from_the_router_windows() -> None:
    window = Window()
    for end in range(1, 31):
        window.add(report(end, requests=100, errors=5 if end > 20 else 0))
    assert window.value("request_rate", 10, ts(30)) == pytest.approx(100.0)
    assert window.value("error_rate_percent", 10, ts(30)) == pytest.approx(5.0)
    assert window.value("error_rate_percent", 10, ts(20)) == 0.0
    assert window.value("error_rate_percent", 10, ts(100)) is None  # no report within the range: no data


def test_latency_quantiles_and_client_errors() -> None:
    window = Window()
    for end in range(1, 11):
        window.add(report(end, requests=10, bucket=2 if end % 2 else 8, client_errors=end % 2))  # (0.01, 0.025], (1, 2.5]
    assert window.value("latency_p50_seconds", 10, ts(10)) == pytest.approx(0.025)
    assert window.value("latency_p99_seconds", 10, ts(10)) == pytest.approx(1.0 + 1.5 * 0.98)
    # As rate(4xx) / rate(all): the first sample in the range is the counters' base, so the increase is
    # what reports 2..10 add: 4 of 90 requests answered 4xx.
    assert window.value("client_error_rate_percent", 10, ts(10)) == pytest.approx(100 * 4 / 90)


def status(seconds: float, desired: int, ready: int, restarts: dict[str, int]) -> DeploymentStatusChanged:
    replicas = [ReplicaStatus(replica_id=r, spec_id="s1", restart_count=n) for r, n in restarts.items()]
    return DeploymentStatusChanged(
        **REF, occurred_at=at(seconds), spec_id="s1", phase="Ready", desired_replicas=desired,
        ready_replicas=ready, replicas=replicas,
    )  # fmt: skip


def test_restarts_within_the_window_and_ready_below_desired() -> None:
    window = Window()
    window.add(status(0, 2, 2, {"a": 4, "b": 0}))
    window.add(status(100, 2, 1, {"a": 5, "b": 0}))
    window.add(status(200, 2, 1, {"a": 7, "b": 1}))
    window.add(status(250, 3, 1, {"a": 7, "c": 0}))
    assert window.value("restarts", 300, ts(300)) == 4.0  # a: 4 -> 7, b: 0 -> 1; c is new
    assert window.value("restarts", 120, ts(300)) == 3.0  # only what happened after t=180
    assert window.value("ready_below_desired", 300, ts(300)) == 2.0
    assert window.value("ready_below_desired", 300, ts(150)) == 1.0


# -- evaluation -------------------------------------------------------------------------------------


async def test_an_error_rate_alert_goes_pending_firing_resolved_with_one_event_each(
    clock: Clock, published: Published
) -> None:
    evaluator = Evaluator(published, clock)
    await evaluator.on_event(spec(ERRORS_5S))
    for end in range(1, 11):
        await evaluator.on_event(report(end, requests=50))
    await evaluate(evaluator, clock, 10)
    assert published == []  # 0 %: nothing to say
    for end in range(11, 21):
        await evaluator.on_event(report(end, requests=50, errors=10))
    await evaluate(evaluator, clock, 12)
    await evaluate(evaluator, clock, 15)
    await evaluate(evaluator, clock, 17)
    await evaluate(evaluator, clock, 18)
    assert [(e.state, e.previous_state) for e in published] == [("pending", "inactive"), ("firing", "pending")]
    assert published[1].active_at == at(12) and published[1].fired_at == at(17)  # held for 5 s
    assert published[1].value is not None and published[1].value > 1
    for end in range(21, 40):
        await evaluator.on_event(report(end, requests=50))
    await evaluate(evaluator, clock, 39)
    assert [e.state for e in published] == ["pending", "firing", "resolved"]
    assert published[2].resolved_at == at(39) and published[2].fired_at == at(17)
    assert len({e.event_id for e in published}) == 3
    assert published[0].subject() == "berth.alerts.v1.d1.errors"


async def test_a_restart_restores_states_without_firing_again(clock: Clock, published: Published) -> None:
    first = Evaluator(published, clock)
    await first.on_event(spec(ERRORS_5S.replace("5s", "0s")))
    for end in range(1, 11):
        await first.on_event(report(end, requests=50, errors=25))
    await evaluate(first, clock, 10)
    assert [e.state for e in published] == ["firing"]

    # A new process: the spec, the alert's last event (BERTH_ALERTS) and the figures again.
    again = Evaluator(published, clock)
    for event in (spec(ERRORS_5S.replace("5s", "0s")), published[0]):
        await again.on_event(event)
    for end in range(1, 12):
        await again.on_event(report(end, requests=50, errors=25))
    await evaluate(again, clock, 11)
    assert [e.state for e in published] == ["firing"]  # still firing: nothing published
    await evaluate(again, clock, 30)  # the errors stopped being reported: no data
    assert [e.state for e in published] == ["firing", "resolved"]
    assert published[1].fired_at == published[0].fired_at


async def test_a_pending_alert_keeps_counting_its_for_across_a_restart(clock: Clock, published: Published) -> None:
    first = Evaluator(published, clock)
    await first.on_event(spec(ERRORS_5S))
    for end in range(1, 11):
        await first.on_event(report(end, requests=50, errors=25))
    await evaluate(first, clock, 10)
    again = Evaluator(published, clock)
    await again.on_event(spec(ERRORS_5S))
    await again.on_event(published[0])
    for end in range(1, 16):
        await again.on_event(report(end, requests=50, errors=25))
    await evaluate(again, clock, 15)
    assert [e.state for e in published] == ["pending", "firing"]
    assert published[1].active_at == at(10)


async def test_a_transition_the_bus_refused_is_published_at_the_next_evaluation(
    clock: Clock, published: Published
) -> None:
    evaluator = Evaluator(published, clock)
    await evaluator.on_event(spec(ERRORS_5S.replace("5s", "0s")))
    for end in range(1, 11):
        await evaluator.on_event(report(end, requests=50, errors=25))
    published.fail = True
    await evaluate(evaluator, clock, 10)
    published.fail = False
    await evaluate(evaluator, clock, 10.5)
    assert [(e.state, e.previous_state) for e in published] == [("firing", "inactive")]


async def test_removing_the_rule_or_the_deployment_ends_its_alert(clock: Clock, published: Published) -> None:
    evaluator = Evaluator(published, clock)
    await evaluator.on_event(spec(ERRORS_5S.replace("5s", "0s")))
    for end in range(1, 11):
        await evaluator.on_event(report(end, requests=50, errors=25))
    await evaluate(evaluator, clock, 10)
    await evaluator.on_event(spec("[]"))
    await evaluate(evaluator, clock, 11)
    assert [e.state for e in published] == ["firing", "resolved"]
    assert "removed" in published[1].reason and published[1].for_seconds == 0 and published[1].window_seconds == 10
    assert evaluator.deployments == {}  # nothing left to evaluate: forgotten

    await evaluator.on_event(spec(ERRORS_5S.replace("5s", "0s")))
    for end in range(11, 21):
        await evaluator.on_event(report(end, requests=50, errors=25))
    await evaluate(evaluator, clock, 20)
    await evaluator.on_event(DeploymentDeleted(**REF))
    await evaluate(evaluator, clock, 21)
    assert [e.state for e in published][-2:] == ["firing", "resolved"] and "deleted" in published[-1].reason
