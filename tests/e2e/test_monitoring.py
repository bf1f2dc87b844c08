"""What a user monitoring a deployment sees, with real replicas: each service's /metrics read by
Prometheus' parser with the deployment's figures, and logs searched by time and text, including the
output of a replica that was already replaced."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Platform, iris_spec
from tests.e2e.test_endpoint import YAML, create, predict, status_of, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def extra_services() -> tuple[str, ...]:
    return ("autoscaler", "integrations")


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


async def test_every_service_exposes_prometheus_metrics_with_the_deployments_figures(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    await create(api, iris_spec(replicas=1))
    await wait_phase(api, "iris", "Ready", ready=1)
    assert (await predict(router)).status_code == 200
    ops = {name: int(platform.env[f"BERTH_{name.upper()}_OPS_PORT"])
           for name in ("scheduler", "health_monitor", "autoscaler", "integrations")}  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as client:

        async def scraped() -> dict[str, dict[str, list[dict[str, str]]]] | None:
            pages = {name: (await client.get(f"http://127.0.0.1:{port}/metrics")).text for name, port in ops.items()}
            pages["registry"] = (await api.get("/metrics")).text
            pages["router"] = (await router.get("/_berth/metrics")).text
            parsed = {name: samples(text) for name, text in pages.items()}
            ready = parsed["scheduler"].get("berth_deployment_replicas_ready", [])
            return parsed if {"project": "default", "deployment": "iris"} in ready else None

        parsed = await eventually(scraped, timeout=30, what="the scheduler's figures of iris")
    assert all(any(name.startswith("berth_") for name in found) for found in parsed.values()), list(parsed)
    iris = {"project": "default", "deployment": "iris"}
    assert iris in parsed["router"]["berth_router_requests_total"]
    [replica] = [labels for labels in parsed["scheduler"]["berth_replica_restarts_total"] if labels["deployment"] == "iris"]
    assert set(replica) == {"project", "deployment", "revision", "replica"}


async def test_logs_are_searched_by_time_and_text_and_a_replaced_replicas_are_kept(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    first = await create(api, iris_spec(replicas=1))
    status = await wait_phase(api, "iris", "Ready", ready=1)
    [old] = [r["replica_id"] for r in status["replicas"]]
    assert (await predict(router)).status_code == 200

    async def logs(**params: Any) -> list[dict[str, Any]]:
        response = await api.get("/v1/deployments/iris/logs", params={"tail": 1000, **params})
        assert response.status_code == 200, response.text
        return response.json()["lines"]  # type: ignore[no-any-return]

    async def predicted(**params: Any) -> list[dict[str, Any]] | None:
        lines = await logs(**params)
        return lines if any("POST /predict" in line["line"] for line in lines) else None

    await eventually(predicted, what="the old replica's access log line")

    document = yaml.safe_load(iris_spec(replicas=1))
    document["command"] = ["python", "-X", "utf8", "-m", "examples.iris.server"]  # a new revision
    answer = await api.put(
        "/v1/deployments/iris", content=yaml.safe_dump(document), headers={**YAML, "If-Match": f'"{first["spec_id"]}"'}
    )
    assert answer.status_code == 200, answer.text

    async def replaced() -> str | None:
        status = await status_of(api, "iris")
        ids = [r["replica_id"] for r in status["replicas"]]
        return ids[0] if len(ids) == 1 and old not in ids and status["ready_replicas"] == 1 else None

    new = await eventually(replaced, timeout=90, what="the old replica replaced")

    async def stopped_and_kept() -> bool:
        return any(line["replaced"] for line in await logs(include_replaced="true", replica=old))

    await eventually(stopped_and_kept, timeout=30, what="the old replica stopped, its output kept")
    between = datetime.now(UTC)
    assert (await predict(router)).status_code == 200
    await eventually(predicted, what="the new replica's access log line")

    assert {line["replica_id"] for line in await logs()} == {new}  # without asking, only live replicas
    found = await logs(grep="POST /predict", include_replaced="true")
    assert {line["replica_id"] for line in found} == {old, new}
    assert all("POST /predict" in line["line"] for line in found)
    assert {line["replica_id"] for line in found if line["replaced"]} == {old}
    kept = await logs(replica=old)  # the replaced replica by its id
    assert kept and {line["replica_id"] for line in kept} == {old} and any("POST /predict" in line["line"] for line in kept)

    before = await logs(until=between.isoformat(), include_replaced="true")
    after = await logs(since_time=between.isoformat(), include_replaced="true")
    assert before and after
    assert all(datetime.fromisoformat(line["time"]) < between for line in before)
    assert all(datetime.fromisoformat(line["time"]) >= between for line in after)
    assert {line["replica_id"] for line in after} == {new}  # the old one had stopped by then
    assert any(line["replica_id"] == old and "POST /predict" in line["line"] for line in before)
