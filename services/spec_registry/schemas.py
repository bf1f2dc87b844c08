"""The registry's REST resources (pydantic), as the API contract names them; OpenAPI is built from
these. Request bodies reject unknown fields, like the spec does."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializerFunctionWrapHandler,
    field_serializer,
)

from libs.events import AlertState, FetchProgress, IntegrationStatus, MetricsSummary, Phase, ReplicaStatus
from libs.spec import DeploymentSpec
from services.spec_registry.limits import MAX_SECRET_CHARS

PROJECT_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertSummary(BaseModel):
    """One alerting rule of a deployment and the state of its alert (the deployment's status)."""

    name: str = Field(description="The rule's name (spec `alerts[].name`).")
    state: AlertState = Field(description="inactive, pending, firing, or resolved (inactive after firing).")
    since: datetime | None = Field(default=None, description="When it entered this state (null: never active).")
    value: float | None = Field(default=None, description="The metric at the last transition (null: no data).")


class Alert(AlertSummary):
    """An alert as `GET /alerts` and `GET /deployments/{ref}/alerts` show it."""

    deployment_id: str
    deployment: str = Field(description="The deployment's name.")
    slug: str
    metric: str
    op: str
    threshold: float
    for_: str = Field(alias="for", serialization_alias="for", description="How long the condition must hold.")
    window: str
    active_at: datetime | None = Field(default=None, description="Since when the condition holds (pending, firing).")
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    updated_at: datetime | None = Field(default=None, description="The last transition (null: none yet).")
    reason: str = Field(default="", description="Set when the alert ended because its rule or deployment went.")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class AlertList(BaseModel):
    items: list[Alert]


class WebhookPut(Request):
    url: str = Field(
        max_length=2048, description="Where alert transitions are POSTed: an http:// or https:// URL without credentials."
    )
    secret: str = Field(
        max_length=136, description="`secret:<name>`: the project secret holding the HMAC-SHA256 key (never the key)."
    )


class WebhookOut(BaseModel):
    url: str
    secret: str = Field(description="The `secret:<name>` reference to the signing key.")
    created_at: datetime
    updated_at: datetime


class WebhookList(BaseModel):
    items: list[WebhookOut]


class Status(BaseModel):
    """The observed state of a deployment, from the scheduler's DeploymentStatusChanged events."""

    phase: Literal["Pending"] | Phase = Field(default="Pending", description="Pending until the first status event.")
    reason: str = ""
    desired_replicas: int = 0
    ready_replicas: int = 0
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    not_provided: list[str] = Field(default_factory=list, description="What this runtime could not give.")
    integrations: list[IntegrationStatus] = Field(
        default_factory=list, description="The integrations of the running revision: content identity and size."
    )
    fetching: FetchProgress | None = Field(
        default=None, description="While the integrations are fetched: files and bytes written so far."
    )
    observed_at: datetime | None = None
    desired_source: Literal["spec", "user", "autoscaler", "stopped"] = Field(
        default="spec",
        description="Where desired_replicas comes from: the spec's resources.replicas, the user's scale, "
        "the autoscaler (as the scheduler last reported it), or 0 because the deployment is stopped.",
    )
    scale_reason: str | None = Field(
        default=None, description="Why the scale decision in force chose its count (the autoscaler's last reason)."
    )
    alerts: list[AlertSummary] = Field(
        default_factory=list, description="Every alerting rule of the current spec with its alert's state."
    )
    metrics: MetricsSummary | None = Field(
        default=None, description="The last minute's figures, from the metrics service; null before its first."
    )


class AutoscalerDecision(BaseModel):
    """The autoscaler's newest decision about a deployment, with everything it read (a trace entry,
    docs/autoscaling.md): what `berth autoscale record` collects."""

    event_id: str
    decided_at: datetime
    replicas: int
    reason: str
    spec_version: int
    inputs: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None


class SubmittedSpec(BaseModel):
    """A resource holding a spec shows it as submitted: the fields the user wrote, not every default."""

    spec: DeploymentSpec

    # No return annotation on purpose: pydantic then documents the field as a DeploymentSpec.
    @field_serializer("spec", mode="wrap")
    def _as_submitted(self, spec: DeploymentSpec, _: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return spec.model_dump(mode="json", exclude_unset=True)


class UserScale(BaseModel):
    """The user's scale decision, shown while it holds: until a spec version sets another
    resources.replicas than `spec_replicas`."""

    replicas: int
    spec_version: int = Field(description="The spec version the decision was made against.")
    spec_replicas: int = Field(description="That version's resources.replicas.")
    scaled_at: datetime


class Deployment(SubmittedSpec):
    deployment_id: str
    project: str
    name: str
    slug: str = Field(description="DNS-1123 label derived from the name; unique in the project.")
    environment: str
    spec_id: str = Field(description="Id of the current spec version; send it back in If-Match to update.")
    spec_version: int
    endpoint: str = Field(description="The load-balanced URL: http://<router>/<project>/<slug>/")
    created_at: datetime
    updated_at: datetime
    status: Status
    revision_id: str = Field(description="The revision (template) the current spec version runs.")
    scale: UserScale | None = Field(description="The user's scale decision while it holds; null otherwise.")
    unchanged: bool = Field(
        default=False,
        description="True when a write asked for what was already so (an identical spec, the current "
        "replica count, the current version): nothing was stored or published.",
    )


NEXT_PAGE = Field(default=None, description="Pass as `after` for the next page; null on the last page.")


class DeploymentList(BaseModel):
    items: list[Deployment] = Field(description="By name.")
    next: str | None = NEXT_PAGE


class FieldChange(BaseModel):
    field: str = Field(description="Dotted path: resources.cpu, env.<NAME>, healthChecks.readiness.path.")
    before: Any = Field(default=None, description="null: not set before (defaults count as set).")
    after: Any = Field(default=None, description="null: not set any more.")
    effect: Literal["live", "replace", "refused"] = Field(
        description="live: applies to the running replicas; replace: new replicas through the update "
        "strategy; refused: the update would be refused (the name)."
    )
    note: str = ""


class SpecVersion(SubmittedSpec):
    spec_id: str
    spec_version: int
    revision_id: str = Field(description="Versions with the same revision_id run the same template.")
    created_at: datetime
    created_by: int | None = Field(default=None, description="Id of the token that created it (never the token).")
    changes: list[FieldChange] | None = Field(
        default=None, description="With diff=true: the fields changed from the previous version (null for the first)."
    )
    rolled_back_at: datetime | None = Field(
        default=None, description="When the scheduler rolled this version back by itself (null: it never did)."
    )
    rolled_back_reason: str | None = Field(default=None, description="Why (a progress deadline, a crash loop, canary analysis).")


class DryRun(BaseModel):
    """What an apply would do, without doing it (`?dryRun=true`)."""

    dry_run: Literal[True] = True
    deployment_id: str | None = Field(description="null: the deployment would be created.")
    spec_version: int | None = Field(description="The current version the changes are against.")
    unchanged: bool = Field(description="The spec is the current one: nothing would be stored.")
    changes: list[FieldChange]
    replaces_replicas: bool
    strategy: str = Field(description="updateStrategy.type that replacing replicas would follow.")
    rollout: str = Field(description="What will happen to the running replicas, in a sentence.")


class History(BaseModel):
    items: list[SpecVersion] = Field(description="Newest first.")
    next: str | None = NEXT_PAGE


class Validation(BaseModel):
    valid: bool


class ScaleRequest(Request):
    # Strict: `{"replicas": false}` or `"3"` is an error, not 0 or 3.
    replicas: int = Field(ge=0, le=1000, strict=True)


class RollbackRequest(Request):
    spec_version: int = Field(
        ge=1, strict=True, description="The version whose spec becomes the new version's spec."
    )


ALIAS_NAME = r"^(?![0-9]+$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class AliasRequest(Request):
    spec_version: int = Field(ge=1, strict=True, description="The spec version the alias points at.")


class Alias(BaseModel):
    alias: str = Field(description="A DNS-1123 label, not all digits (digits name a version).")
    spec_version: int
    updated_at: datetime
    endpoint: str = Field(description="http://<router>/<project>/<slug>@<alias>/")
    unchanged: bool = Field(default=False, description="The alias already pointed at this version.")


class AliasList(BaseModel):
    items: list[Alias] = Field(description="By name.")


class ProjectCreate(Request):
    name: str = Field(pattern=PROJECT_NAME, description="A DNS-1123 label; part of endpoint URLs.")


class ProjectCreated(BaseModel):
    name: str
    token: str = Field(description="Shown once; only its hash is stored.")


class TokenCreated(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")


class SecretPut(Request):
    value: SecretStr = Field(max_length=MAX_SECRET_CHARS, description=f"At most {MAX_SECRET_CHARS} characters.")


class SecretUsersRestarted(BaseModel):
    restarted: list[str] = Field(
        description="The deployments that use the secret: each has a new version (restartedAt now) rolling its replicas."
    )


class SecretNames(BaseModel):
    names: list[str]
    used_by: dict[str, list[str]] = Field(
        default_factory=dict, description="Secret name -> the deployments whose current spec refers to it."
    )


class LogLine(BaseModel):
    replica_id: str
    offset: int
    time: datetime | None = Field(default=None, description="When the line was written (None: not known).")
    line: str
    replaced: bool = Field(default=False, description="The replica is gone; its output is kept for a while.")


class LogPage(BaseModel):
    lines: list[LogLine]
    next: Any = Field(default=None, description="Cursor: pass it as `since` to read what follows.")


class Health(BaseModel):
    healthy: bool
    database: bool
    bus_connected: bool
    outbox_pending: int = Field(default=0, description="Events committed and not yet published.")
    outbox_set_aside: int = Field(
        default=0, description="Events that could not be published at all; see docs/operations.md."
    )
