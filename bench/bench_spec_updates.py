"""Spec updates per second, end to end: PUT over HTTP -> SQL commit with its outbox row -> relay ->
JetStream (PubAck) -> a durable consumer that receives each SpecApplied. Beside it, in the same run,
the raw nats-py rate of `js.publish` awaited one by one for as many messages of the same size: the
ceiling the registry's relay publishes against.

Runs standalone: `.venv/bin/python bench/bench_spec_updates.py [updates]` (default 500). It starts
its own nats-server and the registry (`python -m services.spec_registry`, SQLite) in a temporary
directory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import percentiles_ms, report, timed  # noqa: E402
from libs.bus import MSG_ID_HEADER, ensure_streams  # noqa: E402
from libs.natsd import free_port, start_nats_server, wait_for_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UPDATES = int(sys.argv[1]) if len(sys.argv) > 1 else 500
SPEC = {"name": "bench", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 1}}


def start_registry(workdir: Path, nats_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BERTH_NATS_URL": nats_url,
        "BERTH_DATA_DIR": str(workdir / "berth"),
        "BERTH_API_PORT": str(port),
        "PYTHONPATH": str(REPO),
    }
    for name in ("BERTH_TOKEN", "BERTH_DATABASE_URL", "BERTH_FAULT_INJECT"):
        env.pop(name, None)
    log = open(workdir / "registry.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen([sys.executable, "-m", "services.spec_registry"], env=env, stdout=log, stderr=log)
    wait_for_port("127.0.0.1", port, timeout=60)
    return process


async def registry_updates(api: httpx.AsyncClient, js: nats.js.JetStreamContext) -> tuple[float, float, list[float]]:
    """(seconds until all were accepted, seconds until all were received, PUT latencies)."""
    created = (await api.post("/v1/deployments", json=SPEC)).raise_for_status().json()
    received = 0
    all_received = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        nonlocal received
        received += 1
        if received == UPDATES + 1:  # the creation's event, then one per update
            all_received.set()

    await js.subscribe(f"berth.spec.v1.{created['deployment_id']}", durable="bench-consumer", cb=on_event)
    spec_id, latencies = created["spec_id"], []
    with timed() as total:
        with timed() as accepting:
            for n in range(UPDATES):
                document = {**SPEC, "image": f"python:3.11.{n}"}
                started = time.perf_counter()
                answer = await api.put("/v1/deployments/bench", json=document, headers={"If-Match": f'"{spec_id}"'})
                latencies.append(time.perf_counter() - started)
                spec_id = answer.raise_for_status().json()["spec_id"]
        await asyncio.wait_for(all_received.wait(), timeout=120)
    return accepting.seconds, total.seconds, latencies


async def raw_publishes(js: nats.js.JetStreamContext, payload: bytes) -> float:
    await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"], duplicate_window=120))
    with timed() as watch:
        for _ in range(UPDATES):
            await js.publish("bench.raw.specs", payload, headers={MSG_ID_HEADER: uuid.uuid4().hex})
    return watch.seconds


async def run(workdir: Path) -> None:
    nats_port, api_port = free_port(), free_port()
    nats_server = start_nats_server(workdir / "jetstream", nats_port)
    nats_url = f"nats://127.0.0.1:{nats_port}"
    registry = start_registry(workdir, nats_url, api_port)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        token = (workdir / "berth" / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=30) as api:
            accepted, end_to_end, latencies = await registry_updates(api, js)
        sample = await js.get_last_msg("BERTH_SPECS", "berth.spec.v1.>")
        raw = await raw_publishes(js, sample.data or b"")
    finally:
        await nc.close()
        registry.terminate()
        registry.wait(30)
        nats_server.terminate()
        nats_server.wait(10)

    registry_rate, raw_rate = UPDATES / end_to_end, UPDATES / raw
    report(
        f"spec updates, {UPDATES} sequential, SQLite, one HTTP client ({os.cpu_count()} cores)",
        [
            ("registry end to end", f"{registry_rate:8.0f} updates/s  ({end_to_end:.2f} s, PUT -> consumer)"),
            ("registry accepted", f"{UPDATES / accepted:8.0f} updates/s  (HTTP 200 answers)"),
            ("PUT latency", percentiles_ms(latencies)),
            ("raw js.publish", f"{raw_rate:8.0f} msgs/s     ({raw:.2f} s, {len(sample.data or b'')} B each, awaited)"),
            ("raw / registry", f"{raw_rate / registry_rate:8.1f} x"),
        ],
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as workdir:
        asyncio.run(run(Path(workdir)))


if __name__ == "__main__":
    main()
