"""Every event on the bus, defined once. Events are facts in the past tense and carry a version.

Each event names its own subject (`subject()`) and its de-duplication id (`event_id`, sent as the
`Nats-Msg-Id` header). Subjects end in the ids they are about, so a consumer with the
"last per subject" deliver policy reads the current state of every deployment or replica; that is
how a service rebuilds its slice on start.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.spec import DeploymentSpec, HealthChecks, LoadBalancer


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")  # newer producers may add fields; old consumers keep working

    type: ClassVar[str]
    subject_template: ClassVar[str]  # formatted with the event's fields; ends in the ids it is about
    version: int = 1
    event_id: str = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=utcnow)

    def subject(self) -> str:
        return self.subject_template.format(**self.__dict__)


# -- spec-registry ---------------------------------------------------------------------------------


class DeploymentRef(BaseModel):
    deployment_id: str
    project: str
    slug: str


class SpecApplied(Event, DeploymentRef):
    """A spec version was accepted: the desired state of a deployment is now `spec`."""

    type: ClassVar[str] = "spec.applied"
    subject_template: ClassVar[str] = "berth.spec.v1.{deployment_id}"
    kind: Literal["spec.applied"] = "spec.applied"
    name: str
    spec_id: str
    spec_version: int
    spec: DeploymentSpec


class DeploymentDeleted(Event, DeploymentRef):
    """A deployment was deleted: every replica goes and its endpoint answers 404."""

    type: ClassVar[str] = "deployment.deleted"
    subject_template: ClassVar[str] = "berth.spec.v1.{deployment_id}"
    kind: Literal["deployment.deleted"] = "deployment.deleted"


# -- scheduler: replica lifecycle ------------------------------------------------------------------


class ReplicaRef(DeploymentRef):
    replica_id: str
    spec_id: str = Field(description="The spec version this replica was last announced with (display only).")
    revision_id: str = Field(
        default="", description="The revision (immutable template) the replica runs: what it serves."
    )


class ReplicaStarted(Event, ReplicaRef):
    """A replica process (or pod) started; `ports` maps each spec port to where it is reachable."""

    type: ClassVar[str] = "replica.started"
    subject_template: ClassVar[str] = "berth.replica.v1.{deployment_id}.{replica_id}"
    kind: Literal["replica.started"] = "replica.started"
    host: str
    ports: dict[int, int]
    primary_port: int
    restart_count: int = 0
    health_checks: HealthChecks = Field(default_factory=HealthChecks)


    @property
    def address(self) -> str:
        return f"{self.host}:{self.ports[self.primary_port]}"


class ReplicaExited(Event, ReplicaRef):
    """The replica's process ended on its own (crash or exit); the runtime will restart it."""

    type: ClassVar[str] = "replica.exited"
    subject_template: ClassVar[str] = "berth.replica.v1.{deployment_id}.{replica_id}"
    kind: Literal["replica.exited"] = "replica.exited"
    exit_code: int | None
    restart_count: int
    next_restart_in_seconds: float | None = None
    log_tail: list[str] = Field(default_factory=list)


class ReplicaStopped(Event, ReplicaRef):
    """The replica was stopped on purpose (scale down, replacement, stop, delete) and is gone."""

    type: ClassVar[str] = "replica.stopped"
    subject_template: ClassVar[str] = "berth.replica.v1.{deployment_id}.{replica_id}"
    kind: Literal["replica.stopped"] = "replica.stopped"
    reason: str


ReplicaEvent = ReplicaStarted | ReplicaExited | ReplicaStopped


# -- health-monitor --------------------------------------------------------------------------------


class ProbeResult(BaseModel):
    probe: Literal["startup", "readiness", "liveness", "tcp"]
    ok: bool
    status_code: int | None = None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow)


class ReplicaHealthChanged(Event, ReplicaRef):
    """The health of a replica changed (started, ready or live flipped)."""

    type: ClassVar[str] = "replica.health_changed"
    subject_template: ClassVar[str] = "berth.health.v1.{deployment_id}.{replica_id}"
    kind: Literal["replica.health_changed"] = "replica.health_changed"
    address: str
    started: bool
    ready: bool
    live: bool
    last_probe: ProbeResult | None = None
    restart_count: int = Field(default=0, description="The process of the replica this is about.")


class ReplicaRestartRequested(Event, ReplicaRef):
    """A replica must be restarted (liveness or startup failed its threshold)."""

    type: ClassVar[str] = "replica.restart_requested"
    subject_template: ClassVar[str] = "berth.control.v1.restart.{deployment_id}.{replica_id}"
    kind: Literal["replica.restart_requested"] = "replica.restart_requested"
    reason: str


