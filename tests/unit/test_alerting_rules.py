"""Alert states as a Prometheus alerting rule moves them (prometheus/rules/alerting.go, Eval), with
simulated time: each case is what Prometheus would show at each evaluation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.alerting.rules import Alert, step

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(evaluations: list[tuple[float, bool]], hold: float) -> list[Alert]:
    """The alert after each (time, condition holds) evaluation, from inactive."""
    alert, seen = Alert(), []
    for seconds, holds in evaluations:
        alert = step(alert, holds, 1.0 if holds else 0.0, at(seconds), hold)
        seen.append(alert)
    return seen


def test_pending_while_the_condition_holds_then_firing_once_it_held_for_the_duration() -> None:
    states = run([(0, True), (60, True), (299, True), (300, True), (360, True)], hold=300)
    assert [a.state for a in states] == ["pending", "pending", "pending", "firing", "firing"]
    assert all(a.active_at == at(0) for a in states)  # ActiveAt is kept while the alert stays active
    assert states[3].fired_at == at(300) and states[4].fired_at == at(300)  # ts - ActiveAt >= for: fires


def test_for_zero_fires_at_the_first_evaluation_that_finds_the_condition() -> None:
    (alert,) = run([(15, True)], hold=0)
    assert alert.state == "firing" and alert.active_at == alert.fired_at == at(15)


def test_pending_that_stops_before_for_goes_back_to_inactive_and_starts_over() -> None:
    states = run([(0, True), (120, False), (135, True), (434, True), (435, True)], hold=300)
    assert [a.state for a in states] == ["pending", "inactive", "pending", "pending", "firing"]
    assert states[1].fired_at is None and states[1].resolved_at is None  # never fired: nothing resolved
    assert states[2].active_at == at(135)  # counted from the new start, not the first one
    assert states[4].fired_at == at(435)


def test_firing_that_stops_is_resolved_and_a_new_episode_starts_pending() -> None:
    states = run([(0, True), (15, False), (30, False), (45, True)], hold=0)
    assert [a.state for a in states] == ["firing", "resolved", "resolved", "firing"]
    assert states[1].resolved_at == at(15) and states[2].resolved_at == at(15)
    assert states[3].active_at == at(45) and states[3].resolved_at is None


def test_a_value_update_keeps_the_alert_where_it_is() -> None:
    alert = step(Alert(), True, 3.0, at(0), 60)
    alert = step(alert, True, 7.5, at(15), 60)
    assert (alert.state, alert.value, alert.active_at) == ("pending", 7.5, at(0))


def test_no_data_is_the_condition_not_holding() -> None:
    firing = step(Alert(), True, 5.0, at(0), 0)
    assert step(firing, False, None, at(15), 0).state == "resolved"
