"""Autoscaler reaction and cold start, on `berth up` with the iris example (real replica processes).

    .venv/bin/python bench/bench_autoscaler_reaction.py [--interval 2] [--cold-starts 10]

- Reaction: iris at 1 replica (max 4, concurrency target 2 in flight per replica); a step of 8
  concurrent clients; seconds from the step to the autoscaler's decision (status desired > 1), and to
  every desired replica ready. Decisions run every `--interval` seconds (the HPA's sync period is 15 s,
  Knative's autoscaler ticks every 2 s); the router reports every second, the scheduler's usage too.
- Cold start from zero: iris with minReplicas 0 (requestDuration target, 2 s scale-down window) is left
  idle until ScaledToZero, then one request is sent: its latency (held by the router while a replica
  comes up), p50/p99 over `--cold-starts` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_apply_to_first_request import berth_up, figures  # noqa: E402
from bench.harness import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IRIS = yaml.safe_load((REPO / "examples" / "iris.yaml").read_text())
BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


def iris(name: str, autoscaling: dict[str, Any], replicas: int) -> dict[str, Any]:
    document = {**IRIS, "name": name, "command": [sys.executable, "-m", "examples.iris.server"]}
    document["resources"] = {**IRIS["resources"], "replicas": replicas, "autoscaling": autoscaling}
    return document


async def status(api: httpx.AsyncClient, slug: str) -> dict[str, Any]:
    return (await api.get(f"/v1/deployments/{slug}/status")).raise_for_status().json()  # type: ignore[no-any-return]


async def until(api: httpx.AsyncClient, slug: str, ok: Any, timeout: float = 120) -> float:
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        if ok(await status(api, slug)):
            return time.perf_counter() - began
        await asyncio.sleep(0.05)
    raise SystemExit(f"{slug}: condition not met in {timeout} s: {await status(api, slug)}")


async def reaction(api: httpx.AsyncClient, router: httpx.AsyncClient) -> list[tuple[str, str]]:
    scaling = {"enabled": True, "maxReplicas": 4, "metrics": [{"metric": "concurrency", "value": 2}]}
    (await api.post("/v1/deployments", json=iris("react", scaling, 1))).raise_for_status()
    await until(api, "react", lambda s: s["phase"] == "Ready" and s["ready_replicas"] == 1)
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                await router.post("/default/react/predict", json=BODY)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        decided = await until(api, "react", lambda s: s["desired_replicas"] > 1)
        ready = decided + await until(api, "react", lambda s: s["ready_replicas"] == s["desired_replicas"] > 1)
        final = (await status(api, "react"))["desired_replicas"]
    finally:
        stop.set()
        await asyncio.gather(*clients)
    return [("load step -> decision", f"{decided:5.1f} s"), (f"load step -> {final} replicas ready", f"{ready:5.1f} s")]


async def cold_starts(api: httpx.AsyncClient, router: httpx.AsyncClient, rounds: int) -> list[tuple[str, str]]:
    scaling = {"enabled": True, "minReplicas": 0, "maxReplicas": 2,
               "metrics": [{"metric": "requestDuration", "value": 0.5}],
               "behavior": {"scaleDown": {"stabilizationWindowSeconds": 2}}}
    (await api.post("/v1/deployments", json=iris("cold", scaling, 1))).raise_for_status()
    samples = []
    for _ in range(rounds + 1):  # the first is a warm-up
        await until(api, "cold", lambda s: s["phase"] == "ScaledToZero")
        began = time.perf_counter()
        response = await router.post("/default/cold/predict", json=BODY, timeout=90)
        response.raise_for_status()
        samples.append(time.perf_counter() - began)
    return [(f"first request after idling ({rounds} rounds)", figures(samples[1:]))]


async def bench(interval: float, rounds: int, work: Path) -> None:
    settings = {
        "BERTH_AUTOSCALER_INTERVAL_SECONDS": str(interval), "BERTH_AUTOSCALER_METRICS_WINDOW_SECONDS": "3",
        "BERTH_ROUTER_METRICS_INTERVAL_SECONDS": "1", "BERTH_USAGE_REPORT_INTERVAL_SECONDS": "1",
    }  # fmt: skip
    async with berth_up(work, settings) as (api, router):
        rows = await reaction(api, router)
        (await api.delete("/v1/deployments/react")).raise_for_status()
        rows += await cold_starts(api, router, rounds)
    report(f"autoscaler on `berth up`, iris, decisions every {interval:g} s, {os.cpu_count()} cores", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--cold-starts", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        asyncio.run(bench(args.interval, args.cold_starts, Path(work)))


if __name__ == "__main__":
    main()
