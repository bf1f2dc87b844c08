"""Deployments: create, read, update (If-Match), scale, stop/start, rollback, delete, history,
status and logs. Every route is scoped to the caller's project; a deployment of another project
answers 404 like one that does not exist. A write that changes nothing answers 200 with
`unchanged: true`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from libs.changes import field_changes
from libs.config import Settings
from libs.durations import RULE as DURATION_RULE
from libs.durations import duration_seconds, parse_duration
from libs.logcursor import MAX_CURSOR_CHARS, MAX_GREP_CHARS, CursorInvalid, LogSearch, read_cursor
from libs.revision import revision_id
from libs.spec import DeploymentSpec, SpecError, StrategyType, scale_errors, with_strategy
from libs.store import AliasRow, SpecVersionRow
from services.spec_registry.alerts import AlertBoard, summaries
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
    Alias,
    AliasList,
    AliasRequest,
    AutoscalerDecision,
    DryRun,
    FieldChange,
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

DryRunQuery = Annotated[
    bool,
    Query(
        alias="dryRun",
        description="Store nothing: answer the field changes against the current version, whether each "
        "applies live or replaces replicas, and with which strategy.",
    ),
]
StrategyQuery = Annotated[
    StrategyType | None,
    Query(
        description="Roll this version out with this updateStrategy.type (as `berth apply --strategy`): "
        "set in the version stored; the body's other strategy settings are dropped when its type differs."
    ),
]
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
    caller: Caller,
    registry: RegistryDep,
    settings: SettingsDep,
    document: SpecDocument,
    response: Response,
    dry_run: DryRunQuery = False,
    strategy: StrategyQuery = None,
) -> Deployment | DryRun:
    document = with_strategy(document, strategy)
    if dry_run:
        response.status_code = 200
        return await registry.dry_run(caller.project, None, document, [])
    stored = await registry.create(caller.project, document, by=caller.token_id)
    response.headers["Location"] = f"/v1/deployments/{stored.row.id}"
    return _answer(stored, settings, response, registry.alerts)


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
    return DeploymentList(items=[present(s, settings, registry.alerts) for s in page], next=next_cursor)


@router.get("/deployments/{ref}", tags=["deployments"], responses=READ)
async def get_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """`ref` is the deployment_id or the slug."""
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return _answer(stored, settings, response, registry.alerts)


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
    dry_run: DryRunQuery = False,
    strategy: StrategyQuery = None,
) -> Deployment | DryRun:
    if not if_match.strip():
        raise PreconditionRequired()
    document = with_strategy(document, strategy)
    if dry_run:
        return await registry.dry_run(caller.project, ref, document, _etags(if_match))
    stored = await registry.update(caller.project, ref, document, _etags(if_match), by=caller.token_id)
    return _answer(stored, settings, response, registry.alerts)


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
    return _answer(stored, settings, response, registry.alerts)


@router.post("/deployments/{ref}/stop", tags=["deployments"], responses=WRITE)
async def stop_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    stored = await registry.change(caller.project, ref, with_enabled(False), by=caller.token_id)
    return _answer(stored, settings, response, registry.alerts)


@router.post("/deployments/{ref}/start", tags=["deployments"], responses=WRITE)
async def start_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    stored = await registry.change(caller.project, ref, with_enabled(True), by=caller.token_id)
    return _answer(stored, settings, response, registry.alerts)


@router.post("/deployments/{ref}/rollback", tags=["deployments"], responses=JSON_WRITE)
async def rollback_deployment(
    ref: str, body: RollbackRequest, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """A new version whose spec is that of `spec_version` (unchanged when it is the current spec)."""
    old = await asyncio.to_thread(registry.repo.spec_version, caller.project, ref, body.spec_version)
    stored = await registry.change(caller.project, ref, replaced_by(old.spec), by=caller.token_id)
    return _answer(stored, settings, response, registry.alerts)


@router.post("/deployments/{ref}/promote", tags=["deployments"], responses=WRITE)
async def promote_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """Promote the current version's update: a canary takes all traffic at once (its remaining steps
    are skipped), a blue-green's old set stops at once. Not a new version; no effect on a rolling update."""
    stored = await registry.promote(caller.project, ref)
    return _answer(stored, settings, response, registry.alerts)


