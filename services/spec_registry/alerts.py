"""The registry's read model of alerts: the newest AlertChanged of every (deployment, rule), fed by a
watch of BERTH_ALERTS (the newest per subject on start, then each new one), and how the API shows them.

Held in memory, like the stream itself holds only the newest per alert: one entry per alert berth
has ever evaluated, whatever the number of transitions. Each registry instance keeps its own.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from libs.events import AlertChanged
from libs.spec import AlertRule, DeploymentSpec, SpecError, only_secret_ref
from services.spec_registry.problems import Invalid
from services.spec_registry.schemas import Alert, AlertSummary

WEBHOOK_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s#]*)?$")
URL_RULE = (
    "must be an http:// or https:// URL of printable ASCII without spaces, credentials (user:password@) or fragment"
)
MAX_WEBHOOKS = 10  # per project


class AlertBoard:
    def __init__(self) -> None:
        self._alerts: dict[tuple[str, str], AlertChanged] = {}

    async def on_event(self, event: Any) -> None:
        if not isinstance(event, AlertChanged):
            return
        key = (event.deployment_id, event.rule_slug)
        held = self._alerts.get(key)
        if held is None or held.occurred_at <= event.occurred_at:
            self._alerts[key] = event

    def get(self, deployment_id: str, rule_slug: str) -> AlertChanged | None:
        return self._alerts.get((deployment_id, rule_slug))

    def of_project(self, project: str) -> list[AlertChanged]:
        return [e for e in self._alerts.values() if e.project == project]


def _since(event: AlertChanged | None) -> datetime | None:
    if event is None:
        return None
    return {"pending": event.active_at, "firing": event.fired_at, "resolved": event.resolved_at}.get(
        event.state, event.occurred_at
    )


def summaries(board: AlertBoard, deployment_id: str, spec: DeploymentSpec) -> list[AlertSummary]:
    """Every rule of the spec with its alert's state (inactive until the alerting service says otherwise)."""
    found = []
    for rule in spec.alerts:
        event = board.get(deployment_id, rule.slug)
        found.append(AlertSummary(
            name=rule.name, state=event.state if event else "inactive", since=_since(event),
            value=event.value if event else None,
        ))  # fmt: skip
    return found


def of_rule(rule: AlertRule, event: AlertChanged | None, deployment_id: str, name: str, slug: str) -> Alert:
    """A rule of a deployment's current spec, with its alert's state."""
    return Alert(
        name=rule.name, deployment_id=deployment_id, deployment=name, slug=slug, metric=rule.metric, op=rule.op,
        threshold=rule.threshold, for_=rule.for_, window=rule.window,
        state=event.state if event else "inactive", since=_since(event), value=event.value if event else None,
        active_at=event.active_at if event else None, fired_at=event.fired_at if event else None,
        resolved_at=event.resolved_at if event else None, updated_at=event.occurred_at if event else None,
        reason=event.reason if event else "",
    )  # fmt: skip


def of_event(event: AlertChanged) -> Alert:
    """An alert as its last transition describes it (its rule may have gone since)."""
    return Alert(
        name=event.rule, deployment_id=event.deployment_id, deployment=event.name, slug=event.slug,
        metric=event.metric, op=event.op, threshold=event.threshold, for_=_duration(event.for_seconds),
        window=_duration(event.window_seconds), state=event.state, since=_since(event), value=event.value,
        active_at=event.active_at, fired_at=event.fired_at, resolved_at=event.resolved_at,
        updated_at=event.occurred_at, reason=event.reason,
    )  # fmt: skip


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole != seconds:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def valid_url(url: str) -> bool:
    """Printable ASCII only (an international name in its punycode form): what every HTTP client and
    database takes as it is."""
    return url.isascii() and url.isprintable() and WEBHOOK_URL.fullmatch(url) is not None


def check_webhook(url: str, secret: str) -> None:
    """422 naming each field and its rule (never the value: a URL may hold a token)."""
    errors = [] if valid_url(url) else [SpecError("url", URL_RULE)]
    try:
        only_secret_ref(secret, "the key")
    except ValueError as exc:
        errors.append(SpecError("secret", str(exc)))
    if errors:
        raise Invalid("the webhook is not valid", errors)
