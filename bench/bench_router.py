"""The router against nginx and HAProxy in front of the same upstream, in one run, driven by wrk.

    .venv/bin/python bench/bench_router.py [--rounds 3] [--seconds 4] [--baseline DIR]

Starts its own nats-server, one upstream replica (tests/servers/echo_fast.py), the router
(`python -m services.router`) with one worker and with two (`--workers`), nginx with one worker and
with two, and HAProxy (one thread; upstream keep-alive on everywhere, the same path rewrite as the
router's), registers the replica with the router by publishing the traffic
assignment the scheduler would, then measures every proxy with wrk (one thread) at 16 and 64
connections for `--seconds` each. Runs are interleaved: each round measures every proxy once, in
turn, and the figures printed are medians over the rounds (the machine's cores are shared, so a single
run says little). Per proxy and concurrency: requests per second, p99 latency, CPU seconds the proxy
processes spent per request (psutil; summed over all of a proxy's processes, so a proxy with two
workers shows its cost per request whichever cores it ran on: the per-core cost), and after the c64
run the connections it holds to the upstream. Ratios are printed against nginx with one worker (the
reference a one-worker router should match) and against nginx with as many workers as the row's
proxy (the fair reference for several workers: same cores for the proxy). The upstream and wrk (one
thread) share the machine's cores with the proxies, so a two-worker proxy's rps says more about them
than about it on a small machine; its CPU per request still compares.

`--instructions` instead runs every proxy under valgrind's callgrind and prints the user-space
instructions each spends per request at 16 connections (collection on only around the measured wrk
run): a figure that does not move with the machine's load, for comparing two versions of the router.
It leaves out the kernel's share (the socket calls), which is most of nginx's and HAProxy's cost.
Only one-worker proxies are counted (a worker's count per request does not depend on how many run).

`--baseline DIR` also starts a router from another source tree (e.g. `git archive main | tar -x -C
DIR`), measured in the same rounds: before/after figures from one run.

The run ends by timing `--new` new deployments from the publish of their assignment to the first
request the router answers 200 for (p50/p99): the router's share of "apply → first request served".

nginx, HAProxy and wrk are bench-only tools from the OS packages (`apt-get install -y nginx haproxy
wrk` on Debian); wrk is required, nginx and HAProxy are skipped (saying so) when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
import psutil

from libs.bus import ensure_streams, make_broker, publish
from libs.events import RevisionTarget, ServingReplica, TrafficAssigned
from libs.natsd import free_port, start_nats_server, wait_for_port

PYTHON = sys.executable
PATH = "/default/bench/predict"
CONCURRENCIES = (16, 64)

NGINX_CONF = """
worker_processes 1;
master_process {master};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream replica {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /default/bench/ {{
            proxy_pass http://replica/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Prefix /default/bench;
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    option http-keep-alive
    http-reuse safe
frontend bench
    bind 127.0.0.1:{port}
    default_backend replica
backend replica
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Prefix /default/bench
    http-request replace-path /default/bench(/.*) \\1
    server r1 127.0.0.1:{upstream}
"""


@dataclass
class Target:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    workers: int = 1
    runs: dict[int, list[dict[str, float]]] = field(default_factory=dict)

    def tree(self) -> list[psutil.Process]:
        """Every process of the proxy: the one, or a parent (nginx's master, the router's supervisor)
        and its workers."""
        process = psutil.Process(self.process.pid)
        return [process, *process.children(recursive=True)]


# -- wrk ------------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    """Requests, requests per second and p99 (ms) from one wrk run (one thread)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency", url],
        check=True, capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not (p99 and done and rps):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors through {url}:\n{out}")
    return {"requests": float(done[1]), "rps": float(rps[1]), "p99_ms": float(p99[1]) * _UNITS[p99[2]]}


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(times.user + times.system for times in (process.cpu_times() for process in processes))


def upstream_connections(processes: list[psutil.Process], upstream_port: int) -> int:
    return sum(
        1 for process in processes for c in process.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == upstream_port and c.status == psutil.CONN_ESTABLISHED
    )


def measure(target: Target, upstream_port: int, connections: int, seconds: float) -> None:
    processes = target.tree()
    before = cpu_seconds(processes)
    run = wrk(f"http://127.0.0.1:{target.port}{PATH}", connections, seconds)
    run["cpu_us"] = (cpu_seconds(processes) - before) / run["requests"] * 1e6
    if connections == max(CONCURRENCIES):
        time.sleep(2.5)  # what the pool keeps once the load is over (the router trims at its next sweep)
    run["held"] = upstream_connections(processes, upstream_port)
    target.runs.setdefault(connections, []).append(run)


# -- the router's side ----------------------------------------------------------------------------------


def assignment(deployment: str, upstream_port: int) -> TrafficAssigned:
    target = RevisionTarget(
        revision_id="rev0", percent=100, spec_versions=[1],
        replicas=[ServingReplica(replica_id=f"{deployment}-r0", address=f"127.0.0.1:{upstream_port}")],
    )
    return TrafficAssigned(
        deployment_id=deployment, project="default", slug=deployment, name=deployment, generation=1,
        spec_version=1, targets=[target],
    )


async def register_replica(nats_url: str, upstream_port: int) -> None:
    broker = make_broker(nats_url, "bench")
    await broker.start()
    try:
        await ensure_streams(broker.connection.jetstream())
        await publish(broker, assignment("bench", upstream_port))
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
                await publish(broker, assignment(deployment, upstream_port))
                while True:
                    async with session.get(f"http://127.0.0.1:{router_port}/default/{deployment}/") as response:
                        await response.read()
                        if response.status == 200:
                            break
                samples.append(time.perf_counter() - began)
    finally:
        await broker.stop()
    return samples


async def wait_until_served(url: str, timeout: float = 15.0) -> None:
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
                raise TimeoutError(f"{url} not served after {timeout}s")
            await asyncio.sleep(0.05)


def start_router(
    source: Path, nats_url: str, port: int, data_dir: Path, prefix: list[str], workers: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "BERTH_NATS_URL": nats_url, "BERTH_ROUTER_PORT": str(port), "BERTH_LOG_LEVEL": "WARNING",
        "BERTH_DATA_DIR": str(data_dir), "PYTHONPATH": str(source), "BERTH_ROUTER_WORKERS": str(workers),
    }
    return subprocess.Popen([*prefix, PYTHON, "-m", "services.router"], cwd=source, env=env)


def callgrind(tmp: Path, name: str) -> list[str]:
    """The command prefix that runs a proxy under callgrind, collecting nothing until told."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/callgrind.{name}"]


def count_instructions(target: Target, tmp: Path, seconds: float) -> dict[str, float]:
    """User-space instructions per request at 16 connections, collected around one wrk run."""
    pid = str(target.process.pid)
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True, timeout=60)
    path = PATH if target.name != "direct" else "/predict"
    run = wrk(f"http://127.0.0.1:{target.port}{path}", 16, seconds)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True, timeout=60)
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True, timeout=60)
    dump = max(tmp.glob(f"callgrind.{target.name}.*"), key=lambda f: f.stat().st_mtime)
    totals = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
    assert totals is not None, dump
    return {**run, "instructions": int(totals[1]) / run["requests"]}


# -- the run --------------------------------------------------------------------------------------------


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratios(runs: list[dict[str, float]], reference: Target | None, connections: int) -> str:
    if reference is None:
        return f"{'-':>10} {'-':>10} {'-':>10} "
    ref = reference.runs[connections]
    return (f"{median(runs, 'rps') / median(ref, 'rps'):10.2f}x{median(runs, 'cpu_us') / median(ref, 'cpu_us'):10.2f}x"
            f"{median(runs, 'p99_ms') / median(ref, 'p99_ms'):10.2f}x")


def report(targets: list[Target], rounds: int, seconds: float) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"router vs nginx/HAProxy, 1 upstream replica (echo_fast), wrk -t1 for {seconds:g}s per run, "
          f"medians of {rounds} interleaved rounds, {os.cpu_count()} cores shared by wrk, proxy and upstream; "
          f"load average at the end {load}")
    print(f"{'':14}{'conns':>6}{'rps':>9}{'p99 ms':>9}{'CPU us/req':>12}{'held':>6}"
          f"{'rps/nginx':>11}{'CPU/nginx':>11}{'p99/nginx':>11}"
          f"{'rps/ngxN':>11}{'CPU/ngxN':>11}{'p99/ngxN':>11}")
    nginx = {t.workers: t for t in targets if t.name.startswith("nginx")}
    for connections in CONCURRENCIES:
        for target in targets:
            runs = target.runs[connections]
            rps, p99, cpu = median(runs, "rps"), median(runs, "p99_ms"), median(runs, "cpu_us")
            held = f"{median(runs, 'held'):.0f}" if connections == max(CONCURRENCIES) else ""
            ratios = ""
            if target.name != "direct" and target is not nginx.get(1):
                ratios = _ratios(runs, nginx.get(1), connections)
                if target.workers > 1 and not target.name.startswith("nginx"):
                    ratios += _ratios(runs, nginx.get(target.workers), connections)
            cpu_text = f"{cpu:12.1f}" if target.name != "direct" else f"{'(upstream)':>12}"
            print(f"{target.name:14}{connections:6}{rps:9.0f}{p99:9.2f}{cpu_text}{held:>6} {ratios}")
    print("CPU us/req: summed over every process of the proxy (all its workers): the cost per request on any core")
    print("held: ESTABLISHED connections from the proxy to the upstream 2.5 s after the c64 run")
    print("x/nginx: against nginx with one worker; x/ngxN: against nginx with the row's number of workers")


def bench(rounds: int, seconds: float, baseline: Path | None, new: int, instructions: bool, workers: list[int]) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk (and nginx haproxy for the references)")
    if instructions and shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind: apt-get install -y valgrind")
    targets: list[Target] = []
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        nats_port, upstream_port = free_port(), free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        try:
            processes.append(start_nats_server(tmp / "nats", nats_port))
            upstream = subprocess.Popen([PYTHON, str(ROOT / "tests/servers/echo_fast.py"), str(upstream_port)])
            processes.append(upstream)
            wait_for_port("127.0.0.1", upstream_port)
            asyncio.run(register_replica(nats_url, upstream_port))
            targets.append(Target("direct", upstream_port, upstream))
            counts = [1] if instructions else workers
            # The baseline runs one worker (an older tree without the setting ignores it).
            routers = [(_named("router", n), ROOT, n) for n in counts]
            routers += [("router@base", baseline, 1)] if baseline is not None else []
            for name, source, count in routers:
                port = free_port()
                prefix = callgrind(tmp, name) if instructions else []
                process = start_router(source, nats_url, port, tmp / name.replace(" ", "-"), prefix, count)
                processes.append(process)
                targets.append(Target(name, port, process, count))
            if shutil.which("nginx"):
                for count in counts:
                    name, port = _named("nginx", count), free_port()
                    home = tmp / f"nginx{count}"
                    home.mkdir()
                    master = "off" if instructions else "on"  # under valgrind: the one process does the work
                    conf = NGINX_CONF.format(tmp=home, upstream=upstream_port, port=port, master=master)
                    (home / "nginx.conf").write_text(conf.replace("worker_processes 1;", f"worker_processes {count};"))
                    prefix = callgrind(tmp, name) if instructions else []
                    process = subprocess.Popen([*prefix, "nginx", "-c", str(home / "nginx.conf"), "-p", str(home)])
                    processes.append(process)
                    targets.append(Target(name, port, process, count))
            else:
                print("nginx not installed: no nginx reference (apt-get install -y nginx)")
            if shutil.which("haproxy"):
                port = free_port()
                (tmp / "haproxy.cfg").write_text(HAPROXY_CONF.format(upstream=upstream_port, port=port))
                prefix = callgrind(tmp, "haproxy") if instructions else []
                process = subprocess.Popen([*prefix, "haproxy", "-db", "-f", str(tmp / "haproxy.cfg")])
                processes.append(process)
                targets.append(Target("haproxy", port, process))
            else:
                print("HAProxy not installed: no HAProxy reference (apt-get install -y haproxy)")
            for target in targets:
                path = PATH if target.name != "direct" else "/predict"
                asyncio.run(wait_until_served(f"http://127.0.0.1:{target.port}{path}", 900.0 if instructions else 15.0))
                wrk(f"http://127.0.0.1:{target.port}{path}", max(CONCURRENCIES), 1)  # warm-up
            if instructions:
                print(f"user-space instructions per request at 16 connections, wrk for {seconds:g}s, under callgrind")
                for target in targets:
                    if target.name != "direct":
                        run = count_instructions(target, tmp, seconds)
                        print(f"  {target.name:14}{run['instructions']:10.0f}  ({run['requests']:.0f} requests)")
                return
            for _ in range(rounds):
                for target in targets:
                    for connections in CONCURRENCIES:
                        if target.name == "direct":
                            run = wrk(f"http://127.0.0.1:{upstream_port}/predict", connections, seconds)
                            target.runs.setdefault(connections, []).append({**run, "cpu_us": 0.0, "held": 0.0})
                        else:
                            measure(target, upstream_port, connections, seconds)
                targets.append(targets.pop(0))  # interleaved: each round starts with the next target
            router = next(t for t in targets if t.name == "router")
            routable = statistics.quantiles(asyncio.run(time_to_routed(nats_url, router.port, upstream_port, new)), n=100)
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()  # a router whose bus went first may take its stop steps' full bound
    targets.sort(key=lambda t: (["direct", "nginx", "haproxy", "router@base", "router"].index(t.name.split(" ")[0]), t.workers))
    report(targets, rounds, seconds)
    print(f"assignment published -> first request served, {new} new deployments: "
          f"p50 {routable[49] * 1000:.2f} ms, p99 {routable[98] * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are printed)")
    parser.add_argument("--seconds", type=int, default=4, help="duration of each wrk run")
    parser.add_argument("--baseline", type=Path, help="also run the router from this source tree")
    parser.add_argument("--new", type=int, default=100, help="new deployments timed to their first request")
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead")
    parser.add_argument("--workers", default="1,2", help="router and nginx worker counts measured (comma-separated)")
    args = parser.parse_args()
    workers = sorted({int(n) for n in args.workers.split(",")})
    bench(args.rounds, args.seconds, args.baseline, args.new, args.instructions, workers)


def _named(proxy: str, workers: int) -> str:
    return proxy if workers == 1 else f"{proxy} x{workers}"


if __name__ == "__main__":
    main()
