"""Crash consistency: SIGKILL the services and nats-server of `berth up` at random while a few hundred
spec updates go through the REST API; once the killing stops, nothing accepted is lost, nothing is
stored or published twice, and every deployment runs its newest spec.

Only what a user sees is asserted on — the REST API (history, status), the endpoint through the router
and the spec events on the bus — so the test holds whatever the services do inside.

    .venv/bin/python -m pytest tests/e2e/test_crash_consistency.py -s   # prints the figures

BERTH_CRASH_SEED picks another sequence of kills and pauses (the default is fixed, so a failure replays).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
from nats.aio.client import Client

from libs.bus import all_events, inbox_prefix
from libs.natsd import free_port, service_passwords
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ECHO = str(Path(__file__).resolve().parents[1] / "servers" / "echo.py")
SEED = int(os.environ.get("BERTH_CRASH_SEED", "20261121"))
DEPLOYMENTS = 10
UPDATES_PER_DEPLOYMENT = 25
KILLS = 25
KILL_EVERY_SECONDS = (1.0, 3.0)
# Between two updates of one deployment: together the updates span about as long as the killing.
UPDATE_EVERY_SECONDS = (0.1, 1.5)
# `berth up` backs off up to 30 s before restarting a child that keeps dying; then the rollouts.
CONVERGE_WITHIN_SECONDS = 120.0
TARGETS = ("spec_registry", "scheduler", "health_monitor", "router", "nats-server")
CREATED = "created"


@dataclass
class Up:
    """One `berth up` on a data dir of its own, with the admin token it wrote."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    output: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BERTH_API_PORT']}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.env['BERTH_ROUTER_PORT']}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.env['BERTH_NATS_PORT']}"

    @property
    def logs(self) -> Path:
        return Path(self.env["BERTH_DATA_DIR"]) / "logs"

    def token(self) -> str:
        return (Path(self.env["BERTH_DATA_DIR"]) / "token").read_text().strip()

    def child(self, target: str) -> psutil.Process | None:
        """The running child of `up` for a target (a service or nats-server), if it runs now."""
        for process in psutil.Process(self.process.pid).children():
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                is_target = (
                    process.name() == target if target == "nats-server" else f"services.{target}" in process.cmdline()
                )
            except psutil.Error:
                continue
            if is_target:
                return process
        return None


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    ports = {k: free_port() for k in ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "INTEGRATIONS_OPS",
                                   "METRICS_OPS", "AUTOSCALER_OPS", "ALERTING_OPS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {f"BERTH_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {
        "BERTH_DATA_DIR": str(tmp_path / "berth"),
        "BERTH_STOP_GRACE_SECONDS": "3",
        "BERTH_RECONCILE_INTERVAL_SECONDS": "2",
        "BERTH_LOG_LEVEL": "WARNING",
    }
    output = tmp_path / "up.out"
    with open(output, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "berth", "up"], env=env, stdout=log, stderr=log)
    try:
        yield Up(process, env, output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(90)


async def connect_bus(up: Up) -> Client:
    """A NATS connection to the server `berth up` runs, to read the spec stream as an operator would:
    as the scheduler's user (it reads BERTH_SPECS), from the data dir's credentials, on its inbox."""
    passwords = service_passwords(Path(up.env["BERTH_DATA_DIR"]) / "nats")
    return await nats.connect(
        up.nats_url,
        user="scheduler",
        password=passwords["scheduler"],
        inbox_prefix=inbox_prefix("scheduler"),
        max_reconnect_attempts=5,
    )


@pytest.fixture
async def api(up: Up) -> AsyncIterator[httpx.AsyncClient]:
    await eventually(lambda: "berth is up" in up.output.read_text(), timeout=60, what="berth is up")
    headers = {"Authorization": f"Bearer {up.token()}"}
    async with httpx.AsyncClient(base_url=up.api_url, headers=headers, timeout=10) as client:
        yield client


def echo_spec(name: str, marker: str, replicas: int = 1) -> dict[str, Any]:
    """A tiny replica whose MARKER variable tells which update it runs (echo.py answers ?env=MARKER)."""
    return {
        "name": name,
        "image": "python:3.11-slim",
        "command": [sys.executable, ECHO],
        "env": [{"name": "MARKER", "value": marker}],
        "resources": {"ports": [8000], "replicas": replicas},
        "healthChecks": {"readiness": {"path": "/", "periodSeconds": 1}},
    }


def marker_of(spec: dict[str, Any]) -> str:
    return next(e["value"] for e in spec.get("env", []) if e["name"] == "MARKER")


@dataclass
class Ledger:
    """What the client knows of its updates: accepted (2xx), refused (a definite no: 4xx or no
    connection), unknown (the answer was lost, e.g. the registry died after its commit)."""

    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)


