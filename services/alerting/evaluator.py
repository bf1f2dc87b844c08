"""The alerting service's state: each deployment's rules (from its newest spec), its recent figures
(window.py) and the state of each of its alerts (rules.py); `evaluate_all` runs every evaluation
interval and publishes each transition as AlertChanged.

A transition is taken only once its event is published: when the bus refuses it, the alert keeps its
state and the next evaluation tries again. On start the alerts' states come back from BERTH_ALERTS
(newest per subject), so a restart neither loses a firing alert nor fires it again; a pending alert
keeps the time it became active, so its `for` goes on counting across the restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.events import (
    AlertChanged,
    DeploymentDeleted,
    DeploymentStatusChanged,
    Event,
    ReplicaUsageReported,
    RequestMetricsReported,
    SpecApplied,
    utcnow,
)
from libs.logging import get_logger
from libs.spec import AlertRule
from services.alerting.metrics import EVALUATIONS, TRANSITIONS
from services.alerting.rules import Alert, step
from services.alerting.window import Window

log = get_logger("alerting.evaluator")

RULE_REMOVED = "the rule was removed from the deployment's spec"
DEPLOYMENT_DELETED = "the deployment was deleted"
# Figures are kept this much longer than the longest window: a report's end may lag the clock a little.
KEEP_MARGIN_SECONDS = 60.0


@dataclass
class Deployment:
    deployment_id: str
    project: str
    slug: str
    name: str = ""
    rules: dict[str, AlertRule] = field(default_factory=dict)  # by slug
    deleted: bool = False
    window: Window = field(default_factory=Window)
    alerts: dict[str, Alert] = field(default_factory=dict)  # by rule slug
    ended: dict[str, AlertChanged] = field(default_factory=dict)  # alerts of rules that are gone: how to end them

    @property
    def keep_seconds(self) -> float:
        return max((rule.window_seconds for rule in self.rules.values()), default=0.0) + KEEP_MARGIN_SECONDS


class Evaluator:
    def __init__(self, publish: Callable[[Event], Awaitable[None]], clock: Callable[[], datetime] = utcnow) -> None:
        self._publish = publish
        self._clock = clock
        self.deployments: dict[str, Deployment] = {}

    async def on_event(self, event: Event) -> None:
        """Any event the service reads: specs (rules), figures, and its own AlertChanged (restore)."""
        if isinstance(event, SpecApplied):
            held = self._deployment(event.deployment_id, event.project, event.slug)
            held.name, held.deleted = event.name, False
            held.rules = {rule.slug: rule for rule in event.spec.alerts}
        elif isinstance(event, DeploymentDeleted):
            # Kept (until the next evaluation) even when unknown: alerts restored after it end as deleted.
            held = self._deployment(event.deployment_id, event.project, event.slug)
            held.rules, held.deleted = {}, True
        elif isinstance(event, AlertChanged):
            self.restore(event)
        elif isinstance(event, RequestMetricsReported | DeploymentStatusChanged | ReplicaUsageReported):
            held = self.deployments.get(event.deployment_id)
            if held is not None and held.rules:  # only deployments with rules keep figures
                held.window.add(event)

    def restore(self, event: AlertChanged) -> None:
        """An alert's state as last published (from BERTH_ALERTS on start)."""
        held = self._deployment(event.deployment_id, event.project, event.slug)
        held.name = held.name or event.name
        held.alerts[event.rule_slug] = Alert(
            state=event.state, value=event.value, active_at=event.active_at,
            fired_at=event.fired_at, resolved_at=event.resolved_at,
        )  # fmt: skip
        held.ended[event.rule_slug] = event

    async def evaluate_all(self) -> None:
        now = self._clock()
        for held in list(self.deployments.values()):
            await self._evaluate(held, now)
            if not held.rules and not any(a.state in ("pending", "firing") for a in held.alerts.values()):
                del self.deployments[held.deployment_id]  # nothing to evaluate or end any more
        EVALUATIONS.inc()

    async def _evaluate(self, held: Deployment, now: datetime) -> None:
        at = now.timestamp()
        held.window.prune(at - held.keep_seconds)
        for slug, rule in held.rules.items():
            value = held.window.value(rule.metric, rule.window_seconds, at)
            before = held.alerts.get(slug, Alert())
            after = step(before, rule.holds(value), value, now, rule.for_seconds)
            if after.state != before.state:
                if not await self._announce(held, _describe(rule), before, after, now):
                    continue
            held.alerts[slug] = after
        for slug in [s for s in held.alerts if s not in held.rules]:
            before = held.alerts[slug]
            if before.state in ("pending", "firing"):
                after = step(before, False, None, now, 0.0)
                reason = DEPLOYMENT_DELETED if held.deleted else RULE_REMOVED
                last = held.ended.get(slug)
                if last is None or not await self._announce(held, _described(last), before, after, now, reason):
                    continue
            del held.alerts[slug]
            held.ended.pop(slug, None)

    async def _announce(
        self, held: Deployment, rule: dict[str, Any], before: Alert, after: Alert, now: datetime, reason: str = ""
    ) -> bool:
        event = AlertChanged(
            deployment_id=held.deployment_id, project=held.project, slug=held.slug, name=held.name, **rule,
            state=after.state, previous_state=before.state, value=after.value, active_at=after.active_at,
            fired_at=after.fired_at, resolved_at=after.resolved_at, reason=reason, occurred_at=now,
        )  # fmt: skip
        try:
            await self._publish(event)
        except Exception:  # the next evaluation tries the transition again
            log.warning("alert transition not published; tried again at the next evaluation",
                        deployment_id=held.deployment_id, rule=event.rule, exc_info=True)  # fmt: skip
            return False
        held.ended[event.rule_slug] = event
        TRANSITIONS.labels(after.state).inc()
        log.info("alert changed", deployment_id=held.deployment_id, rule=event.rule,
                 state=after.state, previous=before.state, value=after.value)  # fmt: skip
        return True

    def _deployment(self, deployment_id: str, project: str, slug: str) -> Deployment:
        held = self.deployments.get(deployment_id)
        if held is None:
            held = self.deployments[deployment_id] = Deployment(deployment_id, project, slug)
        return held


RULE_FIELDS = ("rule", "rule_slug", "metric", "op", "threshold", "for_seconds", "window_seconds")


def _describe(rule: AlertRule) -> dict[str, Any]:
    """The fields of AlertChanged that say which rule it is about."""
    return {"rule": rule.name, "rule_slug": rule.slug, "metric": rule.metric, "op": rule.op,
            "threshold": rule.threshold, "for_seconds": rule.for_seconds, "window_seconds": rule.window_seconds}  # fmt: skip


def _described(event: AlertChanged) -> dict[str, Any]:
    """The same, of a rule known only from its alert's last event (the rule is gone from the spec)."""
    return {name: getattr(event, name) for name in RULE_FIELDS}
