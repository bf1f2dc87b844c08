"""Router overhead: the same load sent directly to a replica and through the router, in one run.

    .venv/bin/python bench/bench_router.py [--requests 2000] [--concurrency 16] [--seconds 4]

Starts its own nats-server, one fast upstream replica (tests/servers/echo_fast.py) and the router
(`python -m services.router`), each its own process, registers the replica by publishing the traffic
assignment the scheduler would, then drives the load from a separate client process (aiohttp; no wrk
needed). Loopback only. Prints p50/p99 latency at concurrency 1, requests per second at the given
concurrency, the latency the router adds and the routed/direct throughput ratio.

Last, it publishes assignments for `--new` deployments one at a time and times each from its publish
to the first request the router answers 200 for it (p50/p99): the router's share of "apply → first
request served".

`--revisions 2` splits the traffic 50/50 across two revisions (two replica ids at the one upstream
address): the cost of the weighted choice, against the default single revision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import quantiles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
import psutil

from libs.bus import ensure_streams, make_broker, publish
from libs.events import RevisionTarget, ServingReplica, TrafficAssigned
from libs.natsd import free_port, start_nats_server, wait_for_port

PYTHON = sys.executable


# -- the client process ---------------------------------------------------------------------------


async def latency(url: str, requests: int) -> list[float]:
    """Seconds per request, one request at a time on a kept-alive connection."""
    samples: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(requests // 10):  # warm-up
            async with session.get(url) as response:
                await response.read()
        for _ in range(requests):
            began = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            samples.append(time.perf_counter() - began)
    return samples


async def throughput(url: str, concurrency: int, seconds: float) -> tuple[int, float]:
    """Requests done by `concurrency` workers looping for `seconds`, and the seconds it took."""
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(until: float) -> None:
            nonlocal done
            while time.perf_counter() < until:
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}")
                done += 1

        await asyncio.gather(*(worker(time.perf_counter() + 0.5) for _ in range(concurrency)))  # warm-up
        done = 0
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + seconds) for _ in range(concurrency)))
        return done, time.perf_counter() - began


def client_main(mode: str, url: str, amount: float, concurrency: int) -> None:
    if mode == "latency":
        samples = asyncio.run(latency(url, int(amount)))
        cuts = quantiles(samples, n=100)
        print(json.dumps({"p50": cuts[49], "p99": cuts[98]}))
    else:
        done, elapsed = asyncio.run(throughput(url, concurrency, amount))
        print(json.dumps({"requests": done, "rps": done / elapsed}))


def run_client(mode: str, url: str, amount: float, concurrency: int = 1) -> dict[str, float]:
    out = subprocess.run(
        [PYTHON, __file__, "--client", mode, url, str(amount), str(concurrency)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return json.loads(out.stdout)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# -- orchestration ------------------------------------------------------------------------------------


def assignment(deployment: str, upstream_port: int, revisions: int) -> TrafficAssigned:
    """`revisions` revisions sharing the traffic evenly, one replica each, all at the one upstream."""
    address = f"127.0.0.1:{upstream_port}"
    targets = [
        RevisionTarget(
            revision_id=f"rev{i}", percent=100 // revisions + (i < 100 % revisions), spec_versions=[i + 1],
            replicas=[ServingReplica(replica_id=f"{deployment}-r{i}", address=address)],
        )
        for i in range(revisions)
    ]
    return TrafficAssigned(
        deployment_id=deployment, project="default", slug=deployment, name=deployment, generation=1,
        spec_version=revisions, targets=targets,
    )


async def register_replica(nats_url: str, upstream_port: int, revisions: int) -> None:
    broker = make_broker(nats_url, "bench")
    await broker.start()
    try:
        await ensure_streams(broker.connection.jetstream())
        await publish(broker, assignment("bench", upstream_port, revisions))
    finally:
        await broker.stop()


async def time_to_routed(nats_url: str, router_port: int, upstream_port: int, count: int) -> list[float]:
    """Seconds from publishing each new deployment's assignment to its first 200 through the router."""
    broker = make_broker(nats_url, "bench")
    await broker.start()
    samples = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(count):
                deployment = f"new{i}"
                began = time.perf_counter()
                await publish(broker, assignment(deployment, upstream_port, 1))
                while True:
                    async with session.get(f"http://127.0.0.1:{router_port}/default/{deployment}/") as response:
                        await response.read()
                        if response.status == 200:
                            break
                samples.append(time.perf_counter() - began)
    finally:
        await broker.stop()
    return samples