@router.post("/deployments/{ref}/retry", status_code=202, tags=["deployments"], responses=READ)
async def retry_deployment(
    ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep, response: Response
) -> Deployment:
    """Fetch the deployment's failed integrations again now, not after the back-off (accepted: the
    integrations service acts on it; the status shows the outcome)."""
    stored = await registry.retry(caller.project, ref)
    return _answer(stored, settings, response, registry.alerts)


@router.delete("/deployments/{ref}", status_code=204, tags=["deployments"], responses=READ)
async def delete_deployment(ref: str, caller: Caller, registry: RegistryDep) -> Response:
    await registry.delete(caller.project, ref)
    return Response(status_code=204)


@router.get("/deployments/{ref}/history", tags=["deployments"], responses=READ)
async def deployment_history(
    ref: str,
    caller: Caller,
    registry: RegistryDep,
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
    diff: Annotated[bool, Query(description="Add each version's field changes from the one before.")] = False,
) -> History:
    """Newest first; `next` is the cursor of the following page, null on the last."""
    before_version = decode_cursor(after, int)
    # One more row than the page and its next-page probe: the predecessor of the page's oldest version.
    rows = await asyncio.to_thread(registry.repo.history, caller.project, ref, limit + 2, before_version)
    versions, next_cursor = paginate(rows[: limit + 1], limit, lambda version: version.version)
    items = [_spec_version(v) for v in versions]
    if diff:
        for item, row in zip(items, versions, strict=True):
            previous = next((r for r in rows if r.version < row.version), None)
            if previous is not None:
                changes = field_changes(_spec(previous.spec), item.spec)
                item.changes = [FieldChange(**vars(c)) for c in changes]
    return History(items=items, next=next_cursor)


@router.get("/deployments/{ref}/aliases", tags=["aliases"], responses=READ)
async def list_aliases(ref: str, caller: Caller, registry: RegistryDep, settings: SettingsDep) -> AliasList:
    """Every alias of the deployment, by name."""
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    rows = await asyncio.to_thread(registry.repo.aliases, caller.project, stored.row.id)
    return AliasList(items=[_alias(stored, row, settings) for row in rows])


@router.put("/deployments/{ref}/aliases/{alias}", tags=["aliases"], responses=JSON_WRITE)
async def set_alias(
    ref: str, alias: str, body: AliasRequest, caller: Caller, registry: RegistryDep, settings: SettingsDep
) -> Alias:
    """Create the alias or move it to another spec version. Its version's replicas are started if
    they do not run; moving it switches `@<alias>` requests once they are ready."""
    row, changed = await registry.set_alias(caller.project, ref, alias, body.spec_version)
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return _alias(stored, row, settings, unchanged=not changed)


@router.delete("/deployments/{ref}/aliases/{alias}", status_code=204, tags=["aliases"], responses=WRITE)
async def remove_alias(ref: str, alias: str, caller: Caller, registry: RegistryDep) -> Response:
    await registry.remove_alias(caller.project, ref, alias)
    return Response(status_code=204)


@router.get("/deployments/{ref}/status", tags=["deployments"], responses=READ)
async def deployment_status(ref: str, caller: Caller, registry: RegistryDep) -> Status:
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return _status(stored, _spec(stored.spec), registry.alerts)


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
    since_time: Annotated[
        str | None, Query(description="Only lines written at or after: RFC 3339 (with an offset), or a duration back from now (10m, 1h30m, 2d).")
    ] = None,
    until: Annotated[str | None, Query(description="Only lines written before; the same forms as since_time.")] = None,
    grep: Annotated[
        str | None, Query(description=f"Only lines containing this text (plain, case-sensitive; at most {MAX_GREP_CHARS} characters).")
    ] = None,
    include_replaced: Annotated[
        bool, Query(description="Also replicas that were replaced or stopped, while their output is kept.")
    ] = False,
) -> LogPage:
    if since:
        try:
            read_cursor(since)
        except CursorInvalid as exc:
            raise Invalid("bad cursor", [SpecError("since", "must be the `next` value of an earlier answer")]) from exc
    now = datetime.now(UTC)
    start, end = _log_time("since_time", since_time, now), _log_time("until", until, now)
    if start and end and end <= start:
        raise Invalid("bad time range", [SpecError("until", "must be later than since_time")])
    if grep is not None and not 0 < len(grep) <= MAX_GREP_CHARS:
        raise Invalid("bad grep", [SpecError("grep", f"must be 1 to {MAX_GREP_CHARS} characters")])
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    search = LogSearch(since_time=start, until=end, grep=grep, include_replaced=include_replaced)
    return await registry.logs(stored.row.id, replica, tail, since, search)