# -- scale decisions (not spec versions) --------------------------------------------------------------

ScaleSource = Literal["user", "autoscaler"]
ReplicasSource = Literal["spec", "user", "autoscaler"]  # where a deployment's desired count came from


class DeploymentScaled(Event, DeploymentRef):
    """A decision on how many replicas a deployment runs that is not a spec change: a user's
    `berth deployments scale`, or the autoscaler's. The scheduler composes desired replicas from the
    latest spec and these; the newest decision of each source is kept (one subject per source).

    A decision holds while the spec keeps the `resources.replicas` it was made against
    (`spec_replicas`): applying a spec that sets another count supersedes it, as `kubectl apply` of a
    changed `replicas` supersedes `kubectl scale`."""

    type: ClassVar[str] = "deployment.scaled"
    subject_template: ClassVar[str] = "berth.scale.v1.{deployment_id}.{source}"
    kind: Literal["deployment.scaled"] = "deployment.scaled"
    source: ScaleSource
    replicas: int = Field(ge=0)
    spec_version: int = Field(description="The spec version the decision was made against.")
    spec_replicas: int = Field(description="That version's resources.replicas.")
    reason: str = ""
    # The autoscaler's decisions only (additive): what it read and how the HPA algorithm concluded.
    decision: dict[str, Any] | None = Field(
        default=None, description="Conditions and per-metric proposals (`berth autoscale explain -o json` shape)."
    )
    inputs: dict[str, Any] | None = Field(
        default=None, description="Everything the decision read, as one trace entry (docs/autoscaling.md)."
    )


class AliasTarget(BaseModel):
    """The spec version an alias points at, with its spec: the scheduler runs it from this alone (it
    may never have seen that version's SpecApplied, or have forgotten it)."""

    spec_version: int = Field(ge=1)
    spec_id: str
    spec: DeploymentSpec

    def applied(self, newest: SpecApplied) -> SpecApplied:
        """This version as the SpecApplied it was (what fetching, rendering and announcing replicas
        take), named as the deployment's newest SpecApplied names it."""
        return SpecApplied(
            deployment_id=newest.deployment_id, project=newest.project, slug=newest.slug, name=newest.name,
            spec_id=self.spec_id, spec_version=self.spec_version, spec=self.spec,
        )  # fmt: skip


class DeploymentAliasSet(Event, DeploymentRef):
    """An alias of a deployment was set or moved (`target`), or removed (`target` null). One subject
    per alias: the stream keeps each alias's newest, and each event carries one spec at most."""

    type: ClassVar[str] = "deployment.alias_set"
    subject_template: ClassVar[str] = "berth.spec.v1.{deployment_id}.alias.{alias}"
    kind: Literal["deployment.alias_set"] = "deployment.alias_set"
    alias: str
    target: AliasTarget | None = Field(default=None, description="The version it names; null: removed.")


class DeploymentPromoted(Event, DeploymentRef):
    """The user promoted the update to `spec_version`: a canary takes all traffic now (its remaining
    steps are skipped), a blue-green's old set stops now (its hold is cut short)."""

    type: ClassVar[str] = "deployment.promoted"
    subject_template: ClassVar[str] = "berth.spec.v1.{deployment_id}.promote"
    kind: Literal["deployment.promoted"] = "deployment.promoted"
    spec_version: int = Field(ge=1)


# -- scheduler: traffic assignment (the one owner of "who serves, at what weight") -----------------


class ServingReplica(BaseModel):
    replica_id: str
    address: str = Field(description="host:port the router sends requests to.")


class RevisionTarget(BaseModel):
    """One revision in a deployment's traffic: its share of requests and its ready replicas."""

    revision_id: str
    percent: int = Field(ge=0, le=100, description="Share of the endpoint's requests (all targets sum to 100).")
    spec_versions: list[int] = Field(
        default_factory=list, description="Spec versions that run this revision: reachable at @<version>."
    )
    replicas: list[ServingReplica] = Field(default_factory=list, description="Ready replicas only.")


