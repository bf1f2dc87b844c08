"""The service kit against a real nats-server: decode once, retry with delay, dead-letter poison
messages instead of redelivering them for ever, watch the newest state, and stop within a bound."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus import DEAD, SPEC_EVENTS, SPECS, TRAFFIC_EVENTS, publish
from libs.config import Settings
from libs.events import DeploymentDeleted, Event, TrafficAssigned
from libs.kit import DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER, RetryPolicy, Service
from tests.helpers import eventually


def deleted(deployment_id: str) -> DeploymentDeleted:
    return DeploymentDeleted(deployment_id=deployment_id, project="p", slug=deployment_id)


async def dead_letters(js: JetStreamContext) -> list[tuple[dict[str, str], bytes]]:
    sub = await js.pull_subscribe("berth.dead.v1.>", stream=DEAD.name)
    try:
        messages = await sub.fetch(batch=10, timeout=0.5)
    except TimeoutError:
        return []
    finally:
        await sub.unsubscribe()
    return [(dict(m.headers or {}), m.data) for m in messages]


async def test_a_failing_handler_is_retried_then_succeeds(settings: Settings, nc: Client) -> None:
    attempts: list[str] = []

    async def flaky(event: DeploymentDeleted) -> None:
        attempts.append(event.deployment_id)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    service = Service("kit-test", settings)
    await service.connect()
    retry = RetryPolicy(max_deliveries=5, first_delay_seconds=0.05)
    service.subscribe(SPEC_EVENTS, stream=SPECS, durable="kit-retry", events=(DeploymentDeleted,), handler=flaky, retry=retry)
    await service.start()
    try:
        await publish(service.broker, deleted("d1"))
        await eventually(lambda: len(attempts) == 3, what="three attempts")
        assert await dead_letters(nc.jetstream()) == []
    finally:
        await service.stop()


async def test_poison_and_undecodable_messages_go_to_the_dead_letter_stream(settings: Settings, nc: Client) -> None:
    handled: list[str] = []

    async def handler(event: DeploymentDeleted) -> None:
        if event.deployment_id == "poison":
            raise ValueError("cannot handle this one")
        handled.append(event.deployment_id)

    service = Service("kit-test", settings)
    await service.connect()
    retry = RetryPolicy(max_deliveries=2, first_delay_seconds=0.05)
    service.subscribe(SPEC_EVENTS, stream=SPECS, durable="kit-dead", events=(DeploymentDeleted,), handler=handler, retry=retry)
    await service.start()
    js = nc.jetstream()
    try:
        await publish(service.broker, deleted("poison"))
        await js.publish("berth.spec.v1.garbage", json.dumps({"kind": "no.such.kind"}).encode())
        await publish(service.broker, deleted("after"))
        await eventually(lambda: handled == ["after"], what="the message after the poison one is handled")
        letters = await eventually(lambda: _two(dead_letters(js)), what="two dead letters")
        reasons = {headers[DEAD_SUBJECT_HEADER]: headers[DEAD_REASON_HEADER] for headers, _ in letters}
        assert reasons["berth.spec.v1.poison"] == "ValueError after 2 deliveries"
        assert reasons["berth.spec.v1.garbage"].startswith("undecodable")
    finally:
        await service.stop()


async def _two(letters_coro: object) -> list[tuple[dict[str, str], bytes]] | None:
    letters = await letters_coro  # type: ignore[misc]
    return letters if len(letters) == 2 else None


async def test_watch_latest_delivers_the_newest_per_subject_then_new_ones(settings: Settings) -> None:
    service = Service("kit-test", settings)
    await service.connect()

    def assignment(deployment_id: str, generation: int) -> TrafficAssigned:
        return TrafficAssigned(deployment_id=deployment_id, project="p", slug=deployment_id, generation=generation, spec_version=1)

    for generation in (1, 2, 3):
        await service.publish(assignment("a", generation))
    await service.publish(assignment("b", 1))
    seen: list[tuple[str, int]] = []

    async def record(event: Event) -> None:
        assert isinstance(event, TrafficAssigned)
        seen.append((event.deployment_id, event.generation))

    await service.watch_latest(TRAFFIC_EVENTS, record)
    await service.start()
    try:
        await eventually(lambda: seen == [("a", 3), ("b", 1)], what="only the newest of each deployment")
        await service.publish(assignment("a", 4))
        await eventually(lambda: seen[-1] == ("a", 4), what="a new assignment")
    finally:
        await service.stop()


async def test_watch_latest_keeps_delivering_a_backlog_larger_than_the_flow_control_window(settings: Settings) -> None:
    # Enough state (6 MB) that the server asks for flow control while the handler is behind; with
    # nats-py's flow-control task replaced (libs/kit.py) the watch must not stall there.
    service = Service("kit-test", settings)
    await service.connect()
    count = 1500

    def assignment(i: int, generation: int) -> TrafficAssigned:
        return TrafficAssigned(deployment_id=f"d{i}", project="p", slug=f"d{i}", name="x" * 4000,
                               generation=generation, spec_version=1)  # fmt: skip

    for first in range(0, count, 100):
        await asyncio.gather(*(service.publish(assignment(i, 1)) for i in range(first, first + 100)))
    seen: dict[str, int] = {}

    async def record(event: Event) -> None:
        assert isinstance(event, TrafficAssigned)
        await asyncio.sleep(0.001)  # a handler slower than the network
        seen[event.deployment_id] = event.generation

    await service.watch_latest(TRAFFIC_EVENTS, record)
    await service.start()
    try:
        await eventually(lambda: len(seen) == count, timeout=60, what=f"the state of all {count} deployments")
        await service.publish(assignment(0, 2))
        await eventually(lambda: seen["d0"] == 2, what="a new assignment after the backlog")
    finally:
        await service.stop()


async def test_periodic_jobs_run_and_stop_is_bounded(settings: Settings) -> None:
    runs: list[int] = []

    async def job() -> None:
        runs.append(1)

    service = Service("kit-test", settings)
    await service.connect()
    service.every(0.05, job, at_start=True)
    service.on_stop(job)
    await service.start(ops_port=0)
    assert service.ops_port
    await eventually(lambda: len(runs) >= 3, what="the job runs periodically")
    await service.stop()
    after = len(runs)
    assert after >= 4  # the stop callback ran once more
