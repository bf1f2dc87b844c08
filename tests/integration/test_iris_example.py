"""examples/iris/server.py as a replica runs it: its own process, its port from $PORT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.natsd import free_port, wait_for_port
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
SAMPLES = {
    "setosa": [5.1, 3.5, 1.4, 0.2],
    "versicolor": [5.9, 3.0, 4.2, 1.5],
    "virginica": [6.7, 3.0, 5.2, 2.3],
}


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "BERTH_REPLICA_ID": "iris-r1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "examples.iris.server"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def iris(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_server(tmp_path, port)
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


async def test_predicts_iris_species_once_ready(iris: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=iris) as client:
        assert (await client.get("/startup")).status_code == 200
        assert (await client.get("/liveness")).status_code == 200
        await eventually(lambda: _ok(client, "/readiness"), timeout=20, what="model loaded")

        response = await client.post("/predict", json={"instances": list(SAMPLES.values())})
        assert response.status_code == 200
        assert response.json() == {"predictions": list(SAMPLES), "replica": "iris-r1"}
        assert response.headers["X-Replica-Id"] == "iris-r1"

        info = (await client.get("/")).json()
        assert info["ready"] is True and info["classes"] == ["setosa", "versicolor", "virginica"]

        bad = await client.post("/predict", json={"instances": [[1.0, 2.0, 3.0]]})
        assert bad.status_code == 422
    assert (tmp_path / "iris-model.joblib").exists(), "the trained model is cached in the working dir"


async def test_a_restarted_replica_loads_the_cached_model(tmp_path: Path) -> None:
    trained_at: list[int] = []
    for _ in range(2):
        port = free_port()
        process = start_server(tmp_path, port)
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await eventually(lambda: _ok(client, "/readiness"), timeout=20, what="model loaded")
                answer = await client.post("/predict", json={"instances": [SAMPLES["virginica"]]})
                assert answer.json()["predictions"] == ["virginica"]
            trained_at.append((tmp_path / "iris-model.joblib").stat().st_mtime_ns)
        finally:
            process.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then exits by the signal it got.
            assert process.wait(10) in (0, -signal.SIGTERM)
    assert trained_at[0] == trained_at[1], "the second start did not train again"


async def test_not_ready_and_no_predictions_before_the_model_is_loaded() -> None:
    from examples.iris import server

    # The app without its lifespan: the state of a replica whose model is still loading.
    server.state.model = None
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        assert (await client.get("/startup")).status_code == 200
        assert (await client.get("/liveness")).status_code == 200
        assert (await client.get("/readiness")).status_code == 503
        assert (await client.post("/predict", json={"instances": [SAMPLES["setosa"]]})).status_code == 503


async def _ok(client: httpx.AsyncClient, path: str) -> bool:
    return (await client.get(path)).status_code == 200
