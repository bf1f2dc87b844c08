"""Tracing and the operations endpoint every service exposes (`/healthz`, `/metrics`).

One trace follows a change through berth: the registry's API request span, the publish of its event
(the outbox keeps the request's context, `trace_headers`, and the relay sends it as the message's
headers), and every consumer and publish after it (FastStream's telemetry middleware carries
a W3C `traceparent` in the NATS headers; asyncio tasks copy the context they are created in).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import libs.prom  # noqa: F401  (every service's /metrics without `_created` series)


def configure_tracing(service: str) -> None:
    """Install a tracer provider naming the service, exporting spans as the standard variables say:
    OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, the console
    (stdout) when OTEL_TRACES_EXPORTER=console. Without either nothing is exported, but the trace
    context still propagates through every service."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    name = f"berth-{service.replace('_', '-')}"  # as the services call themselves on the bus: berth-spec-registry
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in _exporters(os.environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))  # flushed at exit by the provider
    trace.set_tracer_provider(provider)


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        # Imported only when used: it brings requests and protobuf along.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())  # reads the endpoint, headers and timeout from OTEL_*
    if "console" in {name.strip() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")}:
        exporters.append(ConsoleSpanExporter())
    return exporters


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, ...), to keep with deferred work."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def ops_routes(is_healthy: Callable[[], bool]) -> list[web.RouteDef]:
    async def healthz(_: web.Request) -> web.Response:
        healthy = is_healthy()
        return web.json_response({"healthy": healthy}, status=200 if healthy else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]


async def serve_ops(host: str, port: int, is_healthy: Callable[[], bool]) -> web.AppRunner:
    """Serve /healthz and /metrics on their own port (port 0 picks a free one)."""
    app = web.Application()
    app.add_routes(ops_routes(is_healthy))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