class TrafficAssigned(Event, DeploymentRef):
    """Which revisions of a deployment serve, at which weights, with their ready replicas' addresses.

    Published only by the scheduler, one subject per deployment (the stream keeps the newest). The
    router replaces what it holds for the deployment with the assignment of the highest
    `generation` it has seen, and keeps no cut-over policy of its own."""

    type: ClassVar[str] = "traffic.assigned"
    subject_template: ClassVar[str] = "berth.traffic.v1.{deployment_id}"
    kind: Literal["traffic.assigned"] = "traffic.assigned"
    name: str = ""
    generation: int = Field(ge=1, description="Increases by one with each assignment of the deployment.")
    spec_version: int = Field(description="The newest spec version; versions above it do not exist.")
    enabled: bool = True
    deleted: bool = Field(default=False, description="The deployment is gone: its endpoint answers 404.")
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    basic_auth_key: str | None = Field(default=None, description="A `secret:<name>` reference, never a value.")
    targets: list[RevisionTarget] = Field(default_factory=list)
    aliases: dict[str, int] = Field(default_factory=dict, description="Alias -> spec version.")
    hold_seconds: float = Field(
        default=0.0, ge=0, description="With no ready replica, how long the router holds a request for one to "
        "come up (scale to zero: minReplicas 0); 0: answer 503 at once.",
    )


# -- integrations ----------------------------------------------------------------------------------


class IntegrationStatus(BaseModel):
    """One integration of a revision, fetched: what it is (its content identity) and its size."""

    name: str
    type: Literal["git-lfs", "s3", "volume"]
    mount: str = Field(description="Where the replica sees it: `<path>/<name>`, e.g. /models/falcon.")
    read_only: bool = Field(default=True, description="False only for a volume whose spec says readOnly: false.")
    identity: str = Field(
        description="Content identity: the commit (git-lfs), a hash of keys and ETags (s3), of the host path (volume)."
    )
    files: int = 0
    bytes: int = 0
    fetched_files: int = Field(default=0, description="Files this materialisation downloaded (0: all cached).")
    fetched_bytes: int = 0


class MaterialisedIntegration(IntegrationStatus):
    """An integration as the integrations service reports it to the scheduler: also where it lies."""

    local_path: str = Field(description="The cached content on the machine that fetched it (shared by identity).")


class FetchProgress(BaseModel):
    """How far the fetch of one integration has come: what it has written to the cache so far."""

    integration: str
    fetched_files: int = 0
    fetched_bytes: int = 0


class IntegrationsProgress(Event, DeploymentRef, FetchProgress):
    """A fetch under way (at most one a second); the revision's outcome replaces it on its subject."""

    type: ClassVar[str] = "integrations.progress"
    subject_template: ClassVar[str] = "berth.integrations.v1.{deployment_id}.{revision_id}"
    kind: Literal["integrations.progress"] = "integrations.progress"
    revision_id: str
    spec_version: int


class IntegrationsReady(Event, DeploymentRef):
    """Every integration of a revision is materialised: its replicas may start."""

    type: ClassVar[str] = "integrations.ready"
    subject_template: ClassVar[str] = "berth.integrations.v1.{deployment_id}.{revision_id}"
    kind: Literal["integrations.ready"] = "integrations.ready"
    revision_id: str
    spec_version: int
    integrations: list[MaterialisedIntegration]


class IntegrationsFailed(Event, DeploymentRef):
    """An integration of a revision could not be materialised: its replicas do not start. Never holds
    a credential; `reason` says what failed (authentication, not found, unreachable, disk full)."""

    type: ClassVar[str] = "integrations.failed"
    subject_template: ClassVar[str] = "berth.integrations.v1.{deployment_id}.{revision_id}"
    kind: Literal["integrations.failed"] = "integrations.failed"
    revision_id: str
    spec_version: int
    integration: str = Field(description="The name of the integration that failed.")
    reason: str
    retry_in_seconds: float | None = Field(default=None, description="When the next attempt is made.")


# What the scheduler holds per revision: the outcome, or the progress of the fetch before it.
IntegrationsEvent = IntegrationsReady | IntegrationsFailed | IntegrationsProgress


class IntegrationsRetryRequested(Event, DeploymentRef):
    """The user asked to fetch the deployment's failed integrations again now, not after the back-off
    (`berth deployments retry`)."""

    type: ClassVar[str] = "integrations.retry_requested"
    subject_template: ClassVar[str] = "berth.control.v1.retry.{deployment_id}"
    kind: Literal["integrations.retry_requested"] = "integrations.retry_requested"


# -- scheduler: status read model ------------------------------------------------------------------

Phase = Literal[
    "Provisioning", "Ready", "Degraded", "Stopped", "ScaledToZero", "Failed", "CrashLoopBackOff", "Deleted"
]


