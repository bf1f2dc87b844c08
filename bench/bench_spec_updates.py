"""Spec updates per second, end to end: PUT over HTTP -> SQL commit with its outbox row -> relay ->
JetStream (PubAck) -> a durable consumer that receives each SpecApplied.

Side by side in one run: 1 and 8 concurrent clients (each updating a deployment of its own, one PUT
after the other, as `berth apply` in a loop would), against SQLite and against PostgreSQL; for each,
updates accepted per second, end to end per second, PUT p50 / p99 and the registry's CPU (% of one
core while the PUTs run). Beside them the raw nats-py rate of `js.publish` for messages of the same
size, awaited one by one and pipelined (64 in flight): the ceiling the relay publishes against.

    .venv/bin/python bench/bench_spec_updates.py [--updates 400] [--runs 3] [--before DIR] [--registries N]

`--registries N` also runs N registry processes of this checkout against the one PostgreSQL database
(the clients spread over them round-robin, the CPU summed over the processes; one relays, holding the
relay lock). `--profile DIR` samples each registry with py-spy (folded stacks, for flamegraphs or
`bench/profile_top.py`). `--runs N` repeats every configuration N times, interleaved, and prints medians. `--before DIR` also
runs the registry from another checkout of berth (e.g. `git worktree add /tmp/before main`), in the
same rounds, and prints the two side by side. Each configuration starts its own nats-server and
registry (`python -m services.spec_registry`) in a temporary directory; PostgreSQL is
BERTH_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test), on which the bench
creates a scratch database per configuration and drops it afterwards (skipped when unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import psutil
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.bus import MSG_ID_HEADER, ensure_streams  # noqa: E402
from libs.natsd import free_port, start_nats_server, wait_for_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEC = {"name": "bench", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 1}}
POSTGRES = os.environ.get("BERTH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLIENTS = (1, 8)
PIPELINE = 64


@dataclass
class Figures:
    accepted: float  # updates/s answered 200
    end_to_end: float  # updates/s until the consumer had every event
    p50_ms: float
    p99_ms: float
    cpu: float  # registry CPU while accepting, % of one core
    cpu_ms: float  # registry CPU per accepted update (user + system), ms: steadier than rates on a loaded machine
    load: float  # the machine's 1-minute load average when the PUTs ended


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES, connect_timeout=2):
            return True
    except Exception:
        return False


class ScratchDatabase:
    """A database of its own on the PostgreSQL server, dropped afterwards."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"berth_bench_{uuid.uuid4().hex[:10]}"
        self._admin = psycopg.connect(POSTGRES, autocommit=True)
        self._admin.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(POSTGRES).set(drivername="postgresql+psycopg", database=self.name).render_as_string(False)

    def drop(self) -> None:
        self._admin.execute(f'DROP DATABASE "{self.name}" WITH (FORCE)')
        self._admin.close()


def start_registry(code: Path, workdir: Path, nats_url: str, port: int, database: str | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BERTH_NATS_URL": nats_url,
        "BERTH_DATA_DIR": str(workdir / "berth"),
        "BERTH_API_PORT": str(port),
        "PYTHONPATH": str(code),
    }
    for name in ("BERTH_TOKEN", "BERTH_DATABASE_URL", "BERTH_FAULT_INJECT"):
        env.pop(name, None)
    if database is not None:
        env["BERTH_DATABASE_URL"] = database
    log = open(workdir / "registry.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [sys.executable, "-m", "services.spec_registry"], env=env, cwd=code, stdout=log, stderr=log
    )
    wait_for_port("127.0.0.1", port, timeout=60)
    return process


async def client_updates(
    session: aiohttp.ClientSession, url: str, name: str, spec_id: str, count: int, latencies: list[float]
) -> None:
    for n in range(count):
        document = {**SPEC, "name": name, "image": f"python:3.11.{n}"}
        started = time.perf_counter()
        async with session.put(f"{url}/v1/deployments/{name}", json=document, headers={"If-Match": f'"{spec_id}"'}) as answer:
            if answer.status != 200:
                raise RuntimeError(f"PUT answered {answer.status}: {await answer.text()}")
            spec_id = (await answer.json())["spec_id"]
        latencies.append(time.perf_counter() - started)


