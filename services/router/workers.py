"""Several router processes on one port (`router_workers`): one Python process proxies on one core,
so a router with more cores runs a worker per core. Each worker is a whole router (its own bus
connection, routing table, upstream pools and metrics reporter) listening on router_port with
SO_REUSEPORT: the kernel spreads the incoming connections over the workers.

A scrape of /_berth/metrics reaches one worker, which answers with all of theirs added up
(services/router/peers.py). The parent only supervises: it forwards SIGTERM/SIGINT to the workers and waits for them (each drains
its requests as a single router does), and when a worker exits on its own it stops the others and
exits with that worker's code, so that whatever runs the router (`berth up`, Kubernetes) sees the
failure and restarts it whole, as it would a single process.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from functools import partial
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType

import uvloop
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from libs.config import Settings
from libs.logging import get_logger
from libs.service import run_service
from services.router.app import main

log = get_logger("router")

_PR_SET_PDEATHSIG = 1


def worker_count(settings: Settings) -> int:
    """`router_workers`, or when it is 0 one per CPU core this process may run on (Linux: elsewhere
    SO_REUSEPORT gives every connection to one of the sockets, so one worker)."""
    if settings.router_workers:
        return settings.router_workers
    return len(os.sched_getaffinity(0)) if sys.platform == "linux" else 1


def run_workers(settings: Settings, count: int) -> int:
    """Run `count` workers on router_host:router_port until a signal stops them; the exit code."""
    # Bound (not listening: it takes no connections) for as long as the workers run: port 0 becomes
    # one port for all of them, and a port another program holds fails here, once.
    reserved = _reserve(settings.router_host, settings.router_port)
    port = int(reserved.getsockname()[1])
    worker_settings = settings.model_copy(update={"router_port": port, "router_workers": 1})
    peers = Path(tempfile.mkdtemp(prefix="berth-router-"))  # where the workers meet for /_berth/metrics
    context = multiprocessing.get_context("fork")  # no event loop or thread runs yet in this process
    workers: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.exitcode is None and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(count):
        if stopping:
            break
        worker = context.Process(
            target=_worker, args=(worker_settings, os.getpid(), peers), name=f"router-worker-{index}"
        )
        worker.start()
        workers.append(worker)
    log.info("router workers started", port=port, workers=[w.pid for w in workers])
    code = 0
    running = list(workers)
    while running:
        wait([w.sentinel for w in running])
        for worker in [w for w in running if w.exitcode is not None]:
            running.remove(worker)
            if not stopping:
                log.error("router worker exited: stopping the others", pid=worker.pid, code=worker.exitcode)
                code = worker.exitcode or 1
                stop()
    reserved.close()
    shutil.rmtree(peers, ignore_errors=True)
    return code


def _reserve(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _worker(settings: Settings, parent: int, peers: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: run_service sets its own
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":  # a parent killed outright (SIGKILL, after its grace) takes its workers with it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        run_service("router", partial(main, reuse_port=True, peers=peers), settings)
    finally:
        # A forked worker leaves by os._exit, past the atexit hook that exports the last spans.
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            provider.shutdown()
