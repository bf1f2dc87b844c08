"""The transactional outbox across a crash: the registry runs as its own process and is killed
(test-only fault hook) right after committing a spec, or right after publishing its event. After a
restart the SpecApplied event is in BERTH_SPECS exactly once and the deployment is stored. And
one row that cannot be published never holds up the others; secret lookups cost no consumer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlmodel import Session

from libs.bus import SECRETS_BUCKET, all_events
from libs.events import SpecApplied
from libs.spec import DeploymentSpec
from libs.store import OutboxRow, create_engine
from services.spec_registry.repository import Repository, submitted
from tests.helpers import eventually
from tests.servers.registry import RegistryProcess

SPEC = {"name": "crash test", "image": "python:3.11", "resources": {"ports": [8000]}}


@pytest.fixture
def registry(tmp_path: Path, nats_url: str) -> Iterator[RegistryProcess]:
    process = RegistryProcess(tmp_path, nats_url)
    try:
        yield process
    finally:
        process.stop()


async def spec_events(js: JetStreamContext) -> list[SpecApplied]:
    return [e for e in await all_events(js, "berth.spec.v1.*") if isinstance(e, SpecApplied)]


@pytest.mark.parametrize("fault", ["crash_after_commit", "crash_after_publish"])
async def test_spec_event_is_published_exactly_once_across_a_crash(
    registry: RegistryProcess, js: JetStreamContext, fault: str
) -> None:
    registry.start(fault=fault)
    async with registry.client() as api:
        # After a commit the process dies before answering; after a publish it may have answered.
        with contextlib.suppress(httpx.TransportError):
            await api.post("/v1/deployments", json=SPEC)
    assert registry.process is not None and registry.process.wait(20) == 137
    published_before_restart = len(await spec_events(js))
    assert published_before_restart == (0 if fault == "crash_after_commit" else 1)

    registry.start()
    async with registry.client() as api:
        stored = (await api.get("/v1/deployments/crash-test")).json()

        async def outbox_drained() -> bool:
            metrics = (await api.get("/metrics")).text
            return "berth_registry_outbox_lag 0.0" in metrics

        await eventually(outbox_drained, what="outbox drained after the restart")

    events = await spec_events(js)
    subject = f"berth.spec.v1.{stored['deployment_id']}"
    info = await js.stream_info("BERTH_SPECS", subjects_filter=subject)
    assert info.state.messages == 1
    assert [(e.deployment_id, e.spec_id, e.event_id) for e in events] == [
        (stored["deployment_id"], stored["spec_id"], stored["spec_id"])
    ]


async def test_restart_keeps_data_and_admin_token(registry: RegistryProcess) -> None:
    registry.start()
    async with registry.client() as api:
        created = (await api.post("/v1/deployments", json=SPEC)).json()
    registry.stop()
    assert registry.process is not None and registry.process.returncode == 0
    token = (registry.data_dir / "token").read_text()

    registry.start()
    async with registry.client() as api:
        assert (await api.get("/v1/deployments/crash-test")).json()["spec_id"] == created["spec_id"]
    assert (registry.data_dir / "token").read_text() == token


async def test_event_published_after_a_crash_keeps_the_trace_of_its_request(
    registry: RegistryProcess, js: JetStreamContext
) -> None:
    """The outbox row keeps the request's trace context: published only after the restart, the
    SpecApplied still carries a traceparent of the trace the API caller started."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    registry.start(fault="crash_after_commit")
    async with registry.client() as api:
        with contextlib.suppress(httpx.TransportError):
            await api.post("/v1/deployments", json=SPEC, headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert registry.process is not None and registry.process.wait(20) == 137
    assert (await js.stream_info("BERTH_SPECS")).state.messages == 0

    registry.start()

    async def published() -> int:
        return (await js.stream_info("BERTH_SPECS")).state.messages

    await eventually(published, what="SpecApplied published after the restart")
    message = await js.get_msg("BERTH_SPECS", seq=1)
    assert message.headers is not None
    assert message.headers["traceparent"].split("-")[1] == trace_id


async def test_an_event_the_bus_cannot_carry_is_set_aside_and_the_rest_flow(
    registry: RegistryProcess, js: JetStreamContext, nc: Client
) -> None:
    """A spec committed before the size limit (here: written past the API) whose event exceeds the
    bus's max_payload, and a row no berth event decodes from, are set aside with their reasons; the
    change committed after them is published, and health and metrics say what was set aside."""
    registry.start()
    async with registry.client() as api:
        await api.get("/healthz")
    huge = DeploymentSpec.model_validate({**SPEC, "name": "huge", "resources": {"ports": [8000] * 700_000}})
    engine = create_engine(f"sqlite:///{registry.data_dir / 'berth.db'}")
    try:
        repo = Repository(engine)
        repo.create_deployment("default", huge)
        with Session(engine) as session, session.begin():
            session.add(OutboxRow(msg_id="broken", subject="berth.spec.v1.x", payload={"kind": "NoSuchEvent"}))
    finally:
        engine.dispose()
    assert len(json.dumps(submitted(huge))) > nc.max_payload

    async with registry.client() as api:
        created = (await api.post("/v1/deployments", json=SPEC)).json()

        async def published() -> list[SpecApplied]:
            return [e for e in await spec_events(js) if e.deployment_id == created["deployment_id"]]

        await eventually(published, what="the change after the unpublishable ones published")

        # Events of different deployments are relayed concurrently: the later change may reach the
        # bus before the unpublishable ones are recorded as set aside, and before it is marked published.
        async def both_set_aside() -> dict:
            health = (await api.get("/healthz")).json()
            return health if health["outbox_set_aside"] == 2 and health["outbox_pending"] == 0 else {}

        health = await eventually(both_set_aside, what="both unpublishable events set aside")
        metrics = (await api.get("/metrics")).text
    assert health["healthy"] and health["outbox_set_aside"] == 2 and health["outbox_pending"] == 0
    assert "berth_registry_outbox_set_aside 2.0" in metrics
    assert 'berth_registry_events_set_aside_total{kind="too-large"} 1.0' in metrics
    assert 'berth_registry_events_set_aside_total{kind="undecodable"} 1.0' in metrics
    assert [e.name for e in await spec_events(js)] == ["crash test"]


async def test_secret_lookups_leave_no_consumer_behind(registry: RegistryProcess, js: JetStreamContext) -> None:
    """Each lookup of a project's secret names used to list the KV bucket's keys, leaving a JetStream
    consumer for minutes; a thousand lookups then broke every secret operation of every project."""
    registry.start()
    document = {**SPEC, "env": [{"name": "TOKEN", "value": "secret:token"}]}
    async with registry.client() as api:
        assert (await api.put("/v1/secrets/token", json={"value": "v"})).status_code == 204
        before = (await js.stream_info("KV_berth_secrets")).state.consumer_count
        for _ in range(50):
            assert (await api.post("/v1/specs/validate", json=document)).status_code == 200
            assert (await api.get("/v1/secrets")).json()["names"] == ["token"]
        assert (await api.delete("/v1/secrets/token")).status_code == 204
        assert (await api.delete("/v1/secrets/token")).status_code == 404
    assert (await js.stream_info("KV_berth_secrets")).state.consumer_count == before


async def test_secrets_stored_before_the_index_are_indexed_at_start(
    registry: RegistryProcess, js: JetStreamContext
) -> None:
    kv = await js.create_key_value(bucket=SECRETS_BUCKET, history=1)
    await kv.put("default.legacy", b"value")
    registry.start()
    async with registry.client() as api:
        assert (await api.get("/v1/secrets")).json()["names"] == ["legacy"]