async def registry_updates(
    urls: list[str], token: str, js: nats.js.JetStreamContext, processes: list[psutil.Process], clients: int,
    updates: int,
) -> Figures:  # fmt: skip
    """Client n talks to urls[n % len(urls)]; the CPU is that of every registry process."""
    headers = {"Authorization": f"Bearer {token}"}
    per_client = updates // clients
    sessions = [aiohttp.ClientSession(headers=headers) for _ in range(clients)]
    try:
        created = []
        for n, session in enumerate(sessions):
            async with session.post(f"{urls[n % len(urls)]}/v1/deployments", json={**SPEC, "name": f"bench-{n}"}) as answer:
                created.append((f"bench-{n}", (await answer.json())["spec_id"]))
        received = 0
        all_received = asyncio.Event()
        expected = clients * (per_client + 1)  # each creation's event, then one per update

        async def on_event(msg: Msg) -> None:
            nonlocal received
            received += 1
            if received == expected:
                all_received.set()

        await js.subscribe("berth.spec.v1.*", durable="bench-consumer", cb=on_event)
        latencies: list[float] = []
        cpu_before, started = _cpu_seconds(processes), time.perf_counter()
        await asyncio.gather(
            *(client_updates(s, urls[n % len(urls)], name, spec_id, per_client, latencies)
              for n, (s, (name, spec_id)) in enumerate(zip(sessions, created)))
        )  # fmt: skip
        accepting, cpu_after = time.perf_counter() - started, _cpu_seconds(processes)
        await asyncio.wait_for(all_received.wait(), timeout=300)
        total = time.perf_counter() - started
    finally:
        for session in sessions:
            await session.close()
    cpu_seconds = cpu_after - cpu_before
    cuts = statistics.quantiles(latencies, n=100)
    done = clients * per_client
    return Figures(
        done / accepting, done / total, cuts[49] * 1000, cuts[98] * 1000, cpu_seconds / accepting * 100,
        cpu_seconds / done * 1000, os.getloadavg()[0],
    )  # fmt: skip


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


async def one_configuration(
    code: Path, backend: str, clients: int, updates: int, profile: Path | None = None, registries: int = 1
) -> Figures:
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        workdir = Path(tmp)
        nats_port, api_ports = free_port(), [free_port() for _ in range(registries)]
        nats_server = start_nats_server(workdir / "jetstream", nats_port)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        scratch = ScratchDatabase() if backend == "postgres" else None
        started: list[subprocess.Popen[bytes]] = []
        profiler = None
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            for api_port in api_ports:  # one after the other: each migrates the database as it starts
                started.append(start_registry(code, workdir, nats_url, api_port, scratch.url if scratch else None))
            registry = started[0]
            token = (workdir / "berth" / "token").read_text().strip()
            if profile is not None:  # py-spy samples the registry until it exits (folded stacks)
                profiler = subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(registry.pid), "--format", "raw", "--rate", "250",
                     "--nonblocking", "--output", str(profile)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            return await registry_updates(
                [f"http://127.0.0.1:{port}" for port in api_ports], token, js,
                [psutil.Process(r.pid) for r in started], clients, updates,
            )  # fmt: skip
        finally:
            await nc.close()
            for registry in started:
                registry.terminate()
            for registry in started:
                registry.wait(30)
            if profile is not None and profiler is not None:
                profiler.wait(30)
            nats_server.terminate()
            nats_server.wait(10)
            if scratch is not None:
                scratch.drop()


