"""`GET /v1/deployments/events` (Server-Sent Events) against the registry as its own process: what the
console reads to stay live. API writes and the scheduler's status events reach the clients of the
deployment's project, and no other project's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from libs.events import DeploymentStatusChanged
from tests.servers.registry import RegistryProcess

SPEC = {"name": "sse target", "image": "python:3.11", "environment": "staging", "resources": {"ports": [8000]}}


@pytest.fixture
def registry(tmp_path: Path, nats_url: str) -> Iterator[RegistryProcess]:
    with RegistryProcess.running(tmp_path, nats_url) as process:
        yield process


class Events:
    """The events of one open stream, parsed as a browser's SSE reader would (comments skipped)."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self._lines = lines

    async def next(self, timeout: float = 15) -> tuple[str, Any]:
        return await asyncio.wait_for(self._read(), timeout)

    async def _read(self) -> tuple[str, Any]:
        name, data = "message", []
        async for line in self._lines:
            if line == "":
                if data:
                    return name, json.loads("\n".join(data))
                name = "message"
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        raise AssertionError("the stream ended")


@asynccontextmanager
async def subscribed(client: httpx.AsyncClient) -> AsyncIterator[Events]:
    async with client.stream("GET", "/v1/deployments/events", timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await anext(lines) == ": subscribed"  # from here on nothing is missed
        yield Events(lines)


async def test_writes_and_status_events_reach_the_projects_clients_only(
    registry: RegistryProcess, nc: Client
) -> None:
    async with registry.client() as admin:
        other_token = (await admin.post("/v1/projects", json={"name": "other"})).json()["token"]
        async with (
            httpx.AsyncClient(base_url=registry.url, headers={"Authorization": f"Bearer {other_token}"}) as other,
            subscribed(admin) as mine,
            subscribed(other) as theirs,
        ):
            created = (await admin.post("/v1/deployments", json=SPEC)).json()
            name, data = await mine.next()
            assert name == "deployment" and data["name"] == "sse target" and data["status"]["phase"] == "Pending"
            assert data == (await admin.get(f"/v1/deployments/{created['deployment_id']}")).json()

            # The scheduler's report, folded into the read model, goes out as the deployment with it.
            status = DeploymentStatusChanged(
                deployment_id=created["deployment_id"], project="default", slug=created["slug"],
                spec_id=created["spec_id"], phase="Ready", desired_replicas=1, ready_replicas=1,
            )  # fmt: skip
            await nc.jetstream().publish(status.subject(), status.model_dump_json().encode())
            name, data = await mine.next()
            assert name == "deployment" and data["status"]["phase"] == "Ready"
            assert data["status"]["ready_replicas"] == 1

            scaled = await admin.post(f"/v1/deployments/{created['slug']}/scale", json={"replicas": 3})
            assert scaled.status_code == 200
            name, data = await mine.next()
            assert data["status"]["desired_replicas"] == 3 and data["status"]["desired_source"] == "user"

            assert (await admin.delete(f"/v1/deployments/{created['slug']}")).status_code == 204
            assert await mine.next() == ("deleted", {"id": created["deployment_id"], "name": "sse target"})

            # The other project's client saw none of that: its first event is its own deployment.
            await other.post("/v1/deployments", json={**SPEC, "name": "theirs"})
            name, data = await theirs.next()
            assert name == "deployment" and data["name"] == "theirs" and data["project"] == "other"


async def test_the_stream_needs_a_valid_token(registry: RegistryProcess) -> None:
    async with httpx.AsyncClient(base_url=registry.url) as anonymous:
        missing = await anonymous.get("/v1/deployments/events")
        wrong = await anonymous.get("/v1/deployments/events", headers={"Authorization": "Bearer nope"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "Authorization"
