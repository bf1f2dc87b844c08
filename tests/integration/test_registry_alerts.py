"""Alerts and webhooks through the registry's REST API (real SQLite and nats-server): the read model
of the alerting service's AlertChanged, and the project's webhooks published with references only."""

from __future__ import annotations

from typing import Any

import httpx
from nats.js import JetStreamContext

from libs.bus import latest_per_subject, make_broker, publish
from libs.events import AlertChanged, WebhooksChanged, utcnow
from tests.helpers import eventually
from tests.integration.test_registry_api import Registry, api, create, registry, spec  # noqa: F401 - fixtures

RULES = [
    {"name": "HighErrors", "metric": "error_rate_percent", "op": ">", "threshold": 1, "for": "5m"},
    {"name": "slow", "metric": "latency_p99_seconds", "op": ">", "threshold": 2, "for": "10m", "window": "10m"},
]
HOOK = "http://127.0.0.1:9/hooks/berth?team=ml"


async def test_webhooks_are_checked_stored_and_published_with_the_key_reference_only(
    api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    key = "hmac-key-value-1234"
    missing = await api.put("/v1/webhooks", json={"url": HOOK, "secret": "secret:hook-key"})
    assert missing.status_code == 422 and [e["field"] for e in missing.json()["errors"]] == ["secret"]
    literal = await api.put("/v1/webhooks", json={"url": "http://u:pw@example.com/x", "secret": key})
    assert literal.status_code == 422
    assert {e["field"] for e in literal.json()["errors"]} == {"url", "secret"}
    assert key not in literal.text and "pw@" not in literal.text  # the rules are said, never the values

    assert (await api.put("/v1/secrets/hook-key", json={"value": key})).status_code == 204
    created = await api.put("/v1/webhooks", json={"url": HOOK, "secret": "secret:hook-key"})
    again = await api.put("/v1/webhooks", json={"url": HOOK, "secret": "secret:hook-key"})
    assert (created.status_code, again.status_code) == (201, 200)
    listed = (await api.get("/v1/webhooks")).json()["items"]
    assert [(h["url"], h["secret"]) for h in listed] == [(HOOK, "secret:hook-key")]
    held = await eventually(lambda: newest(js, [(HOOK, "secret:hook-key")]), what="the webhooks published")
    assert key not in held.model_dump_json()

    assert (await api.delete("/v1/webhooks", params={"url": HOOK})).status_code == 204
    gone = await api.delete("/v1/webhooks", params={"url": HOOK})
    assert gone.status_code == 404 and gone.json()["errors"][0]["field"] == "url"
    assert (await api.get("/v1/webhooks")).json()["items"] == []

    await eventually(lambda: newest(js, []), what="the deletion published")


async def newest(js: JetStreamContext, hooks: list[tuple[str, str]]) -> WebhooksChanged | None:
    """The project's newest WebhooksChanged (the stream keeps only it) when it lists `hooks`."""
    (event,) = await latest_per_subject(js, "berth.webhooks.v1.default") or [None]
    assert isinstance(event, WebhooksChanged)
    return event if [(h.url, h.secret) for h in event.webhooks] == hooks else None


async def test_alerts_show_per_rule_in_status_and_in_the_project_listing(
    registry: Registry, api: httpx.AsyncClient
) -> None:
    created = await create(api, spec(alerts=RULES))
    deployment_id = created["deployment_id"]
    assert created["status"]["alerts"] == [
        {"name": "HighErrors", "state": "inactive", "since": None, "value": None},
        {"name": "slow", "state": "inactive", "since": None, "value": None},
    ]
    assert (await api.get("/v1/alerts")).json() == {"items": []}

    now = utcnow()
    firing = AlertChanged(
        deployment_id=deployment_id, project="default", slug=created["slug"], name=created["name"],
        rule="HighErrors", rule_slug="higherrors", metric="error_rate_percent", op=">", threshold=1.0,
        for_seconds=300, window_seconds=300, state="firing", previous_state="pending", value=7.5,
        active_at=now, fired_at=now, occurred_at=now,
    )  # fmt: skip
    broker = make_broker(registry.settings.resolved_nats_url, "test")
    async with broker:
        await broker.connect()
        await publish(broker, firing)

    async def firing_in_status() -> dict[str, Any] | None:
        status = (await api.get(f"/v1/deployments/{deployment_id}")).json()["status"]
        return status if status["alerts"][0]["state"] == "firing" else None

    status = await eventually(firing_in_status, what="the alert read from BERTH_ALERTS")
    assert status["alerts"][0]["value"] == 7.5 and status["alerts"][1]["state"] == "inactive"

    rules = (await api.get(f"/v1/deployments/{created['slug']}/alerts")).json()["items"]
    assert [(r["name"], r["state"], r["for"], r["window"]) for r in rules] == [
        ("HighErrors", "firing", "5m", "5m"), ("slow", "inactive", "10m", "10m")
    ]
    listing = (await api.get("/v1/alerts")).json()["items"]
    assert [(a["deployment"], a["name"], a["state"], a["for"]) for a in listing] == [
        ("my cool deployment", "HighErrors", "firing", "5m")
    ]
    assert (await api.get("/v1/alerts", params={"state": "resolved"})).json() == {"items": []}
    bad = await api.get("/v1/alerts", params={"state": "burning"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "state"

    async with await registry.project_client("other") as other:  # another project sees none of it
        assert (await other.get("/v1/alerts")).json() == {"items": []}
        assert (await other.get(f"/v1/deployments/{deployment_id}/alerts")).status_code == 404


async def test_a_usage_rule_of_a_deployment_without_autoscaling_is_evaluated_not_said_unprovided(
    registry: Registry, api: httpx.AsyncClient
) -> None:
    # The scheduler reports usage of every deployment with replicas, so cpu/memory rules get data.
    usage_rules = [{"name": "hot", "metric": "cpu_percent", "op": ">", "threshold": 90, "for": "5m"},
                   {"name": "full", "metric": "memory_percent", "op": ">", "threshold": 90, "for": "5m"}]  # fmt: skip
    created = await create(api, spec(alerts=usage_rules))  # two fixed replicas, no autoscaling
    status = (await api.get(f"/v1/deployments/{created['deployment_id']}")).json()["status"]
    assert [a["name"] for a in status["alerts"]] == ["hot", "full"]
    assert not [item for item in status["not_provided"] if item.startswith("alerts[")], status["not_provided"]
