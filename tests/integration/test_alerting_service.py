"""The alerting service on a real nats-server with the generated permissions, each producer connected
as the service that really publishes it: on start it rebuilds its figures from the streams and fires;
the webhook gets the transition signed with the project secret; a restart fires nothing again."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr

from libs.bus import latest_per_subject, make_broker
from libs.config import Settings
from libs.events import AlertChanged, RequestMetricsReported, SpecApplied, Webhook, WebhooksChanged, utcnow
from libs.natsd import free_port
from libs.sealing import Sealer
from libs.secrets import SecretStore
from libs.spec import validate_spec
from services.alerting.app import start_alerting
from tests.helpers import eventually
from tests.servers.bus import authenticated_bus, publish_as, user

REF = {"deployment_id": "d1", "project": "default", "slug": "chat"}
KEY = "webhook-signing-key-0123456789"
RULE = {"name": "Errors", "metric": "error_rate_percent", "op": ">", "threshold": 1, "window": "1m"}


@pytest.fixture
async def settings(tmp_path: Path) -> AsyncIterator[Settings]:
    sealer = Sealer.from_settings(Settings(data_dir=tmp_path / "berth", _env_file=None))
    async with authenticated_bus(tmp_path, sealer) as (url, passwords):
        yield Settings(data_dir=tmp_path / "berth", nats_url=url, nats_user="alerting",
                       nats_password=SecretStr(passwords["alerting"]), alerting_ops_port=0,
                       alerting_interval_seconds=0.2, _env_file=None)  # fmt: skip


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[tuple[bytes, str]]]]:
    received: list[tuple[bytes, str]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-Berth-Signature"]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/", received
    await runner.cleanup()


def report(seconds_ago: float, errors: int) -> RequestMetricsReported:
    return RequestMetricsReported(
        **REF, occurred_at=utcnow() - timedelta(seconds=seconds_ago), window_seconds=1.0, requests=20, errors=errors,
        latency_sum_seconds=1.0, latency_buckets=[20] + [0] * 11,
    )  # fmt: skip


async def alert(settings: Settings) -> AlertChanged | None:
    """The alert's newest event, as the registry reads it under its permissions."""
    broker = make_broker(settings.resolved_nats_url, "spec-registry", user(settings, "spec-registry"))
    await broker.connect()
    try:
        found = await latest_per_subject(broker.config.connection_state.stream, "berth.alerts.v1.d1.*")
    finally:
        await broker.stop()
    return next((e for e in found if isinstance(e, AlertChanged)), None)


def evaluations() -> float:
    return REGISTRY.get_sample_value("berth_alerting_evaluations_total") or 0.0


async def test_rebuilt_from_the_streams_fires_signs_and_does_not_fire_again_after_a_restart(
    settings: Settings, hook: tuple[str, list[tuple[bytes, str]]]
) -> None:
    url, received = hook
    registry = make_broker(settings.resolved_nats_url, "spec-registry", user(settings, "spec-registry"))
    connection = await registry.connect()
    try:
        await (await SecretStore.open(connection.jetstream(), Sealer.from_settings(settings))).put("default", "hook", KEY)
    finally:
        await registry.stop()
    spec = validate_spec({"name": "chat", "image": "i", "resources": {"ports": [8000]}, "alerts": [RULE]})
    await publish_as(settings, "spec-registry",
                     SpecApplied(**REF, name="chat", spec_id="s1", spec_version=1, spec=spec),
                     WebhooksChanged(project="default", webhooks=[Webhook(url=url, secret="secret:hook")]))  # fmt: skip
    # Figures published before the service starts: it reads them back from BERTH_METRICS.
    await publish_as(settings, "router", *(report(ago, errors=5) for ago in range(8, 0, -1)))

    handle = await start_alerting(settings)
    try:
        firing = await eventually(lambda: alert(settings), timeout=20, what="the alert published")
        assert (firing.state, firing.previous_state) == ("firing", "inactive") and firing.value == pytest.approx(25.0)
        body, signature = (await eventually(lambda: received, timeout=20, what="the webhook called"))[0]
        assert signature == "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        assert json.loads(body)["id"] == firing.event_id
    finally:
        await handle.stop()

    await publish_as(settings, "router", *(report(ago, errors=5) for ago in (0.5, 0.2)))
    again = await start_alerting(settings)
    try:
        # Five evaluations of the new process, each finding the condition: time for a duplicate, if one would come.
        start = evaluations()
        await eventually(lambda: evaluations() >= start + 5, what="five evaluations after the restart")
        assert again.evaluator.deployments["d1"].alerts["errors"].state == "firing"
        assert (await alert(settings)) == firing and len(received) == 1
    finally:
        await again.stop()
