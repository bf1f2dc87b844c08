"""Delivery of alert transitions to the project's webhooks: at least once, signed, de-duplicable.

A durable JetStream consumer of BERTH_ALERTS hands each AlertChanged to `Deliveries.deliver`; the
message is acknowledged only once every webhook of the project answered 2xx, otherwise the kit
redelivers it with exponential back-off (`RETRY`) for as long as it takes, across restarts of the
service. Like Prometheus, which sends Alertmanager only firing and resolved alerts, only those two
transitions are sent; pending and a pending alert's return to inactive are events and status only.

Each POST's body is JSON whose `id` is the transition's event id: the same on every retry and every
redelivery, so a receiver de-duplicates on it. `X-Berth-Signature: sha256=<hex>` is the HMAC-SHA256
of the raw body under the webhook's key, a project secret read (and unsealed) only here, when signing;
neither the key nor the signature is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from typing import Any

import httpx

from libs.events import AlertChanged, Webhook, WebhooksChanged
from libs.kit import RetryPolicy
from libs.logging import get_logger
from libs.secrets import SecretNotFound, SecretStore
from libs.spec import secret_name
from services.alerting.metrics import DELIVERIES

log = get_logger("alerting.webhooks")

SIGNATURE_HEADER = "X-Berth-Signature"
DELIVERED_STATES = ("firing", "resolved")
# Until 2xx: 1 s doubling to 5 min between attempts, without end (a dead letter would lose the alert).
RETRY = RetryPolicy(max_deliveries=2**31 - 1, first_delay_seconds=1.0, factor=2.0, max_delay_seconds=300.0)
TIMEOUT_SECONDS = 10.0
REMEMBERED = 4096  # (transition, url) pairs already answered 2xx: not sent again when a sibling fails


class DeliveryFailed(Exception):
    """A webhook did not answer 2xx: the transition is redelivered later (the message is not acked)."""


def sign(key: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def payload(event: AlertChanged) -> dict[str, Any]:
    """The JSON a webhook receives (docs/monitoring.md, Alerts)."""
    return {
        "id": event.event_id,
        "type": "alert",
        "state": event.state,
        "previous_state": event.previous_state,
        "project": event.project,
        "deployment": {"id": event.deployment_id, "name": event.name, "slug": event.slug},
        "rule": {
            "name": event.rule, "metric": event.metric, "op": event.op, "threshold": event.threshold,
            "for_seconds": event.for_seconds, "window_seconds": event.window_seconds,
        },  # fmt: skip
        "value": event.value,
        "active_at": _iso(event.active_at),
        "fired_at": _iso(event.fired_at),
        "resolved_at": _iso(event.resolved_at),
        "occurred_at": _iso(event.occurred_at),
        "reason": event.reason,
    }


def _iso(at: Any) -> str | None:
    return None if at is None else at.isoformat()


class Deliveries:
    def __init__(self, secrets: SecretStore, client: httpx.AsyncClient) -> None:
        self._secrets = secrets
        self._client = client
        self._webhooks: dict[str, list[Webhook]] = {}  # project -> its webhooks
        self._delivered: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def on_webhooks(self, event: Any) -> None:
        if isinstance(event, WebhooksChanged):
            self._webhooks[event.project] = list(event.webhooks)

    async def deliver(self, event: AlertChanged) -> None:
        """POST the transition to every webhook of its project; raises DeliveryFailed unless all answered 2xx."""
        if event.state not in DELIVERED_STATES:
            return
        body = json.dumps(payload(event), separators=(",", ":")).encode()
        failed = []
        for webhook in self._webhooks.get(event.project, []):
            if (event.event_id, webhook.url) in self._delivered:
                continue
            if await self._post(event, webhook, body):
                self._remember(event.event_id, webhook.url)
            else:
                failed.append(webhook.url)
        if failed:
            raise DeliveryFailed(f"{len(failed)} webhook(s) did not answer 2xx")

    async def _post(self, event: AlertChanged, webhook: Webhook, body: bytes) -> bool:
        try:
            key = await self._secrets.get(event.project, secret_name(webhook.secret))
        except SecretNotFound:
            log.warning("webhook key not found; delivery retried later", project=event.project,
                        secret=secret_name(webhook.secret), alert_id=event.event_id)  # fmt: skip
            DELIVERIES.labels("no_key").inc()
            return False
        headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(key, body), "user-agent": "berth-alerting"}
        try:
            response = await self._client.post(webhook.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.warning("webhook unreachable; delivery retried later", project=event.project,
                        alert_id=event.event_id, error=type(exc).__name__)  # fmt: skip
            DELIVERIES.labels("unreachable").inc()
            return False
        if not 200 <= response.status_code < 300:
            log.warning("webhook refused the delivery; retried later", project=event.project,
                        alert_id=event.event_id, status=response.status_code)  # fmt: skip
            DELIVERIES.labels("refused").inc()
            return False
        log.info("alert delivered", project=event.project, alert_id=event.event_id, state=event.state)
        DELIVERIES.labels("delivered").inc()
        return True

    def _remember(self, event_id: str, url: str) -> None:
        self._delivered[(event_id, url)] = None
        while len(self._delivered) > REMEMBERED:
            self._delivered.popitem(last=False)