async def wait_until_routed(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not routed after {timeout}s")
            await asyncio.sleep(0.05)


def bench(requests: int, concurrency: int, seconds: float, revisions: int, new: int) -> None:
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        nats_port, upstream_port, router_port = free_port(), free_port(), free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        try:
            processes.append(start_nats_server(Path(tmp) / "nats", nats_port))
            processes.append(subprocess.Popen([PYTHON, str(ROOT / "tests/servers/echo_fast.py"), str(upstream_port)]))
            env = {
                **os.environ, "BERTH_NATS_URL": nats_url, "BERTH_ROUTER_PORT": str(router_port),
                "BERTH_LOG_LEVEL": "WARNING", "BERTH_DATA_DIR": str(Path(tmp) / "berth"),
            }
            processes.append(subprocess.Popen([PYTHON, "-m", "services.router"], cwd=ROOT, env=env))
            wait_for_port("127.0.0.1", upstream_port)
            wait_for_port("127.0.0.1", router_port)
            asyncio.run(register_replica(nats_url, upstream_port, revisions))
            direct = f"http://127.0.0.1:{upstream_port}/predict"
            routed = f"http://127.0.0.1:{router_port}/default/bench/predict"
            asyncio.run(wait_until_routed(routed))

            lat_direct = run_client("latency", direct, requests)
            lat_routed = run_client("latency", routed, requests)
            upstream_cpu, router_cpu = psutil.Process(processes[1].pid), psutil.Process(processes[2].pid)
            before = cpu_seconds(upstream_cpu)
            load_direct = run_client("throughput", direct, seconds, concurrency)
            upstream_us = (cpu_seconds(upstream_cpu) - before) / load_direct["requests"] * 1e6
            before = cpu_seconds(router_cpu)
            load_routed = run_client("throughput", routed, seconds, concurrency)
            router_us = (cpu_seconds(router_cpu) - before) / load_routed["requests"] * 1e6
            rps_direct, rps_routed = load_direct["rps"], load_routed["rps"]
            routable = quantiles(asyncio.run(time_to_routed(nats_url, router_port, upstream_port, new)), n=100)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(10)

    ms = 1000.0
    print(f"router benchmark: {requests} sequential requests, then {concurrency} concurrent for {seconds:g}s each, "
          f"{revisions} revision(s)")
    print(f"{'':10}{'p50 ms':>10}{'p99 ms':>10}{'rps':>10}")
    print(f"{'direct':10}{lat_direct['p50'] * ms:10.3f}{lat_direct['p99'] * ms:10.3f}{rps_direct:10.0f}")
    print(f"{'routed':10}{lat_routed['p50'] * ms:10.3f}{lat_routed['p99'] * ms:10.3f}{rps_routed:10.0f}")
    print(f"added latency p50 {(lat_routed['p50'] - lat_direct['p50']) * ms:.3f} ms, "
          f"p99 {(lat_routed['p99'] - lat_direct['p99']) * ms:.3f} ms")
    print(f"throughput routed/direct {rps_routed / rps_direct:.0%}")
    print(f"CPU per request: upstream {upstream_us:.0f} us, router {router_us:.0f} us "
          f"(on {os.cpu_count()} cores shared by client, router and upstream)")
    print(f"assignment published -> first request served, {new} new deployments: "
          f"p50 {routable[49] * ms:.2f} ms, p99 {routable[98] * ms:.2f} ms")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests for latency")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput run")
    parser.add_argument("--revisions", type=int, default=1, help="revisions the traffic is split across")
    parser.add_argument("--new", type=int, default=100, help="new deployments timed to their first request")
    args = parser.parse_args()
    bench(args.requests, args.concurrency, args.seconds, args.revisions, args.new)


if __name__ == "__main__":
    main()
