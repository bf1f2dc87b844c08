"""The state of one alert (a rule of a deployment) and its transitions, exactly as a Prometheus
alerting rule's alert moves (prometheus/rules/alerting.go, `AlertingRule.Eval`), pure:

- the condition holds and the alert is inactive (or resolved): it becomes pending, active since now;
- the condition holds and the alert is pending or firing: only its value is updated;
- pending and active for at least `for`: firing, fired now (`for: 0` fires at the first evaluation
  that finds the condition, with no pending state in between);
- the condition does not hold: a pending alert becomes inactive, a firing one resolved (now).

`keep_firing_for` is not offered. No data (no sample) counts as the condition not holding, as an
empty PromQL result does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from libs.events import AlertState


@dataclass(frozen=True)
class Alert:
    state: AlertState = "inactive"
    value: float | None = None
    active_at: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def since(self) -> datetime | None:
        """When the alert entered its state (null for an alert that was never active)."""
        return {"pending": self.active_at, "firing": self.fired_at, "resolved": self.resolved_at}.get(self.state)


def step(alert: Alert, holds: bool, value: float | None, now: datetime, hold_seconds: float) -> Alert:
    """The alert after one evaluation at `now` that found the condition holding or not."""
    if holds:
        if alert.state in ("pending", "firing"):
            alert = replace(alert, value=value)
        else:
            alert = Alert(state="pending", value=value, active_at=now)
        if alert.state == "pending" and alert.active_at is not None and (now - alert.active_at).total_seconds() >= hold_seconds:
            alert = replace(alert, state="firing", fired_at=now)
        return alert
    if alert.state == "pending":
        return Alert(state="inactive", value=value)
    if alert.state == "firing":
        return replace(alert, state="resolved", value=value, resolved_at=now)
    return replace(alert, value=value)