class ReplicaStatus(BaseModel):
    replica_id: str
    spec_id: str
    revision_id: str = ""
    address: str | None = None
    state: Literal["starting", "running", "exited", "backoff", "stopping"] = "starting"
    started: bool = False
    ready: bool = False
    live: bool = False
    restart_count: int = 0
    last_exit_code: int | None = None
    last_probe: ProbeResult | None = None
    log_tail: list[str] = Field(default_factory=list)
    last_restart_reason: str | None = Field(
        default=None, description="Why the replica was last restarted (a failed probe, or its exit code)."
    )


class DeploymentStatusChanged(Event, DeploymentRef):
    """The observed state of a deployment, as the scheduler sees it; the registry's read model."""

    type: ClassVar[str] = "deployment.status_changed"
    subject_template: ClassVar[str] = "berth.status.v1.{deployment_id}"
    kind: Literal["deployment.status_changed"] = "deployment.status_changed"
    spec_id: str | None
    revision_id: str | None = None
    phase: Phase
    reason: str = ""
    desired_replicas: int
    replicas_source: ReplicasSource = Field(
        default="spec", description="Where desired_replicas came from: the spec, or a scale decision."
    )
    ready_replicas: int
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    not_provided: list[str] = Field(default_factory=list, description="What this runtime could not give.")
    integrations: list[IntegrationStatus] = Field(
        default_factory=list, description="The desired revision's integrations, once fetched."
    )
    scale_reason: str | None = Field(
        default=None, description="Why the scale decision in force (autoscaler or user) chose desired_replicas."
    )
    fetching: FetchProgress | None = Field(
        default=None, description="While the desired revision's integrations are fetched: how far it has come."
    )
    rolled_back_version: int | None = Field(
        default=None, description="The spec version the scheduler rolled back by itself (an automatic rollback)."
    )
    rolled_back_reason: str | None = Field(default=None, description="Why it rolled rolled_back_version back.")


# -- scheduler: replica usage (for the autoscaler) ----------------------------------------------------


class ReplicaUsage(BaseModel):
    replica_id: str
    revision_id: str = ""
    state: Literal["starting", "running", "exited", "backoff", "stopping"]
    started_at: datetime | None = None
    ready: bool | None = Field(default=None, description="Readiness; None before the first health result.")
    ready_changed_at: datetime | None = Field(default=None, description="When readiness last changed.")
    cpu_percent: float | None = Field(default=None, description="Of the cores it was given; None: no sample.")
    memory_percent: float | None = Field(default=None, description="Of the memory it was given; None: no sample.")
    gpu_percent: float | None = Field(default=None, description="None where no GPU is visible (never zero).")


class ReplicaUsageReported(Event, DeploymentRef):
    """CPU, memory (and GPU) of every replica of one deployment, sampled by the runtime, with what the
    HPA reads of each replica besides (state, start, readiness and when it last changed)."""

    type: ClassVar[str] = "metrics.usage_reported"
    subject_template: ClassVar[str] = "berth.metrics.v1.usage.{deployment_id}"
    kind: Literal["metrics.usage_reported"] = "metrics.usage_reported"
    window_seconds: float = Field(description="The span each CPU sample averages.")
    replicas: list[ReplicaUsage] = Field(default_factory=list)


# -- router ----------------------------------------------------------------------------------------

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"),
)


class RevisionRequests(BaseModel):
    """One revision's part of a RequestMetricsReported window (what a canary analysis compares)."""

    revision_id: str
    requests: int
    errors: int
    latency_buckets: list[int] = Field(description="Counts per LATENCY_BUCKETS_SECONDS upper bound.")


class ReplicaRequests(BaseModel):
    """One replica's part of a RequestMetricsReported window (the replica that answered, or that the
    router tried last when none did)."""

    replica_id: str
    revision_id: str = ""
    requests: int
    errors: int
    latency_buckets: list[int] = Field(description="Counts per LATENCY_BUCKETS_SECONDS upper bound.")


class RequestMetricsReported(Event, DeploymentRef):
    """Requests the router served for one deployment over the last window."""

    type: ClassVar[str] = "metrics.requests_reported"
    subject_template: ClassVar[str] = "berth.metrics.v1.requests.{deployment_id}"
    kind: Literal["metrics.requests_reported"] = "metrics.requests_reported"
    window_seconds: float
    requests: int
    errors: int = Field(description="Responses with status >= 500 and upstream failures.")
    latency_sum_seconds: float
    latency_buckets: list[int] = Field(description="Counts per LATENCY_BUCKETS_SECONDS upper bound.")
    in_flight: int = 0
    revisions: list[RevisionRequests] = Field(
        default_factory=list, description="The same window per revision that answered (pinned requests included)."
    )
    client_errors: int = Field(default=0, description="Responses with a 4xx status (not part of `errors`).")
    upstream_failures: int = Field(
        default=0, description="The part of `errors` the router answered itself because no replica did "
        "(none ready, stopped, connection failed, response timed out).",
    )
    replicas: list[ReplicaRequests] = Field(default_factory=list, description="The same window per replica.")
    reporter: str = Field(
        default="", description="The router process that served the window (host/pid): a router runs "
        "several workers and several replicas, each reporting its own windows. Empty in older reports.",
    )


