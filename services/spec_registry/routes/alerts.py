"""Alerts (the alerting service's AlertChanged, as the registry's read model holds them) and the
project's webhooks that receive them (docs/monitoring.md, Alerts)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Response

from libs.events import AlertState
from libs.spec import DeploymentSpec
from services.spec_registry.alerts import of_event, of_rule
from services.spec_registry.auth import Caller
from services.spec_registry.problems import BadRequest, Invalid, NotFound, PayloadTooLarge, Unauthorized, responses
from services.spec_registry.routes.deps import RegistryDep
from services.spec_registry.schemas import AlertList, WebhookList, WebhookOut, WebhookPut

router = APIRouter(prefix="/v1", responses=responses(Unauthorized, PayloadTooLarge, Invalid))
ACTIVE: tuple[AlertState, ...] = ("pending", "firing")


@router.get("/alerts", tags=["alerts"])
async def list_alerts(
    caller: Caller,
    registry: RegistryDep,
    state: Annotated[
        AlertState | None, Query(description="Only alerts in this state; without it, the active ones (pending, firing).")
    ] = None,
) -> AlertList:
    """The project's alerts, by deployment and rule."""
    wanted = (state,) if state is not None else ACTIVE
    found = [of_event(e) for e in registry.alerts.of_project(caller.project) if e.state in wanted]
    return AlertList(items=sorted(found, key=lambda a: (a.deployment, a.name)))


@router.get("/deployments/{ref}/alerts", tags=["alerts"], responses=responses(NotFound))
async def deployment_alerts(ref: str, caller: Caller, registry: RegistryDep) -> AlertList:
    """Every alerting rule of the deployment's current spec, with its alert's state."""
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    spec, row = DeploymentSpec.model_validate(stored.spec), stored.row
    return AlertList(
        items=[of_rule(rule, registry.alerts.get(row.id, rule.slug), row.id, row.name, row.slug) for rule in spec.alerts]
    )


@router.get("/webhooks", tags=["webhooks"])
async def list_webhooks(caller: Caller, registry: RegistryDep) -> WebhookList:
    """The project's webhooks: each URL with the reference to its signing key (never the key)."""
    rows = await asyncio.to_thread(registry.repo.webhooks, caller.project)
    return WebhookList(items=[WebhookOut.model_validate(row, from_attributes=True) for row in rows])


@router.put("/webhooks", tags=["webhooks"], responses=responses(BadRequest))
async def put_webhook(body: WebhookPut, caller: Caller, registry: RegistryDep, response: Response) -> WebhookOut:
    """Add a webhook (201), or give an existing URL another key (200). Every firing and resolved alert of
    the project's deployments is POSTed to each webhook, signed with its key."""
    row, outcome = await registry.set_webhook(caller.project, body.url, body.secret)
    response.status_code = 201 if outcome == "created" else 200
    return WebhookOut.model_validate(row, from_attributes=True)


@router.delete("/webhooks", status_code=204, tags=["webhooks"], responses=responses(NotFound))
async def delete_webhook(
    caller: Caller, registry: RegistryDep, url: Annotated[str, Query(max_length=2048, description="The webhook's URL.")]
) -> Response:
    await registry.delete_webhook(caller.project, url)
    return Response(status_code=204)
