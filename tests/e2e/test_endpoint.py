"""Deploy a model and call its endpoint: the whole platform, real replica processes, real HTTP.

Each test drives berth the way a user does — the REST API and the router's endpoint — and checks
what that user would see: predictions, status, answers of the endpoint.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import psutil
import pytest
import yaml

from tests.e2e.conftest import REPO, Platform, iris_spec
from tests.helpers import eventually

pytestmark = pytest.mark.slow

YAML = {"Content-Type": "application/yaml"}
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


async def create(api: httpx.AsyncClient, spec: str) -> dict[str, Any]:
    response = await api.post("/v1/deployments", content=spec, headers=YAML)
    assert response.status_code == 201, response.text
    return response.json()


async def status_of(api: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    response = await api.get(f"/v1/deployments/{ref}/status")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_phase(api: httpx.AsyncClient, ref: str, phase: str, ready: int | None = None, timeout: float = 60) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status = await status_of(api, ref)
        ok = status["phase"] == phase and (ready is None or status["ready_replicas"] == ready)
        return status if ok else None

    return await eventually(reached, timeout=timeout, interval=0.1, what=f"{ref} {phase} {ready}")


async def predict(router: httpx.AsyncClient, path: str = "/default/iris/predict") -> httpx.Response:
    return await router.post(path, json={"instances": [SETOSA, VIRGINICA]})


async def replicas_answering(router: httpx.AsyncClient, requests: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(requests):
        response = await predict(router)
        assert response.status_code == 200, response.text
        seen[response.headers["X-Berth-Replica"]] += 1
    return seen


def shims(data_dir: Path) -> list[psutil.Process]:
    """The replica supervisor processes of this platform (one per replica)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "shim.py" in cmdline and str(data_dir) in cmdline:
            found.append(process)
    return found


async def test_iris_predictions_are_answered_by_both_replicas(api: httpx.AsyncClient, router: httpx.AsyncClient) -> None:
    deployment = await create(api, (REPO / "examples" / "iris.yaml").read_text())
    assert deployment["endpoint"].endswith("/default/iris/")
    await wait_phase(api, "iris", "Ready", ready=2)

    response = await predict(router)
    assert response.status_code == 200
    assert response.json()["predictions"] == ["setosa", "virginica"]
    seen = await replicas_answering(router, 10)
    assert len(seen) == 2, seen  # round-robin over both replicas