def _log_time(field: str, value: str | None, now: datetime) -> datetime | None:
    """An RFC 3339 time, or a duration (1h30m) back from `now`; Invalid naming `field` otherwise."""
    if value is None:
        return None
    rule = "must be an RFC 3339 time with an offset (2026-01-02T15:04:05Z) or a duration like 10m, 1h30m, 2d"
    try:
        back = duration_seconds(value)
    except ValueError:
        back = None
    if back is not None:
        try:
            return now - timedelta(seconds=back)
        except OverflowError:  # before year 1
            raise Invalid(f"bad {field}", [SpecError(field, "must not reach back before year 1")]) from None
    try:
        parsed = datetime.fromisoformat(value) if len(value) <= 40 else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Invalid(f"bad {field}", [SpecError(field, rule)])
    return parsed.astimezone(UTC)


@router.get("/deployments/{ref}/metrics", tags=["deployments"], responses={**READ, **responses(Unavailable)})
async def deployment_metrics(
    ref: str,
    caller: Caller,
    registry: RegistryDep,
    window: Annotated[str, Query(max_length=16, description="The span shown, ending now: 30s, 5m, 1h, 24h, 30d.")] = "1h",
    step: Annotated[str, Query(max_length=16, description="One point per step (at least the resolution, 10s).")] = "1m",
    version: Annotated[int | None, Query(ge=1, description="Only the revision running this spec version.")] = None,
) -> dict[str, Any]:
    """Request rate, error rates, latency quantiles, in-flight, replicas, restarts and usage over time
    (docs/api.md, docs/monitoring.md); `current` holds the last minute's figures."""
    errors = [SpecError(name, DURATION_RULE) for name, text in (("window", window), ("step", step))
              if not parse_duration(text)]  # fmt: skip
    if errors:
        raise Invalid("bad query", errors)
    stored = await asyncio.to_thread(registry.repo.get_deployment, caller.project, ref)
    return await registry.metrics(stored.row.id, parse_duration(window) or 0, parse_duration(step) or 0, version)


def present(stored: StoredDeployment, settings: Settings, alerts: AlertBoard | None = None) -> Deployment:
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
        status=_status(stored, spec, alerts),
        revision_id=revision_id(spec),
        scale=_user_scale(stored, spec),
        unchanged=stored.unchanged,
    )


def _alias(stored: StoredDeployment, row: AliasRow, settings: Settings, unchanged: bool = False) -> Alias:
    d = stored.row
    return Alias(
        alias=row.name,
        spec_version=row.spec_version,
        updated_at=row.updated_at,
        endpoint=f"http://{settings.router_host}:{settings.router_port}/{d.project}/{d.slug}@{row.name}/",
        unchanged=unchanged,
    )


def _spec_version(row: SpecVersionRow) -> SpecVersion:
    spec = _spec(row.spec)
    return SpecVersion(
        spec_id=row.spec_id,
        spec_version=row.version,
        revision_id=revision_id(spec),
        created_at=row.created_at,
        created_by=row.created_by,
        spec=spec,
        rolled_back_at=row.rolled_back_at,
        rolled_back_reason=row.rolled_back_reason,
    )


def _answer(stored: StoredDeployment, settings: Settings, response: Response, alerts: AlertBoard) -> Deployment:
    response.headers["ETag"] = f'"{stored.row.spec_id}"'
    return present(stored, settings, alerts)


def _spec(document: dict[str, object]) -> DeploymentSpec:
    return DeploymentSpec.model_validate(document)


def _status(stored: StoredDeployment, spec: DeploymentSpec, alerts: AlertBoard | None = None) -> Status:
    """The scheduler's last report, with the desired count as the registry knows it now (a scale
    shows at once, before the scheduler acts on it), and the state of each alerting rule."""
    if stored.status is not None:
        status = Status.model_validate(stored.status)
        reported: int | None = status.desired_replicas
    else:
        status, reported = Status(reason="waiting for the scheduler's first report"), None
    status.desired_replicas, status.desired_source = desired(stored.row, spec, reported)
    status.alerts = summaries(alerts or AlertBoard(), stored.row.id, spec)
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
