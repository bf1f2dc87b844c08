"""One trace follows a spec from the API through every service.

The registry, scheduler and health-monitor run as their own processes (as under `berth up`), with
OTLP export to a collector stub of the test's own. A spec is POSTed with a W3C `traceparent`; the raw
NATS messages of what follows (SpecApplied, the replica's ReplicaStarted, its first
ReplicaHealthChanged, the deployment's Ready status) each carry a traceparent of that same trace, the
services export their spans of it, and the registry's log line of the request names the trace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from libs.events import (
    DeploymentStatusChanged,
    Event,
    ReplicaHealthChanged,
    ReplicaStarted,
    SpecApplied,
    decode_event,
)
from libs.natsd import free_port, wait_for_port
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
UPDATE_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
UPDATE_TRACEPARENT = f"00-{UPDATE_TRACE_ID}-b7ad6b7169203331-01"
SPEC = {
    "name": "traced",
    "image": "python:3.11",
    "command": [sys.executable, "-m", "http.server", "$PORT", "--bind", "127.0.0.1"],
    "resources": {"ports": [8000], "replicas": 1},
}


def trace_id_of(message: Msg) -> str | None:
    """The trace id of the message's W3C traceparent header (version-traceid-spanid-flags)."""
    traceparent = (message.headers or {}).get("traceparent")
    return traceparent.split("-")[1] if traceparent else None


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    parent_span_id: str


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: what the services export."""

    port: int
    spans: list[ExportedSpan] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            attributes["service.name"], span.name, span.trace_id.hex(), span.parent_span_id.hex()
                        )
                    )
        return web.Response(content_type="application/x-protobuf")

    def services_in(self, trace_id: str) -> set[str]:
        return {span.service for span in self.spans if span.trace_id == trace_id}


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    app = web.Application()
    found = Collector(free_port())
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


@dataclass
class Services:
    api_port: int
    data_dir: Path
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def api(self) -> httpx.AsyncClient:
        token = (self.data_dir / "token").read_text().strip()
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def log_of(self, service: str) -> str:
        return (self.logs / f"{service}.log").read_text(errors="replace")


@pytest.fixture
def services(tmp_path: Path, nats_url: str, collector: Collector) -> Iterator[Services]:
    found = Services(free_port(), tmp_path / "berth", tmp_path / "logs")
    found.logs.mkdir()
    env = {
        **os.environ,
        "BERTH_DATA_DIR": str(found.data_dir),
        "BERTH_NATS_URL": nats_url,
        "BERTH_API_PORT": str(found.api_port),
        "BERTH_SCHEDULER_OPS_PORT": str(free_port()),
        "BERTH_HEALTH_MONITOR_OPS_PORT": str(free_port()),
        # No periodic reconcile during the test: each event here is a consequence of the request.
        "BERTH_RECONCILE_INTERVAL_SECONDS": "300",
        "BERTH_STOP_REPLICAS_ON_EXIT": "true",
        "PYTHONPATH": str(REPO),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between exports, so the test needs not wait 5 s
    }
    for name in ("BERTH_TOKEN", "BERTH_DATABASE_URL", "BERTH_FAULT_INJECT", "OTEL_TRACES_EXPORTER"):
        env.pop(name, None)
    try:
        for service in ("spec_registry", "scheduler", "health_monitor"):
            with open(found.logs / f"{service}.log", "ab") as log:
                found.processes[service] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{service}"], env=env, cwd=REPO, stdout=log, stderr=log
                )
        wait_for_port("127.0.0.1", found.api_port, timeout=30)
        yield found
    finally:
        for process in reversed(found.processes.values()):
            process.send_signal(signal.SIGTERM)
        for process in found.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
async def messages(nc: Client) -> AsyncIterator[list[Msg]]:
    """Every berth message, raw (headers included), in the order the bus delivered them."""
    received: list[Msg] = []

    async def record(message: Msg) -> None:
        received.append(message)

    subscription = await nc.subscribe("berth.>", cb=record)
    yield received
    await subscription.unsubscribe()


def first(messages: list[Msg], kind: type[Event], **fields: object) -> Msg:
    """The first message of an event of `kind` with these fields (AssertionError until there is one)."""
    for message in messages:
        if not message.subject.startswith("berth.rpc."):
            event = decode_event(json.loads(message.data))
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return message
    raise AssertionError(f"no {kind.__name__} with {fields} yet")


@pytest.mark.slow
async def test_one_trace_follows_a_spec_from_the_api_through_every_service(
    services: Services, messages: list[Msg], collector: Collector
) -> None:
    await eventually((services.data_dir / "token").exists, what="admin token written")
    async with services.api() as api:
        response = await api.post("/v1/deployments", json=SPEC, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 201, response.text
    deployment_id = response.json()["deployment_id"]

    applied = await eventually(lambda: first(messages, SpecApplied, deployment_id=deployment_id), what="SpecApplied")
    started = await eventually(
        lambda: first(messages, ReplicaStarted, deployment_id=deployment_id), what="ReplicaStarted"
    )
    replica_id = ReplicaStarted.model_validate_json(started.data).replica_id
    health = await eventually(
        lambda: first(messages, ReplicaHealthChanged, replica_id=replica_id), what="first ReplicaHealthChanged"
    )
    ready = await eventually(
        lambda: first(messages, DeploymentStatusChanged, deployment_id=deployment_id, phase="Ready"),
        timeout=30,
        what="status Ready",
    )
    assert [trace_id_of(m) for m in (applied, started, health, ready)] == [TRACE_ID] * 4

    # The services export their spans of that trace; the registry's request span continues the caller's.
    await eventually(
        lambda: collector.services_in(TRACE_ID) >= {"berth-spec-registry", "berth-scheduler", "berth-health-monitor"},
        what=f"spans of every service exported; got {collector.services_in(TRACE_ID)}",
    )
    request_span = next(s for s in collector.spans if s.name == "POST /v1/deployments")
    assert (request_span.trace_id, request_span.parent_span_id) == (TRACE_ID, CALLER_SPAN_ID)

    request_lines = [
        json.loads(line) for line in services.log_of("spec_registry").splitlines() if '"event": "request"' in line
    ]
    assert any(line.get("trace_id") == TRACE_ID and line.get("span_id") for line in request_lines)

    # An update (written in a worker thread, not the request's task) keeps its own request's trace.
    async with services.api() as api:
        response = await api.put(
            f"/v1/deployments/{deployment_id}",
            json={**SPEC, "env": [{"name": "V", "value": "2"}]},
            headers={"traceparent": UPDATE_TRACEPARENT, "If-Match": response.headers["ETag"]},
        )
    assert response.status_code == 200, response.text
    updated = await eventually(
        lambda: first(messages, SpecApplied, deployment_id=deployment_id, spec_version=2), what="the update's SpecApplied"
    )
    assert trace_id_of(updated) == UPDATE_TRACE_ID