@dataclass
class Kills:
    per_target: Counter[str] = field(default_factory=Counter)
    last_at: float = 0.0


async def current_spec_id(api: httpx.AsyncClient, slug: str) -> str:
    """The deployment's current spec_id, asked until the registry answers (it may be restarting)."""

    async def probe() -> str | None:
        try:
            response = await api.get(f"/v1/deployments/{slug}")
        except httpx.TransportError:
            return None
        return response.json()["spec_id"] if response.status_code == 200 else None

    return await eventually(probe, timeout=CONVERGE_WITHIN_SECONDS, interval=0.2, what=f"GET {slug}")


async def update(api: httpx.AsyncClient, slug: str, name: str, ledger: Ledger, rng: random.Random) -> None:
    """Send updates one after another, each based on the version before (If-Match), each with a marker
    of its own. A marker is never sent twice: after a lost answer the client moves on, so a marker
    stored twice can only be berth's doing."""
    spec_id = await current_spec_id(api, slug)
    for n in range(UPDATES_PER_DEPLOYMENT):
        await asyncio.sleep(rng.uniform(*UPDATE_EVERY_SECONDS))  # pacing, not waiting for a condition
        marker = f"{slug}-u{n}"
        replicas = 2 if n % 5 == 3 else 1  # some updates scale too
        try:
            response = await api.put(
                f"/v1/deployments/{slug}", json=echo_spec(name, marker, replicas), headers={"If-Match": f'"{spec_id}"'}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout):
            ledger.refused.add(marker)  # never reached the registry
        except httpx.TransportError:
            ledger.unknown.add(marker)
        else:
            if response.is_success:
                ledger.accepted.add(marker)
                spec_id = response.json()["spec_id"]
                continue
            (ledger.unknown if response.status_code >= 500 else ledger.refused).add(marker)
        spec_id = await current_spec_id(api, slug)


async def kill_at_random(up: Up, kills: Kills, rng: random.Random) -> None:
    """SIGKILL a running child of `up` every 1-3 s; `up` restarts it (with its back-off)."""
    for _ in range(KILLS):
        await asyncio.sleep(rng.uniform(*KILL_EVERY_SECONDS))  # the chaos schedule, not a condition
        order = list(TARGETS)
        rng.shuffle(order)
        victim = await eventually(
            lambda: next(((t, p) for t in order if (p := up.child(t)) is not None), None),
            timeout=60,
            what="a running child to kill",
        )
        target, process = victim
        process.send_signal(signal.SIGKILL)
        kills.per_target[target] += 1
        kills.last_at = time.monotonic()


