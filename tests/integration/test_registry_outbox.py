"""The transactional outbox across a crash: the registry runs as its own process and is killed
(test-only fault hook) right after committing a spec, or right after publishing its event. After a
restart the SpecApplied event is in BERTH_SPECS exactly once and the deployment is stored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from libs.bus import all_events
from libs.events import SpecApplied
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
