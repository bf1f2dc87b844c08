"""Wiring of the integrations service with the service kit: bus, the newest spec, aliases and outcomes
of every deployment read back on start, the spec and alias subscribers, the periodic resync (retries), ops endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.js.api import DeliverPolicy

from libs.bus import (
    ALIAS_EVENTS,
    CONTROL,
    DURABLE_INTEGRATIONS_ALIASES,
    DURABLE_INTEGRATIONS_RETRIES,
    DURABLE_INTEGRATIONS_SPECS,
    INTEGRATIONS_EVENTS,
    RETRY_REQUESTS,
    SPEC_EVENTS,
    SPECS,
    latest_per_subject,
)
from libs.config import Settings
from libs.events import DeploymentAliasSet, DeploymentDeleted, IntegrationsRetryRequested, SpecApplied
from libs.kit import Service
from libs.logging import get_logger
from libs.sealing import Sealer
from libs.secrets import SecretStore
from services.integrations.cache import Cache
from services.integrations.materialise import Materialiser
from services.integrations.running import contents_in_use

log = get_logger(__name__)


@dataclass
class IntegrationsHandle:
    service: Service
    materialiser: Materialiser

    async def stop(self) -> None:
        await self.service.stop()


async def start_integrations(settings: Settings) -> IntegrationsHandle:
    service = Service("integrations", settings)
    js = await service.connect()
    secrets = await SecretStore.open(js, Sealer.from_settings(settings))
    materialiser = Materialiser(
        Cache(settings.resolved_integrations_dir), secrets, service.publish,
        max_bytes=settings.integrations_cache_max_bytes, in_use=lambda: contents_in_use(js),
        host_volumes=settings.runtime == "local",
        concurrent_fetches=settings.integrations_concurrent_fetches,
    )  # fmt: skip
    materialiser.rebuild(
        await latest_per_subject(js, SPEC_EVENTS), await latest_per_subject(js, INTEGRATIONS_EVENTS),
        aliases=await latest_per_subject(js, ALIAS_EVENTS),
    )  # fmt: skip
    service.subscribe(
        SPEC_EVENTS,
        stream=SPECS,
        durable=DURABLE_INTEGRATIONS_SPECS,
        events=(SpecApplied, DeploymentDeleted),
        handler=materialiser.on_spec,
    )
    service.subscribe(  # an aliased version runs beside the newest: its revision needs its integrations too
        ALIAS_EVENTS, stream=SPECS, durable=DURABLE_INTEGRATIONS_ALIASES, events=(DeploymentAliasSet,),
        handler=materialiser.on_spec, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )  # fmt: skip
    service.subscribe(  # when first created, only new ones: an old request has had its answer
        RETRY_REQUESTS, stream=CONTROL, durable=DURABLE_INTEGRATIONS_RETRIES, events=(IntegrationsRetryRequested,),
        handler=materialiser.retry_now, deliver_policy=DeliverPolicy.NEW,
    )  # fmt: skip
    service.every(settings.reconcile_interval_seconds, materialiser.resync, name="resync", at_start=True)
    service.on_stop(materialiser.close)
    await service.start(ops_port=settings.integrations_ops_port)
    log.info("integrations started", deployments=materialiser.held()["deployments"])
    return IntegrationsHandle(service, materialiser)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_integrations(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
