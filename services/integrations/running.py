"""Which cached contents running revisions use: the revisions listed in each deployment's newest
traffic assignment (the scheduler's, serving or starting), mapped to the contents their newest
IntegrationsReady names. The cache's eviction never removes these."""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext

from libs.bus import INTEGRATIONS_EVENTS, TRAFFIC_EVENTS, latest_per_subject
from libs.events import IntegrationsReady, TrafficAssigned


async def contents_in_use(js: JetStreamContext) -> set[Path]:
    running = {
        (event.deployment_id, target.revision_id)
        for event in await latest_per_subject(js, TRAFFIC_EVENTS)
        if isinstance(event, TrafficAssigned) and not event.deleted
        for target in event.targets
    }
    return {
        Path(integration.local_path)
        for event in await latest_per_subject(js, INTEGRATIONS_EVENTS)
        if isinstance(event, IntegrationsReady) and (event.deployment_id, event.revision_id) in running
        for integration in event.integrations
    }
