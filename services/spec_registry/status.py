"""Status read model: the scheduler's DeploymentStatusChanged events, newest per deployment, for the
API's Status answers. A durable consumer, acknowledged after the row is written."""

from __future__ import annotations

import asyncio

from faststream import AckPolicy
from faststream.nats import NatsBroker

from libs.bus import DURABLE_REGISTRY_STATUS, STATUS, STATUS_EVENTS
from libs.events import DeploymentStatusChanged
from services.spec_registry.repository import Repository


def subscribe_status(broker: NatsBroker, repo: Repository) -> None:
    @broker.subscriber(
        STATUS_EVENTS,
        stream=STATUS,
        durable=DURABLE_REGISTRY_STATUS,
        pull_sub=True,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_status_changed(event: DeploymentStatusChanged) -> None:
        await asyncio.to_thread(repo.save_status, event)
