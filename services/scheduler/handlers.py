"""Bus subscribers of the scheduler, wired with the service kit: each handler takes typed events; the
kit decodes, acknowledges after the handler returns, and redelivers or dead-letters on errors. A
reconcile never raises into a handler: a failed one is requeued by the reconciler itself.

- spec events (SPECS, durable scheduler-specs): take the new desired state, reconcile the deployment.
- scale decisions (SCALE, durable scheduler-scale): compose the desired count again, reconcile.
- aliases (SPECS `<id>.alias.<alias>`, durable scheduler-aliases): which versions keep running and
  what `@<alias>` resolves to; reconcile.
- promotions (SPECS `<id>.promote`, durable scheduler-promotions): a canary or blue-green update ends now.
- health (HEALTH, durable scheduler-health): readiness moves rollouts on and changes the assignment.
- restart requests (CONTROL, durable scheduler-restarts): restart the replica through the runtime.
- integrations (INTEGRATIONS, durable scheduler-integrations): a revision's integrations are ready
  (its replicas may start) or failed (they stay unstarted, status says why).
- request metrics (METRICS, an ordered watch, not durable: only windows from now on matter): a canary
  with analysis counts them and is rolled back when it fails a bound.
- logs RPC (core NATS request/reply, queue group: several schedulers would share it; not a stream).
"""

from __future__ import annotations

from typing import Any

from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from libs.bus import (
    ALIAS_EVENTS,
    CONTROL,
    DURABLE_SCHEDULER_ALIASES,
    DURABLE_SCHEDULER_PROMOTIONS,
    DURABLE_SCHEDULER_HEALTH,
    DURABLE_SCHEDULER_INTEGRATIONS,
    DURABLE_SCHEDULER_RESTARTS,
    DURABLE_SCHEDULER_SCALE,
    DURABLE_SCHEDULER_SPECS,
    HEALTH,
    HEALTH_EVENTS,
    INTEGRATIONS,
    INTEGRATIONS_EVENTS,
    LOGS_RPC,
    PROMOTE_EVENTS,
    REQUEST_METRICS,
    RESTART_REQUESTS,
    SCALE,
    SCALE_EVENTS,
    SPEC_EVENTS,
    SPECS,
)
from libs.events import (
    DeploymentAliasSet,
    DeploymentDeleted,
    DeploymentPromoted,
    DeploymentScaled,
    IntegrationsEvent,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    RequestMetricsReported,
    Event,
    SpecApplied,
)
from libs.kit import Service
from libs.logging import bind
from libs.runtime.base import Runtime
from services.scheduler import logs
from services.scheduler.reconcile import Reconciler

LOGS_QUEUE_GROUP = "scheduler"
# Spec events of different deployments are handled side by side (a replacement waits for old
# replicas to drain); the reconciler serialises those of one deployment.
SPEC_WORKERS = 8


def register_handlers(service: Service, reconciler: Reconciler, runtime: Runtime) -> None:
    async def on_spec_event(event: SpecApplied | DeploymentDeleted) -> None:
        bind(deployment_id=event.deployment_id, spec_id=getattr(event, "spec_id", None))
        reconciler.spec_event(event)
        await reconciler.reconcile_logged(event.deployment_id)  # also for an old version: level-triggered

    async def on_scale_decided(event: DeploymentScaled) -> None:
        bind(deployment_id=event.deployment_id)
        if reconciler.scale_decided(event):
            await reconciler.reconcile_logged(event.deployment_id)

    async def on_alias_set(event: DeploymentAliasSet) -> None:
        bind(deployment_id=event.deployment_id)
        if reconciler.alias_set(event):
            await reconciler.reconcile_logged(event.deployment_id)

    async def on_promoted(event: DeploymentPromoted) -> None:
        bind(deployment_id=event.deployment_id)
        if reconciler.promoted(event):
            await reconciler.reconcile_logged(event.deployment_id)

    async def on_health_changed(event: ReplicaHealthChanged) -> None:
        if reconciler.health_changed(event):
            reconciler.kick(event.deployment_id)

    async def on_integrations(event: IntegrationsEvent) -> None:
        bind(deployment_id=event.deployment_id)
        if reconciler.integrations_event(event):
            await reconciler.reconcile_logged(event.deployment_id)

    async def on_restart_requested(event: ReplicaRestartRequested) -> None:
        bind(deployment_id=event.deployment_id, replica_id=event.replica_id)
        await reconciler.restart(event)

    # Push consumers, though they do not scale out: one scheduler owns the runtime's replicas (a second
    # would fight it), and push delivery keeps apply -> process start near 10 ms. On first creation
    # they start from the newest per subject: the snapshot read at start has the rest.
    latest = DeliverPolicy.LAST_PER_SUBJECT
    service.subscribe(
        SPEC_EVENTS, stream=SPECS, durable=DURABLE_SCHEDULER_SPECS, events=(SpecApplied, DeploymentDeleted),
        handler=on_spec_event, deliver_policy=latest, max_workers=SPEC_WORKERS,
    )  # fmt: skip
    service.subscribe(
        SCALE_EVENTS, stream=SCALE, durable=DURABLE_SCHEDULER_SCALE, events=(DeploymentScaled,),
        handler=on_scale_decided, deliver_policy=latest,
    )  # fmt: skip
    service.subscribe(
        ALIAS_EVENTS, stream=SPECS, durable=DURABLE_SCHEDULER_ALIASES, events=(DeploymentAliasSet,),
        handler=on_alias_set, deliver_policy=latest,
    )  # fmt: skip
    service.subscribe(
        PROMOTE_EVENTS, stream=SPECS, durable=DURABLE_SCHEDULER_PROMOTIONS, events=(DeploymentPromoted,),
        handler=on_promoted, deliver_policy=latest,
    )  # fmt: skip
    service.subscribe(
        HEALTH_EVENTS, stream=HEALTH, durable=DURABLE_SCHEDULER_HEALTH, events=(ReplicaHealthChanged,),
        handler=on_health_changed, deliver_policy=latest,
    )  # fmt: skip
    service.subscribe(
        INTEGRATIONS_EVENTS, stream=INTEGRATIONS, durable=DURABLE_SCHEDULER_INTEGRATIONS,
        events=(IntegrationsReady, IntegrationsFailed, IntegrationsProgress), handler=on_integrations, deliver_policy=latest,
    )  # fmt: skip
    service.subscribe(  # when first created, only new ones: old requests are about processes long gone
        RESTART_REQUESTS, stream=CONTROL, durable=DURABLE_SCHEDULER_RESTARTS, events=(ReplicaRestartRequested,),
        handler=on_restart_requested, deliver_policy=DeliverPolicy.NEW,
    )  # fmt: skip

    @service.broker.subscriber(LOGS_RPC, queue=LOGS_QUEUE_GROUP)
    async def on_logs_requested(body: dict[str, Any]) -> dict[str, Any]:
        return await logs.reply(runtime, body)


async def watch_request_metrics(service: Service, reconciler: Reconciler) -> None:
    """The router's windows, for canary analysis; a canary that fails a bound is reconciled at once."""

    async def on_request_metrics(event: Event) -> None:
        if isinstance(event, RequestMetricsReported) and reconciler.metrics_reported(event):
            reconciler.kick(event.deployment_id)

    await service.watch_latest(REQUEST_METRICS, on_request_metrics)