async def test_scale_stop_start_and_delete_show_in_status_and_endpoint(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    await create(api, iris_spec(replicas=2))
    await wait_phase(api, "iris", "Ready", ready=2)

    for replicas in (3, 1):
        response = await api.post("/v1/deployments/iris/scale", json={"replicas": replicas})
        assert response.status_code == 200, response.text
        status = await wait_phase(api, "iris", "Ready", ready=replicas)
        assert status["desired_replicas"] == replicas
        assert len(await eventually(lambda n=replicas: _exactly(router, n), what=f"{replicas} replicas serve")) == replicas

    assert (await api.post("/v1/deployments/iris/stop")).status_code == 200
    await wait_phase(api, "iris", "Stopped")
    stopped = await eventually(lambda: _status_is(router, 503), what="endpoint answers 503")
    assert "stopped" in stopped.text.lower()

    assert (await api.post("/v1/deployments/iris/start")).status_code == 200
    await wait_phase(api, "iris", "Ready", ready=1)
    assert (await predict(router)).status_code == 200

    assert (await api.delete("/v1/deployments/iris")).status_code == 204
    await eventually(lambda: _status_is(router, 404), what="endpoint answers 404")


async def _status_is(router: httpx.AsyncClient, code: int) -> httpx.Response | None:
    response = await predict(router)
    return response if response.status_code == code else None


async def _exactly(router: httpx.AsyncClient, replicas: int) -> Counter[str] | None:
    seen = await replicas_answering(router, replicas * 4)
    return seen if len(seen) == replicas else None


async def test_command_change_serves_the_new_version_without_a_failed_request(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    first = await create(api, iris_spec())
    await wait_phase(api, "iris", "Ready", ready=2)

    failures: list[str] = []
    answered_by: Counter[str] = Counter()
    stop_load = asyncio.Event()

    async def load() -> None:
        while not stop_load.is_set():
            try:
                response = await predict(router)
            except httpx.HTTPError as exc:  # a refused or reset connection is a failed request too
                failures.append(repr(exc))
                continue
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                answered_by[response.headers["X-Berth-Replica"]] += 1

    workers = [asyncio.create_task(load()) for _ in range(4)]
    document = yaml.safe_load(iris_spec())
    document["command"] = ["python", "-X", "utf8", "-m", "examples.iris.server"]
    response = await api.put(
        "/v1/deployments/iris", content=yaml.safe_dump(document),
        headers={**YAML, "If-Match": f'"{first["spec_id"]}"'},
    )
    assert response.status_code == 200, response.text
    new_spec_id = response.json()["spec_id"]

    async def new_replicas_only() -> set[str] | None:
        status = await status_of(api, "iris")
        replicas = status["replicas"]
        replaced = bool(replicas) and all(r["spec_id"] == new_spec_id for r in replicas)
        return {r["replica_id"] for r in replicas} if replaced and status["ready_replicas"] == 2 else None

    try:
        new_replicas = await eventually(new_replicas_only, timeout=90, interval=0.2, what="old replicas replaced")
        old_replicas = set(answered_by) - new_replicas
        assert old_replicas, "the old version served before the change"
        answered_by.clear()
        await eventually(lambda: set(answered_by) == new_replicas, timeout=20, what="both new replicas serve")
    finally:
        stop_load.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert sum(answered_by.values()) > 0


async def test_killed_replica_is_restarted(platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient) -> None:
    await create(api, iris_spec(replicas=1))
    status = await wait_phase(api, "iris", "Ready", ready=1)
    replica = status["replicas"][0]
    pid = int((platform.settings.data_dir / "replicas" / replica["replica_id"] / "pid").read_text())

    os.kill(pid, signal.SIGKILL)

    async def restarted() -> dict[str, Any] | None:
        current = await status_of(api, "iris")
        same = [r for r in current["replicas"] if r["replica_id"] == replica["replica_id"]]
        return current if same and same[0]["restart_count"] == 1 and current["ready_replicas"] == 1 else None

    after = await eventually(restarted, timeout=60, interval=0.2, what="replica restarted")
    assert after["replicas"][0]["last_exit_code"] == 128 + signal.SIGKILL
    assert (await predict(router)).status_code == 200


async def test_killed_scheduler_leaves_replicas_serving_and_its_successor_adopts_them(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    await create(api, iris_spec(replicas=2))
    await wait_phase(api, "iris", "Ready", ready=2)
    before = sorted(p.pid for p in shims(platform.settings.data_dir))
    assert len(before) == 2

    platform.kill("scheduler")
    assert len(await replicas_answering(router, 10)) == 2  # the endpoint keeps serving

    platform.start("scheduler")
    scheduler = psutil.Process(platform.processes["scheduler"].pid)
    await eventually(lambda: any(c.status == psutil.CONN_LISTEN for c in scheduler.net_connections()), timeout=30)
    await wait_phase(api, "iris", "Ready", ready=2)
    # Adopted, not duplicated: the same supervisor processes, and no new one appears.
    assert sorted(p.pid for p in shims(platform.settings.data_dir)) == before
    assert len(await replicas_answering(router, 10)) == 2
    assert sorted(p.pid for p in shims(platform.settings.data_dir)) == before


async def test_basic_auth_protects_the_endpoint_and_the_key_is_never_shown(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient, js: Any
) -> None:
    key = "correct-horse-battery-staple-7c1f"
    assert (await api.put("/v1/secrets/iris_key", json={"value": key})).status_code == 204
    document = yaml.safe_load(iris_spec(replicas=1))
    document["basicAuthKey"] = "secret:iris_key"
    await create(api, yaml.safe_dump(document))
    await wait_phase(api, "iris", "Ready", ready=1)

    anonymous = await predict(router)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = await router.post("/default/iris/predict", json={"instances": [SETOSA]}, auth=("user", "nope"))
    assert wrong.status_code == 401
    right = await router.post("/default/iris/predict", json={"instances": [SETOSA]}, auth=("user", key))
    assert right.status_code == 200 and right.json()["predictions"] == ["setosa"]

    answers = [
        (await api.get(path)).text
        for path in ("/v1/deployments/iris", "/v1/deployments/iris/history", "/v1/deployments/iris/status",
                     "/v1/deployments", "/v1/secrets")
    ]
    events = await _every_message(js)
    assert all(key not in text for text in answers)
    assert key not in events
    assert key not in platform.all_logs()


async def _every_message(js: Any) -> str:
    """Every message body in every berth stream, as one string."""
    from libs.bus import ALL_STREAMS

    bodies = []
    for stream in ALL_STREAMS:
        info = await js.stream_info(stream.name)
        if not info.state.messages:
            continue
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                bodies.append((await js.get_msg(stream.name, seq)).data.decode(errors="replace"))
            except nats.js.errors.NotFoundError:  # a deleted sequence number
                continue
    assert bodies, "the streams hold the deployment's events"
    return "\n".join(bodies)


async def test_logs_and_what_the_machine_cannot_provide_show_for_a_deployment(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    await create(api, iris_spec(replicas=1, machineType="A100-80G", gpuCount=1, gpuType="A100"))
    status = await wait_phase(api, "iris", "Ready", ready=1)  # it runs anyway, on this machine's CPU
    assert any("A100" in item for item in status["not_provided"]), status["not_provided"]
    assert (await predict(router)).status_code == 200

    async def logged_prediction() -> list[dict[str, Any]] | None:
        response = await api.get("/v1/deployments/iris/logs", params={"tail": 50})
        assert response.status_code == 200, response.text
        lines = response.json()["lines"]
        return lines if any("POST /predict" in line["line"] for line in lines) else None

    lines = await eventually(logged_prediction, timeout=20, what="the replica's access log line")
    assert {line["replica_id"] for line in lines} == {status["replicas"][0]["replica_id"]}
