"""Wiring of the router with the service kit: the traffic watch and its periodic re-read, the secrets
watch, the HTTP server, the metrics reporter; `start_router` starts it in-process (tests, bench) and
`main` is the service process."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, ProcessCollector

from libs.bus import TRAFFIC_EVENTS
from libs.config import Settings
from libs.events import RequestMetricsReported
from libs.kit import STOP_STEP_TIMEOUT_SECONDS, Service
from libs.logging import get_logger
from libs.sealing import Sealer
from libs.secrets import SecretStore
from services.router.auth import AuthSecrets
from services.router.handlers import RESYNC_SECONDS, Feed
from services.router.metrics import MetricsReporter, RevisionTotals, RouterCollector
from services.router.peers import WorkerMetrics
from services.router.proxy import Proxy
from services.router.server import Server
from services.router.table import RoutingTable
from services.router.upstream import UpstreamPools

log = get_logger("router")

CONNECT_TIMEOUT_SECONDS = 5.0
KEEPALIVE_SECONDS = 30.0  # an idle connection to a replica is closed after this
CLIENT_KEEPALIVE_SECONDS = 75.0  # and an idle connection from a client after this


@dataclass
class RouterHandle:
    url: str  # http://host:port
    port: int
    table: RoutingTable
    secrets: AuthSecrets
    pools: UpstreamPools
    feed: Feed
    _stop: Callable[[], Awaitable[None]]

    async def stop(self) -> None:
        await self._stop()


async def start_router(settings: Settings, reuse_port: bool = False, peers: Path | None = None) -> RouterHandle:
    """Connect to the bus, load the routing table, then serve on router_host:router_port (shared with
    the other workers when `reuse_port`; `peers`: the directory where the workers meet to answer
    /_berth/metrics together)."""
    service = Service("router", settings)
    js = await service.connect()
    try:
        handle = await _wire(service, js, settings, reuse_port, peers)
    except BaseException:
        await service.stop()  # whatever was started so far
        raise
    log.info("router serving", host=settings.router_host, port=handle.port, deployments=len(handle.table.by_key))
    return handle


async def _wire(
    service: Service, js: JetStreamContext, settings: Settings, reuse_port: bool, peers: Path | None
) -> RouterHandle:
    pools = UpstreamPools(CONNECT_TIMEOUT_SECONDS, KEEPALIVE_SECONDS, settings.router_response_timeout_seconds)
    table = RoutingTable(on_address_gone=pools.retire)
    secrets = await AuthSecrets.open(await SecretStore.open(js, Sealer.from_settings(settings)))
    service.on_stop(pools.close)
    service.on_stop(secrets.close)
    feed = Feed(table, secrets, js)
    await service.watch_latest(TRAFFIC_EVENTS, feed.on_event)
    await feed.resync()  # the whole table before the first request, not as the watch trickles in
    service.every(RESYNC_SECONDS, feed.resync)
    revisions = RevisionTotals()

    async def publish(report: RequestMetricsReported) -> None:
        revisions.fold(report)  # before any await: a scrape never sees a window in neither place
        await service.publish(report)

    # Each worker of each router reports its own windows: consumers add the reporters up.
    reporter = MetricsReporter(table.routes, publish, f"{socket.gethostname()}/{os.getpid()}")
    service.every(settings.router_metrics_interval_seconds, reporter.report)

    registry = CollectorRegistry()
    proxy = Proxy(table, pools, settings.router_trust_forwarded_for, registry, lambda: service.connected)
    registry.register(RouterCollector(table.routes, lambda: proxy.unrouted, revisions, settings.metrics_max_deployments))
    ProcessCollector(registry=registry)
    if peers is not None:
        worker_metrics = WorkerMetrics(registry, peers)
        await worker_metrics.start()
        service.on_stop(worker_metrics.close)
        proxy.exposition = worker_metrics.exposition
    server = Server(proxy.handle, CLIENT_KEEPALIVE_SECONDS)
    port = await server.start(settings.router_host, settings.router_port, reuse_port)
    # Registered last, so run first at stop: requests under way finish (within the kit's bound per step).
    grace = min(settings.stop_grace_seconds, STOP_STEP_TIMEOUT_SECONDS - 1)
    service.on_stop(lambda: server.close(grace))
    await service.start()  # health and metrics are served on the router's own port, under /_berth/
    return RouterHandle(f"http://{settings.router_host}:{port}", port, table, secrets, pools, feed, service.stop)


async def main(settings: Settings, stop: asyncio.Event, reuse_port: bool = False, peers: Path | None = None) -> None:
    handle = await start_router(settings, reuse_port, peers)
    await stop.wait()
    await handle.stop()
