"""Alerts end to end: a replica that starts failing fires an error-rate alert, which reaches a webhook
receiver the test runs (HMAC verified with the key the test stored as a secret), retried until it
answers 2xx with the same id; a restart of the alerting service neither fires it again nor loses a
delivery; recovery resolves it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from click.testing import Result
from typer.testing import CliRunner

from berth.cli import app

from libs.natsd import free_port
from tests.e2e.conftest import REPO, Platform
from tests.e2e.test_endpoint import create, status_of, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow

FOR_SECONDS = 5
SPEC = {
    "name": "flaky",
    "image": "python:3.11-slim",
    "command": ["python", str(REPO / "tests" / "servers" / "switchable.py")],
    "resources": {"ports": [8000], "replicas": 1},
    "alerts": [
        {"name": "ErrorRate", "metric": "error_rate_percent", "op": ">", "threshold": 1, "for": f"{FOR_SECONDS}s", "window": "5s"}
    ],
}


@pytest.fixture
def extra_services() -> tuple[str, ...]:
    return ("alerting",)


@pytest.fixture
def extra_env() -> dict[str, str]:
    return {"BERTH_ALERTING_INTERVAL_SECONDS": "1", "BERTH_ROUTER_METRICS_INTERVAL_SECONDS": "1"}


@dataclass
class Delivery:
    body: bytes
    signature: str
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """A webhook receiver: records every POST, answers 500 while `refusing`."""

    url: str = ""
    refusing: bool = False
    deliveries: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = 500 if self.refusing else 200
        self.deliveries.append(Delivery(await request.read(), request.headers.get("X-Berth-Signature", ""), status))
        return web.Response(status=status)

    def accepted(self, state: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.answered == 200 and d.payload["state"] == state]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}/hook"
    yield found
    await runner.cleanup()


def valid(delivery: Delivery, key: str) -> bool:
    expected = "sha256=" + hmac.new(key.encode(), delivery.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(delivery.signature, expected)


async def alert_state(api: httpx.AsyncClient) -> str:
    return str((await status_of(api, "flaky"))["alerts"][0]["state"])


async def evaluations(platform: Platform) -> float:
    """How many evaluation rounds the running alerting service has made (its /metrics)."""
    async with httpx.AsyncClient() as client:
        try:
            text = (await client.get(f"http://127.0.0.1:{platform.env['BERTH_ALERTING_OPS_PORT']}/metrics")).text
        except httpx.HTTPError:
            return 0.0
    found = re.search(r"^berth_alerting_evaluations_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def restart_alerting(platform: Platform) -> None:
    platform.kill("alerting")
    platform.start("alerting")
    await eventually(lambda: _at_least(platform, 3), timeout=60, what="the new alerting service evaluating")


async def _at_least(platform: Platform, rounds: float) -> bool:
    return await evaluations(platform) >= rounds


def berth(platform: Platform, tmp_path: Path, *args: str) -> Result:
    """The `berth` CLI as a user runs it, with the token `berth up` leaves in the data dir."""
    env = {"BERTH_API_URL": platform.settings.resolved_api_url, "BERTH_DATA_DIR": str(platform.settings.data_dir),
           "BERTH_TOKEN": None, "XDG_CONFIG_HOME": str(tmp_path / "config")}  # fmt: skip
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


async def test_error_rate_alert_fires_reaches_the_webhook_signed_and_resolves_across_restarts(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient, receiver: Receiver, tmp_path: Path
) -> None:
    key = secrets.token_hex(32)
    assert (await api.put("/v1/secrets/hook-key", json={"value": key})).status_code == 204
    set_hook = await asyncio.to_thread(berth, platform, tmp_path, "webhooks", "set", receiver.url, "--secret", "hook-key")
    assert "secret:hook-key" in set_hook.stdout and key not in set_hook.stdout
    await create(api, yaml.safe_dump(SPEC))
    (replica,) = (await wait_phase(api, "flaky", "Ready", ready=1))["replicas"]

    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            await router.get("/default/flaky/predict")
            await asyncio.sleep(0.02)

    worker = asyncio.create_task(load())
    try:
        await eventually(lambda: _at_least(platform, 3), timeout=60, what="alerting evaluating")
        assert await alert_state(api) == "inactive"  # answers 200: no alert

        receiver.refusing = True  # the first delivery attempts fail: retried with the same id
        async with httpx.AsyncClient() as client:
            (await client.post(f"http://{replica['address']}/_control", json={"predict": "fail"})).raise_for_status()
        failing_since = datetime.now().astimezone()
        await eventually(lambda: receiver.deliveries, timeout=60, what="a delivery attempt")
        receiver.refusing = False
        (firing,) = await eventually(lambda: receiver.accepted("firing"), timeout=60, what="the firing alert delivered")
        fired = firing.payload
        assert valid(firing, key), "X-Berth-Signature is the HMAC-SHA256 of the body under the secret's value"
        assert receiver.deliveries[0].body == firing.body  # the refused attempt: the same transition, same id
        assert fired["deployment"]["name"] == "flaky" and fired["rule"]["name"] == "ErrorRate"
        assert fired["value"] > 1 and fired["previous_state"] == "pending"
        active_at, fired_at = datetime.fromisoformat(fired["active_at"]), datetime.fromisoformat(fired["fired_at"])
        assert (fired_at - active_at).total_seconds() >= FOR_SECONDS  # held for `for` before it fired
        print(f"fired {(fired_at - failing_since).total_seconds():.1f} s after the replica started failing")
        assert await alert_state(api) == "firing"
        listed = json.loads((await asyncio.to_thread(berth, platform, tmp_path, "alerts", "-o", "json")).stdout)
        assert [(a["deployment"], a["name"], a["state"]) for a in listed] == [("flaky", "ErrorRate", "firing")]
        shown = (await asyncio.to_thread(berth, platform, tmp_path, "alerts", "--state", "firing")).stdout
        assert "ErrorRate" in shown and "firing" in shown

        # A restart while it fires: restored from BERTH_ALERTS, not fired (nor delivered) again.
        await restart_alerting(platform)
        assert await alert_state(api) == "firing"
        assert {d.payload["id"] for d in receiver.deliveries if d.payload["state"] == "firing"} == {fired["id"]}
        assert receiver.accepted("firing") == [firing]

        # Recovery resolves it; the receiver refuses that delivery, and the service restarts before it
        # is delivered: the redelivery after the restart carries the same id.
        receiver.refusing = True
        async with httpx.AsyncClient() as client:
            (await client.post(f"http://{replica['address']}/_control", json={"predict": "ok"})).raise_for_status()
        refused = await eventually(
            lambda: [d for d in receiver.deliveries if d.payload["state"] == "resolved"], timeout=60,
            what="the resolved alert sent (and refused)",
        )
        await restart_alerting(platform)
        receiver.refusing = False
        (resolved,) = await eventually(lambda: receiver.accepted("resolved"), timeout=60, what="resolved delivered")
        assert resolved.payload["id"] == refused[0].payload["id"] != fired["id"] and valid(resolved, key)
        assert resolved.payload["fired_at"] == fired["fired_at"] and resolved.payload["resolved_at"]
        assert await alert_state(api) == "resolved"
        assert {d.payload["id"] for d in receiver.deliveries} == {fired["id"], resolved.payload["id"]}
    finally:
        stop.set()
        await worker
    assert key not in platform.all_logs()  # the key is never logged, nor is a signature
    for delivery in receiver.deliveries:
        assert delivery.signature.removeprefix("sha256=") not in platform.all_logs()
    assert str(uuid.UUID(fired["id"]).hex) == fired["id"]