async def history(api: httpx.AsyncClient, slug: str) -> list[dict[str, Any]]:
    """Every version of the deployment, newest first, all pages."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params = {"limit": 1000, **({"after": after} if after else {})}
        page = (await api.get(f"/v1/deployments/{slug}/history", params=params)).raise_for_status().json()
        items += page["items"]
        after = page["next"]
        if after is None:
            return items


async def spec_ids_on_the_bus(up: Up) -> dict[str, Counter[str]]:
    """Per deployment id, how often each spec_id was published to the spec stream."""
    nc = await connect_bus(up)
    try:
        events = await all_events(nc.jetstream(), "berth.spec.v1.>")
    finally:
        await nc.close()
    published: dict[str, Counter[str]] = {}
    for event in events:
        if hasattr(event, "spec_id"):
            published.setdefault(event.deployment_id, Counter())[event.spec_id] += 1  # type: ignore[attr-defined]
    return published


async def converged(api: httpx.AsyncClient, router: httpx.AsyncClient, up: Up, deployments: dict[str, str]) -> bool:
    """Every deployment's newest version is published, runs Ready (all replicas of it, as many as it
    asks for) and answers through the router; raises with what is not there yet."""
    published = await spec_ids_on_the_bus(up)
    behind = []
    for slug, deployment_id in deployments.items():
        versions = await history(api, slug)
        newest = versions[0]
        missing = {v["spec_id"] for v in versions} - set(published.get(deployment_id, {}))
        if missing:
            behind.append(f"{slug}: {len(missing)} versions not on the bus")
            continue
        status = (await api.get(f"/v1/deployments/{slug}/status")).raise_for_status().json()
        replicas = newest["spec"]["resources"]["replicas"]
        running = [(r["spec_id"] == newest["spec_id"], r["ready"]) for r in status["replicas"]]
        if (status["phase"], status["desired_replicas"], status["ready_replicas"]) != ("Ready", replicas, replicas) or (
            running != [(True, True)] * replicas
        ):
            behind.append(f"{slug} v{newest['spec_version']}: {status['phase']} {status['ready_replicas']}/"
                          f"{status['desired_replicas']} ready, replicas (newest, ready) {running}")  # fmt: skip
            continue
        answer = await router.get(f"/default/{slug}/", params={"env": "MARKER"})
        if answer.status_code != 200 or answer.json()["env"]["MARKER"] != marker_of(newest["spec"]):
            behind.append(f"{slug}: endpoint answered {answer.status_code} {answer.text[:120]}")
    assert not behind, behind
    return True


async def test_no_update_lost_or_duplicated_while_services_are_killed(up: Up, api: httpx.AsyncClient) -> None:
    rng = random.Random(SEED)
    deployments: dict[str, str] = {}
    for i in range(DEPLOYMENTS):
        created = await api.post("/v1/deployments", json=echo_spec(f"crash {i}", CREATED))
        assert created.status_code == 201, created.text
        deployments[created.json()["slug"]] = created.json()["deployment_id"]

    ledger, kills = Ledger(), Kills()
    started = time.monotonic()
    updaters = [
        update(api, slug, f"crash {i}", ledger, random.Random(rng.random()))
        for i, slug in enumerate(deployments)
    ]
    await asyncio.gather(kill_at_random(up, kills, random.Random(rng.random())), *updaters)
    chaos_ended = time.monotonic()
    assert up.process.poll() is None, f"berth up exited; see {up.output}"

    async with httpx.AsyncClient(base_url=up.router_url, timeout=5) as router:

        async def probe() -> bool:
            try:
                return await converged(api, router, up, deployments)
            except (httpx.HTTPError, nats.errors.Error, OSError) as exc:  # a service still restarting
                raise AssertionError(repr(exc)) from exc

        await eventually(probe, timeout=CONVERGE_WITHIN_SECONDS, interval=1.0, what=f"converged (logs: {up.logs})")
    convergence_seconds = time.monotonic() - chaos_ended

    stored: Counter[str] = Counter()
    stored_spec_ids: set[str] = set()
    gaps = []
    for slug in deployments:
        versions = await history(api, slug)
        stored_spec_ids |= {v["spec_id"] for v in versions}
        stored.update(marker_of(v["spec"]) for v in versions if marker_of(v["spec"]) != CREATED)
        numbers = sorted(v["spec_version"] for v in versions)
        if numbers != list(range(1, len(numbers) + 1)):
            gaps.append((slug, numbers))
    published = await spec_ids_on_the_bus(up)
    lost = sorted(ledger.accepted - set(stored))
    duplicated = sorted(m for m, count in stored.items() if count > 1)
    stored_though_refused = sorted(ledger.refused & set(stored))
    published_twice = sorted(s for counts in published.values() for s, count in counts.items() if count > 1)
    published_not_stored = sorted({s for counts in published.values() for s in counts} - stored_spec_ids)
    attempted = DEPLOYMENTS * UPDATES_PER_DEPLOYMENT

    print(f"\ncrash consistency (seed {SEED}): {attempted} updates over {DEPLOYMENTS} deployments"
          f" in {chaos_ended - started:.0f} s, {chaos_ended - kills.last_at:.0f} s beyond the last kill")  # fmt: skip
    print(f"  accepted {len(ledger.accepted)}, refused {len(ledger.refused)}, answer lost {len(ledger.unknown)}"
          f" (of which stored {len(ledger.unknown & set(stored))})")  # fmt: skip
    print(f"  kills {sum(kills.per_target.values())}: {dict(sorted(kills.per_target.items()))}")
    print(f"  lost {len(lost)}, duplicated {len(duplicated)}, published twice {len(published_twice)},"
          f" stored though refused {len(stored_though_refused)}")  # fmt: skip
    print(f"  converged {convergence_seconds:.1f} s after the last update")

    assert ledger.accepted, "no update was accepted: the test proved nothing"
    assert not lost, f"accepted but not in the history: {lost}"
    assert not duplicated, f"stored more than once: {duplicated}"
    assert not published_twice, f"SpecApplied published more than once: {published_twice}"
    assert not published_not_stored, f"SpecApplied of a version not in any history: {published_not_stored}"
    assert not stored_though_refused, f"refused but stored: {stored_though_refused}"
    assert not gaps, f"spec versions not 1..n: {gaps}"
    assert set(stored) <= ledger.accepted | ledger.unknown, "a version no client sent"

    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(90) == 0, f"berth up did not stop cleanly; see {up.output}"
