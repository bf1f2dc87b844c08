from __future__ import annotations

from nats.js import JetStreamContext

from libs.bus import latest_per_subject, make_broker, publish
from libs.events import DeploymentDeleted, SpecApplied
from libs.spec import load_spec

SPEC = "name: iris\nimage: python:3.11\nresources: {ports: [8000], replicas: 2}\n"


def applied(deployment_id: str, version: int) -> SpecApplied:
    spec = load_spec(SPEC)
    return SpecApplied(
        deployment_id=deployment_id, project="default", slug=spec.slug, name=spec.name,
        spec_id=f"{deployment_id}-{version}", spec_version=version, spec=spec,
    )


async def test_snapshot_holds_latest_event_per_deployment(nats_url: str, js: JetStreamContext) -> None:
    broker = make_broker(nats_url, "test")
    await broker.start()
    try:
        await publish(broker, applied("d1", 1))
        await publish(broker, applied("d1", 2))
        await publish(broker, applied("d2", 1))
        await publish(broker, DeploymentDeleted(deployment_id="d2", project="default", slug="iris"))
        state = await latest_per_subject(js, "berth.spec.v1.*")
    finally:
        await broker.stop()
    assert [(type(e).__name__, e.deployment_id) for e in state] == [
        ("SpecApplied", "d1"), ("DeploymentDeleted", "d2"),
    ]
    assert isinstance(state[0], SpecApplied) and state[0].spec_version == 2


async def test_publish_is_deduplicated_by_event_id(nats_url: str, js: JetStreamContext) -> None:
    broker = make_broker(nats_url, "test")
    await broker.start()
    try:
        event = applied("d1", 1)
        await publish(broker, event)
        await publish(broker, event)
    finally:
        await broker.stop()
    info = await js.stream_info("BERTH_SPECS")
    assert info.state.messages == 1