async def raw_publishes(updates: int) -> tuple[float, float, int]:
    """(awaited one by one, pipelined) messages/s of `js.publish` for a SpecApplied-sized message."""
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        port = free_port()
        server = start_nats_server(Path(tmp) / "jetstream", port)
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="BENCH_RAW", subjects=["bench.raw.>"], duplicate_window=120))
            payload = b"x" * 700  # a SpecApplied of the bench's spec, with its envelope
            started = time.perf_counter()
            for _ in range(updates):
                await js.publish("bench.raw.specs", payload, headers={MSG_ID_HEADER: uuid.uuid4().hex})
            awaited = updates / (time.perf_counter() - started)
            window = asyncio.Semaphore(PIPELINE)

            async def one() -> None:
                async with window:
                    await js.publish("bench.raw.specs", payload, headers={MSG_ID_HEADER: uuid.uuid4().hex})

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(updates)))
            pipelined = updates / (time.perf_counter() - started)
            return awaited, pipelined, len(payload)
        finally:
            await nc.close()
            server.terminate()
            server.wait(10)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def run(args: argparse.Namespace) -> None:
    codes = {"after": (REPO, 1)} if args.before is None else {"before": (Path(args.before).resolve(), 1), "after": (REPO, 1)}
    if args.registries > 1:  # PostgreSQL only: SQLite is one registry's file
        codes[f"after×{args.registries}"] = (REPO, args.registries)
    backends = ["sqlite"] + (["postgres"] if postgres_reachable() else [])
    results: dict[tuple[str, str, int], list[Figures]] = {}
    raw: list[tuple[float, float, int]] = []
    for round_ in range(args.runs):
        for backend in backends:
            for clients in CLIENTS:
                for label, (code, registries) in codes.items():  # interleaved: before and after in the same round
                    if registries > 1 and backend != "postgres":
                        continue
                    profile = None
                    if args.profile:
                        profile = Path(args.profile) / f"{label}-{backend}-{clients}-{round_ + 1}.folded"
                        profile.parent.mkdir(parents=True, exist_ok=True)
                    figures = await one_configuration(code, backend, clients, args.updates, profile, registries)
                    results.setdefault((label, backend, clients), []).append(figures)
                    print(
                        f"  round {round_ + 1} {label:8} {backend:8} {clients} client(s): "
                        f"{figures.accepted:6.0f}/s accepted, {figures.end_to_end:6.0f}/s end to end, "
                        f"p50 {figures.p50_ms:6.1f} ms, p99 {figures.p99_ms:6.1f} ms, CPU {figures.cpu:4.0f} %, "
                        f"{figures.cpu_ms:5.2f} CPU ms/update, load {figures.load:.1f}",
                        flush=True,
                    )
        raw.append(await raw_publishes(args.updates))

    print(f"\nspec updates, {args.updates} per configuration, medians of {args.runs} interleaved runs ({os.cpu_count()} cores)")
    print(f"  {'code':8} {'database':8} {'clients':>7} {'accepted/s':>10} {'e2e/s':>7} {'PUT p50':>9} {'PUT p99':>9} {'CPU':>6} {'CPU/update':>10} {'load':>5}")
    for (label, backend, clients), runs in results.items():
        print(
            f"  {label:8} {backend:8} {clients:7} {median([r.accepted for r in runs]):10.0f} "
            f"{median([r.end_to_end for r in runs]):7.0f} {median([r.p50_ms for r in runs]):6.1f} ms "
            f"{median([r.p99_ms for r in runs]):6.1f} ms {median([r.cpu for r in runs]):5.0f} % "
            f"{median([r.cpu_ms for r in runs]):7.2f} ms {median([r.load for r in runs]):5.1f}"
        )
    print(
        f"  raw js.publish ({raw[0][2]} B): {median([r[0] for r in raw]):.0f} msgs/s awaited one by one, "
        f"{median([r[1] for r in raw]):.0f} msgs/s pipelined ({PIPELINE} in flight)"
    )
    if "postgres" not in backends:
        print(f"  PostgreSQL not reachable at {POSTGRES}: skipped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=400, help="PUTs per configuration, shared by the clients")
    parser.add_argument("--runs", type=int, default=1, help="rounds; medians are printed")
    parser.add_argument("--before", help="another checkout of berth to run in the same rounds")
    parser.add_argument(
        "--registries", type=int, default=1,
        help="also run N registry processes of this checkout on PostgreSQL, the clients spread over them",
    )  # fmt: skip
    parser.add_argument("--profile", help="a directory: sample each registry with py-spy into <dir>/<config>.folded")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
