"""Health checks as a user sees them through the endpoint: under load, a replica marked unready
receives no request, and takes traffic again once it recovers."""

from __future__ import annotations

import asyncio
import httpx
import pytest
import yaml

from tests.e2e.conftest import REPO
from tests.e2e.test_endpoint import create, status_of, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow

SWITCHABLE_SPEC = {
    "name": "switchable",
    "image": "python:3.11-slim",
    "command": ["python", str(REPO / "tests" / "servers" / "switchable.py")],
    "resources": {"ports": [8000], "replicas": 2},
    "healthChecks": {"readiness": {"path": "/readiness", "periodSeconds": 1, "failureThreshold": 2}},
}


async def switch(address: str, **switches: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{address}/_control", json=switches)
        response.raise_for_status()


async def replica_flag(api: httpx.AsyncClient, replica_id: str, flag: str) -> bool:
    status = await status_of(api, "switchable")
    return any(r["replica_id"] == replica_id and r[flag] for r in status["replicas"])


async def test_unready_replica_gets_no_request_under_load_and_traffic_again_when_it_recovers(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    await create(api, yaml.safe_dump(SWITCHABLE_SPEC))
    status = await wait_phase(api, "switchable", "Ready", ready=2)
    sick, healthy = status["replicas"]

    answered: list[tuple[int, str]] = []  # (request number, replica) of every request, in order sent
    failures: list[str] = []
    sent = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal sent
        while not stop.is_set():
            number, sent = sent, sent + 1
            response = await router.get("/default/switchable/")
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:100]}")
            else:
                answered.append((number, response.headers["X-Berth-Replica"]))

    workers = [asyncio.create_task(load()) for _ in range(4)]
    try:
        await eventually(lambda: {r for _, r in answered} == {sick["replica_id"], healthy["replica_id"]})

        await switch(sick["address"], readiness="fail")
        await eventually(lambda: _unready(api, sick["replica_id"]), timeout=30, what="marked unready")
        marked_unready_at = sent
        await eventually(lambda: sent > marked_unready_at + 200, timeout=30, what="200 more requests")
        # Every request sent after the status showed the replica unready went to the other one.
        after_mark = [replica for number, replica in answered if number >= marked_unready_at]
        assert after_mark and set(after_mark) == {healthy["replica_id"]}

        await switch(sick["address"], readiness="ok")
        await eventually(lambda: replica_flag(api, sick["replica_id"], "ready"), timeout=30, what="ready again")
        recovered_at = sent
        await eventually(
            lambda: any(n > recovered_at and r == sick["replica_id"] for n, r in answered),
            timeout=30, what="recovered replica takes traffic",
        )
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []  # the healthy replica answered everything meanwhile


async def _unready(api: httpx.AsyncClient, replica_id: str) -> bool:
    return not await replica_flag(api, replica_id, "ready")