class MetricsSummary(BaseModel):
    """A deployment's current figures (the last `window_seconds`), from the metrics service."""

    at: datetime
    window_seconds: int = 60
    request_rate: float = 0.0
    error_rate: float = Field(default=0.0, description="Fraction 0..1 of requests answered 5xx or failed upstream.")
    client_error_rate: float = Field(default=0.0, description="Fraction 0..1 of requests answered 4xx.")
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    in_flight: int = 0
    cpu_percent: float | None = None
    memory_percent: float | None = None
    gpu_percent: float | None = None


class DeploymentMetricsSummarized(Event, DeploymentRef):
    """The metrics service's current figures of one deployment, every few seconds while it has traffic
    or replicas; the registry folds the newest into its status read model."""

    type: ClassVar[str] = "metrics.summarized"
    subject_template: ClassVar[str] = "berth.metrics.v1.summary.{deployment_id}"
    kind: Literal["metrics.summarized"] = "metrics.summarized"
    summary: MetricsSummary


# -- alerting --------------------------------------------------------------------------------------

AlertState = Literal["inactive", "pending", "firing", "resolved"]


class AlertChanged(Event, DeploymentRef):
    """An alert of one rule of a deployment changed state, as a Prometheus alerting rule's alert does:
    inactive -> pending when the condition starts to hold (-> firing at once when `for` is 0),
    pending -> firing once it held for `for`, pending -> inactive when it stops before, firing ->
    resolved when it stops holding. One subject per (deployment, rule): the stream keeps the newest,
    which is each alert's current state. `event_id` identifies the transition (a webhook's `id`)."""

    type: ClassVar[str] = "alert.changed"
    subject_template: ClassVar[str] = "berth.alerts.v1.{deployment_id}.{rule_slug}"
    kind: Literal["alert.changed"] = "alert.changed"
    name: str = Field(description="The deployment's name.")
    rule: str = Field(description="The alerting rule's name (spec `alerts[].name`).")
    rule_slug: str
    metric: str
    op: str
    threshold: float
    for_seconds: float
    window_seconds: float
    state: AlertState
    previous_state: AlertState
    value: float | None = Field(default=None, description="The metric at the evaluation (null: no data).")
    active_at: datetime | None = Field(default=None, description="Since when the condition holds (pending, firing).")
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    reason: str = Field(default="", description="Why, when not the metric: the rule or the deployment was removed.")


class Webhook(BaseModel):
    url: str
    secret: str = Field(description="A `secret:<name>` reference to the HMAC key, never the key.")


class WebhooksChanged(Event):
    """A project's webhooks (all of them) after a change; the stream keeps the newest per project."""

    type: ClassVar[str] = "webhooks.changed"
    subject_template: ClassVar[str] = "berth.webhooks.v1.{project}"
    kind: Literal["webhooks.changed"] = "webhooks.changed"
    project: str
    webhooks: list[Webhook] = Field(default_factory=list)


ALL_EVENTS: tuple[type[Event], ...] = (
    SpecApplied,
    DeploymentDeleted,
    ReplicaStarted,
    ReplicaExited,
    ReplicaStopped,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    DeploymentScaled,
    DeploymentAliasSet,
    DeploymentPromoted,
    TrafficAssigned,
    DeploymentStatusChanged,
    RequestMetricsReported,
    IntegrationsReady,
    IntegrationsFailed,
    IntegrationsProgress,  # newest on its revision's subject while a fetch runs: snapshots read it
    IntegrationsRetryRequested,
    ReplicaUsageReported,
    AlertChanged,
    WebhooksChanged,
    DeploymentMetricsSummarized,
)
_BY_KIND: dict[str, type[Event]] = {cls.type: cls for cls in ALL_EVENTS}


def decode_event(payload: bytes | str | dict[str, Any]) -> Event:
    """Decode any event by its `kind` field."""
    data = payload if isinstance(payload, dict) else json.loads(payload)
    return _BY_KIND[data["kind"]].model_validate(data)
