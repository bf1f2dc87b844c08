"""`berth secrets set --restart-users` end to end: replicas read a secret when they start, so after a
new value the deployments using it replace their replicas (a new revision, through the update
strategy) and the endpoint answers with the new value, without a failed request on the way."""

from __future__ import annotations

import sys

import httpx
import pytest
import yaml

from tests.e2e.conftest import REPO, Platform
from tests.helpers import eventually

pytestmark = pytest.mark.slow
YAML = {"Content-Type": "application/yaml"}


async def greeting(router: httpx.AsyncClient) -> str:
    response = await router.get("/default/greeter/?env=GREETING")
    assert response.status_code == 200, response.text
    return str(response.json()["env"]["GREETING"])


async def test_restart_users_rolls_the_replicas_onto_the_new_value(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    assert (await api.put("/v1/secrets/greeting", json={"value": "hello"})).status_code == 204
    spec = {
        "name": "greeter", "image": "python:3.11", "command": [sys.executable, str(REPO / "tests/servers/echo.py")],
        "env": [{"name": "GREETING", "value": "secret:greeting"}],
        "resources": {"ports": [8000], "replicas": 1},
        "healthChecks": {"readiness": {"path": "/", "periodSeconds": 1}},
    }  # fmt: skip
    assert (await api.post("/v1/deployments", content=yaml.safe_dump(spec), headers=YAML)).status_code == 201

    async def says_hello() -> bool:
        response = await router.get("/default/greeter/?env=GREETING")
        return response.status_code == 200 and response.json()["env"]["GREETING"] == "hello"

    await eventually(says_hello, timeout=60, interval=0.2, what="greeter serving")

    assert (await api.put("/v1/secrets/greeting", json={"value": "bonjour"})).status_code == 204
    assert await greeting(router) == "hello"  # running replicas keep the value they started with
    restarted = await api.post("/v1/secrets/greeting/restart")
    assert restarted.status_code == 200 and restarted.json() == {"restarted": ["greeter"]}

    seen: list[tuple[int, str | None]] = []

    async def says_bonjour() -> bool:
        response = await router.get("/default/greeter/?env=GREETING")
        seen.append((response.status_code, response.json()["env"]["GREETING"] if response.status_code == 200 else None))
        return seen[-1] == (200, "bonjour")

    await eventually(says_bonjour, timeout=60, interval=0.2, what="the new value served")
    # Every request during the roll was answered (rolling keeps the old replica serving until then).
    assert {code for code, _ in seen} == {200} and {value for _, value in seen} <= {"hello", "bonjour"}
    assert (await api.post("/v1/secrets/nothing/restart")).status_code == 404
