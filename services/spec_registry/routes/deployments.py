"""Deployments: create, read, update (If-Match), scale, stop/start, rollback, delete, history,
status and logs. Every route is scoped to the caller's project; a deployment of another project
answers 404 like one that does not exist. A write that changes nothing answers 200 with
`unchanged: true`."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from libs.config import Settings
from libs.logcursor import MAX_CURSOR_CHARS, CursorInvalid, read_cursor
from libs.revision import revision_id
from libs.spec import DeploymentSpec, SpecError, scale_errors
from libs.store import SpecVersionRow
from services.spec_registry.auth import Caller
from services.spec_registry.pagination import DEFAULT_LIMIT, After, Limit, decode_cursor, paginate
from services.spec_registry.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    PreconditionRequired,
    StaleVersion,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    responses,
)
from services.spec_registry.registry import replaced_by, with_enabled
from services.spec_registry.repository import StoredDeployment
from services.spec_registry.scale import desired, holds
from services.spec_registry.routes.deps import (
    SPEC_BODY,
    RegistryDep,
    SettingsDep,
    SpecDocument,
)
from services.spec_registry.schemas import (
    AutoscalerDecision,
    Deployment,
    DeploymentList,
    History,
    LogPage,
    RollbackRequest,
    ScaleRequest,
    SpecVersion,
    Status,
    UserScale,
    Validation,
)

router = APIRouter(prefix="/v1", responses=responses(Unauthorized, PayloadTooLarge, Invalid))
READ = responses(NotFound)
WRITE = responses(NotFound, StaleVersion, Invalid)
JSON_WRITE = {**WRITE, **responses(BadRequest)}  # routes with a JSON body: 400 when it is not JSON


@router.post(
    "/specs/validate", tags=["specs"], openapi_extra=SPEC_BODY, responses=responses(Invalid, UnsupportedMediaType)
)
async def validate_spec(caller: Caller, registry: RegistryDep, document: SpecDocument) -> Validation:
    """Validate a spec (including its secret references) without storing anything."""
    await registry.check(caller.project, document)
    return Validation(valid=True)


@router.post(
    "/deployments",
    status_code=201,
    tags=["deployments"],
    openapi_extra=SPEC_BODY,
    responses=responses(Conflict, Invalid, UnsupportedMediaType),
)
async def create_deployment(
    caller: Caller, registry: RegistryDep, settings: SettingsDep, document: SpecDocument, response: Response
) -> Deployment:
    stored = await registry.create(caller.project, document)
    response.headers["Location"] = f"/v1/deployments/{stored.row.id}"
    return _answer(stored, settings, response)


@router.get("/deployments", tags=["deployments"], responses=responses(Forbidden))
async def list_deployments(
    caller: Caller,
    registry: RegistryDep,
    settings: SettingsDep,
    environment: Annotated[str | None, Query(description="development, staging or production")] = None,
    project: Annotated[str | None, Query(description="Another project's deployments (admin token only).")] = None,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
) -> DeploymentList:
    """By name; `next` is the cursor of the following page, null on the last."""
    if project is not None and project != caller.project and not caller.is_admin:
        raise Forbidden("only the admin token may list another project's deployments")
    after_name = decode_cursor(after, str)
    rows = await asyncio.to_thread(
        registry.repo.list_deployments, project or caller.project, environment, limit + 1, after_name
    )
    page, next_cursor = paginate(rows, limit, lambda stored: stored.row.name)
    return DeploymentList(items=[present(s, settings) for s in page], next=next_cursor)


@router.get("/deployments/{ref}", tags=["deployments"], responses=READ)
async def get_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """`ref` is the deployment_id or the slug."""
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return _answer(stored, settings, response)


@router.put(
    "/deployments/{ref}",
    tags=["deployments"],
    openapi_extra=SPEC_BODY,
    responses={**WRITE, **responses(Conflict, PreconditionRequired, UnsupportedMediaType)},
)
async def update_deployment(
    ref: str,
    caller: Caller,
    registry: RegistryDep,
    settings: SettingsDep,
    document: SpecDocument,
    response: Response,
    # Required (428 without it: problems.py); the OpenAPI document says so too.
    if_match: Annotated[str, Header(description='"<spec_id>" of the version this update is based on')],
) -> Deployment:
    if not if_match.strip():
        raise PreconditionRequired()
    stored = await registry.update(caller.project, ref, document, _etags(if_match))
    return _answer(stored, settings, response)


@router.post("/deployments/{ref}/scale", tags=["deployments"], responses=JSON_WRITE)
async def scale_deployment(
    ref: str, body: ScaleRequest, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """The user's scale decision; not a spec version. It holds until a spec version sets another
    resources.replicas than the current one (see `scale` and `status.desired_source`)."""
    current = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    if errors := scale_errors(_spec(current.spec), body.replicas):
        raise Invalid("the deployment cannot be scaled to this count", errors)
    stored = await registry.scale(caller.project, ref, body.replicas)
    return _answer(stored, settings, response)


@router.post("/deployments/{ref}/stop", tags=["deployments"], responses=WRITE)
async def stop_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    stored = await registry.change(caller.project, ref, with_enabled(False))
    return _answer(stored, settings, response)


@router.post("/deployments/{ref}/start", tags=["deployments"], responses=WRITE)
async def start_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    stored = await registry.change(caller.project, ref, with_enabled(True))
    return _answer(stored, settings, response)


@router.post("/deployments/{ref}/rollback", tags=["deployments"], responses=JSON_WRITE)
async def rollback_deployment(
    ref: str, body: RollbackRequest, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """A new version whose spec is that of `spec_version` (unchanged when it is the current spec)."""
    old = await asyncio.to_thread(registry.repo.spec_version, caller.project, ref, body.spec_version)
    stored = await registry.change(caller.project, ref, replaced_by(old.spec))
    return _answer(stored, settings, response)


@router.post("/deployments/{ref}/retry", status_code=202, tags=["deployments"], responses=READ)
async def retry_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """Fetch the deployment's failed integrations again now, not after the back-off (accepted: the
    integrations service acts on it; the status shows the outcome)."""
    stored = await registry.retry(caller.project, ref)
    return _answer(stored, settings, response)


@router.delete("/deployments/{ref}", status_code=204, tags=["deployments"], responses=READ)
async def delete_deployment(ref: str, caller: Caller, registry: RegistryDep) -> Response:
    await registry.delete(caller.project, ref)
    return Response(status_code=204)


@router.get("/deployments/{ref}/history", tags=["deployments"], responses=READ)
async def deployment_history(
    ref: str, caller: Caller, registry: RegistryDep, limit: Limit = DEFAULT_LIMIT, after: After = None
) -> History:
    """Newest first; `next` is the cursor of the following page, null on the last."""
    before_version = decode_cursor(after, int)
    rows = await asyncio.to_thread(registry.repo.history, caller.project, ref, limit + 1, before_version)
    versions, next_cursor = paginate(rows, limit, lambda version: version.version)
    return History(
        items=[_spec_version(v) for v in versions],
        next=next_cursor,
    )


@router.get("/deployments/{ref}/status", tags=["deployments"], responses=READ)
async def deployment_status(ref: str, caller: Caller, registry: RegistryDep) -> Status:
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return _status(stored, _spec(stored.spec))


@router.get("/deployments/{ref}/autoscaling/decision", tags=["deployments"], responses=READ)
async def autoscaler_decision(ref: str, caller: Caller, registry: RegistryDep) -> AutoscalerDecision:
    """The autoscaler's newest decision with its inputs; 404 while it has made none."""
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    decided = await registry.autoscaler_decision(stored.row.id)
    if decided is None:
        raise NotFound(f"the autoscaler has made no decision about deployment {ref} yet")
    return AutoscalerDecision(
        event_id=decided.event_id, decided_at=decided.occurred_at, replicas=decided.replicas, reason=decided.reason,
        spec_version=decided.spec_version, inputs=decided.inputs, decision=decided.decision,
    )


