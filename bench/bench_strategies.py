"""Rollouts under a steady request rate, one per update strategy: duration, failed requests, p99.

    .venv/bin/python bench/bench_strategies.py [--rate 100] [--replicas 4]

Starts `berth up` (as a user runs it) on a temporary data dir and free ports. For each strategy
(rolling at the Kubernetes defaults 25 %/25 %, blue-green without a hold, canary 20 -> 50 % in 2 s
steps) it creates a deployment of `--replicas` replicas of a tiny stdlib HTTP server
(tests/servers/echo.py, HTTP readiness probe every second), sends `--rate` requests per second through
the router (paced, each on its own, not waiting for the previous), measures 5 s before the update, then
changes the command (a new revision) and measures until the deployment is Ready with only the new
revision's replicas. Figures: rollout duration, failed requests (any non-200 or transport error), p99
latency before and during the rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_apply_to_first_request import ECHO, READINESS, berth_up  # noqa: E402
from bench.harness import report  # noqa: E402

STRATEGIES: dict[str, dict[str, Any]] = {
    "rolling (25 %/25 %)": {"type": "rolling"},
    "blue-green": {"type": "blue-green", "scaleDownDelaySeconds": 0},
    "canary 20 -> 50 %, 2 s steps": {"type": "canary", "canarySteps": [20, 50], "canaryStepSeconds": 2},
}
BEFORE_SECONDS = 5.0


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0


async def paced_load(router: httpx.AsyncClient, path: str, rate: float, phase: dict[str, Samples], stop: asyncio.Event) -> None:
    """`rate` requests a second, each in its own task; results go to the phase current when it began."""
    pending: set[asyncio.Task[None]] = set()

    async def one(samples: Samples) -> None:
        began = time.perf_counter()
        try:
            ok = (await router.get(path)).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            samples.latencies.append(time.perf_counter() - began)
        else:
            samples.failed += 1

    interval, next_at = 1 / rate, time.perf_counter()
    while not stop.is_set():
        task = asyncio.create_task(one(phase["now"]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*pending)


def p99(samples: list[float]) -> str:
    return f"{statistics.quantiles(samples, n=100, method='inclusive')[98] * 1000:.1f} ms" if len(samples) > 1 else "-"


def document(name: str, replicas: int, strategy: dict[str, Any], version: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "python:3.11-slim",
        "command": [sys.executable, ECHO, "--version", version],
        "resources": {"ports": [8000], "replicas": replicas},
        "healthChecks": READINESS,
        "updateStrategy": strategy,
    }


async def wait_ready(api: httpx.AsyncClient, ref: str, revision: str, replicas: int) -> None:
    while True:
        status = (await api.get(f"/v1/deployments/{ref}/status")).json()
        mine = [r for r in status["replicas"] if r["revision_id"] == revision and r["ready"]]
        if status["phase"] == "Ready" and len(mine) == replicas == len(status["replicas"]):
            return
        await asyncio.sleep(0.05)


async def rollout(api: httpx.AsyncClient, router: httpx.AsyncClient, label: str, strategy: dict[str, Any], rate: float, replicas: int) -> tuple[str, str]:
    name = "bench " + label.split(" ")[0]
    created = (await api.post("/v1/deployments", json=document(name, replicas, strategy, "1"))).raise_for_status().json()
    await wait_ready(api, created["slug"], created["revision_id"], replicas)
    phase = {"now": Samples()}
    before = phase["now"]
    stop = asyncio.Event()
    load = asyncio.create_task(paced_load(router, f"/{created['project']}/{created['slug']}/", rate, phase, stop))
    await asyncio.sleep(BEFORE_SECONDS)
    during = phase["now"] = Samples()
    began = time.perf_counter()
    updated = await api.put(
        f"/v1/deployments/{created['slug']}", json=document(name, replicas, strategy, "2"),
        headers={"If-Match": f'"{created["spec_id"]}"'},
    )  # fmt: skip
    await wait_ready(api, created["slug"], updated.raise_for_status().json()["revision_id"], replicas)
    duration = time.perf_counter() - began
    phase["now"] = Samples()  # after: not counted
    stop.set()
    await load
    await api.delete(f"/v1/deployments/{created['slug']}")
    failed = before.failed + during.failed
    return label, (
        f"rollout {duration:5.1f} s   failed {failed} of {len(before.latencies) + len(during.latencies) + failed}   "
        f"p99 before {p99(before.latencies)}, during {p99(during.latencies)}"
    )


async def bench(rate: float, replicas: int, work: Path) -> None:
    rows = []
    async with berth_up(work, router_connections=64) as (api, router):
        for label, strategy in STRATEGIES.items():
            rows.append(await rollout(api, router, label, strategy, rate, replicas))
    report(f"rollouts at {rate:g} requests/s, {replicas} replicas, `berth up`, {os.cpu_count()} cores", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        asyncio.run(bench(args.rate, args.replicas, Path(work)))


if __name__ == "__main__":
    main()
