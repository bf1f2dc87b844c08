"""Wiring of the router: bus, routing table, HTTP server, metrics reporter; `start_router` starts it
in-process (tests, bench) and `main` is the service process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector

from libs.bus import ensure_streams, make_broker
from libs.config import Settings
from libs.logging import get_logger
from libs.secrets import SecretStore
from services.router.handlers import Feed, subscribe
from services.router.metrics import RouterCollector, report_metrics
from services.router.proxy import Proxy
from services.router.server import Server
from services.router.table import RoutingTable
from services.router.upstream import UpstreamPools

log = get_logger("router")

CONNECT_TIMEOUT_SECONDS = 5.0
KEEPALIVE_SECONDS = 30.0  # an idle connection to a replica is closed after this
CLIENT_KEEPALIVE_SECONDS = 75.0  # and an idle connection from a client after this
SECRET_REFRESH_SECONDS = 30.0  # a rotated basic-auth key takes effect within this


@dataclass
class RouterHandle:
    url: str  # http://host:port
    port: int
    table: RoutingTable
    _stop: Callable[[], Awaitable[None]]

    async def stop(self) -> None:
        await self._stop()


async def start_router(settings: Settings) -> RouterHandle:
    """Connect to the bus, rebuild the routing table, then serve on router_host:router_port."""
    table = RoutingTable()
    feed = Feed(table)
    broker = make_broker(settings.resolved_nats_url, "router", settings.nats_security())
    subscribe(broker, feed)
    await broker.connect()
    js = broker.connection.jetstream()
    await ensure_streams(js)
    feed.secrets = await SecretStore.open(js)
    await broker.start()
    await feed.rebuild(js)

    pools = UpstreamPools(CONNECT_TIMEOUT_SECONDS, KEEPALIVE_SECONDS, settings.router_response_timeout_seconds)
    registry = CollectorRegistry()
    proxy = Proxy(table, pools, settings.router_trust_forwarded_for, registry, lambda: broker.connection.is_connected)
    registry.register(RouterCollector(table.routes, lambda: proxy.unrouted))
    ProcessCollector(registry=registry)
    server = Server(proxy.handle, CLIENT_KEEPALIVE_SECONDS)
    port = await server.start(settings.router_host, settings.router_port)

    stopping = asyncio.Event()
    reporter = asyncio.create_task(
        report_metrics(table.routes, broker, settings.router_metrics_interval_seconds, stopping)
    )
    auth_refresher = asyncio.create_task(_every(SECRET_REFRESH_SECONDS, feed.refresh_auth, stopping))
    log.info("router serving", host=settings.router_host, port=port, deployments=len(table.by_key))

    async def stop() -> None:
        stopping.set()
        await server.close(settings.stop_grace_seconds)
        with contextlib.suppress(Exception):
            await asyncio.gather(reporter, auth_refresher)
        await pools.close()
        await broker.stop()

    return RouterHandle(f"http://{settings.router_host}:{port}", port, table, stop)


async def _every(seconds: float, job: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
        if stop.is_set():
            return
        try:
            await job()
        except Exception:  # the bus being away must not end the loop
            log.warning("periodic job failed", job=getattr(job, "__name__", repr(job)), exc_info=True)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_router(settings)
    await stop.wait()
    await handle.stop()