@router.get("/deployments/{ref}/logs", tags=["deployments"], responses={**READ, **responses(Unavailable)})
async def deployment_logs(
    ref: str,
    caller: Caller,
    registry: RegistryDep,
    replica: Annotated[str | None, Query(description="One replica's lines only.")] = None,
    tail: Annotated[int, Query(ge=0, le=10_000, description="Lines from the end to start with.")] = 100,
    since: Annotated[
        str | None, Query(max_length=MAX_CURSOR_CHARS, description="The `next` cursor of an earlier answer.")
    ] = None,
) -> LogPage:
    if since:
        try:
            read_cursor(since)
        except CursorInvalid as exc:
            raise Invalid("bad cursor", [SpecError("since", "must be the `next` value of an earlier answer")]) from exc
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return await registry.logs(stored.row.id, replica, tail, since)


def present(stored: StoredDeployment, settings: Settings) -> Deployment:
    row, spec = stored.row, _spec(stored.spec)
    return Deployment(
        deployment_id=row.id,
        project=row.project,
        name=row.name,
        slug=row.slug,
        environment=row.environment,
        spec_id=row.spec_id,
        spec_version=row.spec_version,
        spec=spec,
        endpoint=f"http://{settings.router_host}:{settings.router_port}/{row.project}/{row.slug}/",
        created_at=row.created_at,
        updated_at=row.updated_at,
        status=_status(stored, spec),
        revision_id=revision_id(spec),
        scale=_user_scale(stored, spec),
        unchanged=stored.unchanged,
    )


def _spec_version(row: SpecVersionRow) -> SpecVersion:
    spec = _spec(row.spec)
    return SpecVersion(
        spec_id=row.spec_id,
        spec_version=row.version,
        revision_id=revision_id(spec),
        created_at=row.created_at,
        spec=spec,
    )


def _answer(stored: StoredDeployment, settings: Settings, response: Response) -> Deployment:
    response.headers["ETag"] = f'"{stored.row.spec_id}"'
    return present(stored, settings)


def _spec(document: dict[str, object]) -> DeploymentSpec:
    return DeploymentSpec.model_validate(document)


def _status(stored: StoredDeployment, spec: DeploymentSpec) -> Status:
    """The scheduler's last report, with the desired count as the registry knows it now (a scale
    shows at once, before the scheduler acts on it)."""
    if stored.status is not None:
        status = Status.model_validate(stored.status)
        reported: int | None = status.desired_replicas
    else:
        status, reported = Status(reason="waiting for the scheduler's first report"), None
    status.desired_replicas, status.desired_source = desired(stored.row, spec, reported)
    return status


def _user_scale(stored: StoredDeployment, spec: DeploymentSpec) -> UserScale | None:
    row = stored.row
    if not holds(row, spec):
        return None
    return UserScale.model_validate(
        {"replicas": row.scale_replicas, "spec_version": row.scale_spec_version,
         "spec_replicas": row.scale_spec_replicas, "scaled_at": row.scaled_at}
    )  # fmt: skip


def _etags(header: str) -> list[str]:
    """The spec_ids of an If-Match header: `"a"`, `"a", "b"`, `W/"a"` or a bare id."""
    return [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()]
