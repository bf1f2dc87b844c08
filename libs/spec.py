"""The deployment spec: the YAML of seeds/000 plus the console fields of seeds/002.

Field names are the seed's camelCase. Unknown fields are rejected everywhere so that a typo such as
``replica:`` is an error instead of a silently ignored line. `validate_spec` turns pydantic's errors
into `SpecError`s that name the field path and the rule, all errors of one spec at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import slugify as python_slugify
import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from libs.durations import duration_seconds

SECRET_PREFIX = "secret:"
# Dot-separated words: a secret is the JetStream KV key `<project>.<name>`, whose tokens may not be
# empty (`a.`, `a..b` and `.a` are not keys).
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
SECRET_NAME_MAX = 128
MAX_INTEGRATIONS = 5

# Limits on one spec, far below what the bus carries (nats-server's max_payload, 1 MiB by default):
# the spec travels whole in its SpecApplied event. Sizes are of the spec as JSON with every non-ASCII
# character escaped (the longest form an event can take).
MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 32  # of nested mappings and lists; a real spec is about 6 deep
MAX_INTEGER_DIGITS = 18  # every integer of the spec fits in 64 bits


class SpecModel(BaseModel):
    """Base of every spec object: camelCase as written, unknown fields forbidden."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)


def spec_error_detail(loc: tuple[str | int, ...], rule: str, value: Any) -> InitErrorDetails:
    """One broken rule of a model validator, placed on the field it is about (`loc`, relative to it)."""
    return InitErrorDetails(type=PydanticCustomError("spec_rule", rule), loc=loc, input=value)


def raise_if(errors: list[InitErrorDetails], title: str) -> None:
    """Raise a model validator's errors on their own fields, so each names the field and not the model."""
    if errors:
        raise ValidationError.from_exception_data(title, errors)


def is_secret_ref(value: str) -> bool:
    return value.startswith(SECRET_PREFIX)


def secret_name(value: str) -> str:
    return value[len(SECRET_PREFIX) :]


def _check_secret_ref(value: str) -> str:
    name = secret_name(value)
    if not SECRET_NAME.match(name):
        raise ValueError(
            f"secret reference must be 'secret:<name>' where <name> matches {SECRET_NAME.pattern}"
        )
    return value


def _only_secret_ref(value: str | None, what: str) -> str | None:
    """A field that may hold only a reference: a literal would be returned by every GET and kept in history."""
    if value is not None and not is_secret_ref(value):
        raise ValueError(f"must be a secret reference 'secret:<name>', never {what} itself")
    return None if value is None else _check_secret_ref(value)


def only_secret_ref(value: str, what: str) -> str:
    """`value` when it is a well-formed `secret:<name>` reference; ValueError saying the rule otherwise."""
    checked = _only_secret_ref(value, what)
    assert checked is not None
    return checked


def _number_as_text(value: Any) -> Any:
    """YAML reads `machineType: 12` as a number; the user meant the text `12`. Integers only: a float
    as YAML read it may differ from what was written (`1.10` is 1.1)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# Integers are integers: `replicas: true` or `replicas: "2"` is an error, not 1 or 2.
Int = Annotated[int, Field(strict=True)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
# A number read as text where the field is free text (machine types, versions, env values).
Text = Annotated[str, BeforeValidator(_number_as_text)]
# Finite: `.inf` and `.nan` are YAML floats, and no quantity or target of the spec can be one.
Quantity = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


# Probe fields are int32 in Kubernetes (k8s.io/api/core/v1 Probe): its bound is theirs too, so a
# periodSeconds of 1e20 is refused rather than read as a probe that never comes. Strict: `true` or 5.5
# is not a number of seconds (Kubernetes' JSON decoding refuses both as well).
INT32_MAX = 2**31 - 1


def _matching(pattern: str, rule: str) -> Any:
    """A string rule with a message a user can read (pydantic's quotes the regex); the schema keeps it."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(rule)
        return value

    return AfterValidator(check)


def _pattern(pattern: str, rule: str, **field: Any) -> tuple[Any, Any]:
    return Field(json_schema_extra={"pattern": pattern}, **field), _matching(pattern, rule)


# CR, LF and the other control characters would end or split the request line or a header; HTAB is the
# one allowed inside a field value (RFC 9110 section 5.5).
PROBE_PATH = r"^/[^\x00-\x20\x7f]*$"
HEADER_NAME = r"^[-A-Za-z0-9]+$"  # Kubernetes' IsHTTPHeaderName (apimachinery/pkg/util/validation)
HEADER_VALUE = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
ProbePath = Annotated[
    str,
    *_pattern(PROBE_PATH, "must start with '/' and contain no spaces or control characters", max_length=2048),
]


def _probe_int(default: int, minimum: int, description: str) -> Any:
    return Field(default=default, ge=minimum, le=INT32_MAX, strict=True, description=description)


class Header(SpecModel):
    """An HTTP header sent with a probe (Kubernetes HTTPHeader)."""

    name: Annotated[
        str, *_pattern(HEADER_NAME, "must be letters, digits and '-' only (an HTTP header name)", max_length=256)
    ]
    value: Annotated[
        Text, *_pattern(HEADER_VALUE, "must not contain control characters such as CR or LF", max_length=8192)
    ]


class EnvVar(SpecModel):
    # seeds/000 itself uses `some-env`, so names are not restricted to POSIX shell identifiers.
    name: str = Field(min_length=1, max_length=256, pattern=r"^[^=\x00]+$")
    value: Text = ""

    @field_validator("value")
    @classmethod
    def _secret_ref(cls, value: str) -> str:
        return _check_secret_ref(value) if is_secret_ref(value) else value


class Probe(SpecModel):
    """One health check: a Kubernetes httpGet probe, with the defaults and bounds of core/v1 Probe.

    Rules per kind (pkg/apis/core/validation/validation.go): successThreshold must be 1 for liveness
    and startup. See docs/spec.md for how the health-monitor acts on each field.
    """

    path: ProbePath
    port: Port | None = Field(default=None, description="One of resources.ports; defaults to the first.")
    initialDelaySeconds: int = _probe_int(0, 0, "Seconds after the process started before the first probe.")
    periodSeconds: int = _probe_int(10, 1, "Seconds from the start of one probe to the start of the next.")
    timeoutSeconds: int = _probe_int(1, 1, "Seconds one probe may take, redirects and body included.")
    successThreshold: int = _probe_int(
        1, 1, "Consecutive successes that count as success after a failure; must be 1 for liveness and startup."
    )
    failureThreshold: int = _probe_int(3, 1, "Consecutive failures that count as failure.")
    headers: list[Header] = Field(default_factory=list, max_length=64)


class HealthChecks(SpecModel):
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None

    @model_validator(mode="after")
    def _success_threshold(self) -> HealthChecks:
        # Kubernetes: "Must be 1 for liveness and startup" - one success ends a startup, and a liveness
        # probe has nothing to come back to: its failure restarts the process.
        errors = [
            spec_error_detail(
                (kind, "successThreshold"), "must be 1 for liveness and startup probes", probe.successThreshold
            )
            for kind, probe in (("liveness", self.liveness), ("startup", self.startup))
            if probe is not None and probe.successThreshold != 1
        ]
        raise_if(errors, type(self).__name__)
        return self

    def probes(self) -> list[tuple[str, Probe]]:
        """(kind, probe) of every probe that is set."""
        kinds = (("startup", self.startup), ("readiness", self.readiness), ("liveness", self.liveness))
        return [(kind, probe) for kind, probe in kinds if probe is not None]


UTILISATION_METRICS = ("cpu", "memory", "gpu")  # percent of what each replica was given
REQUEST_METRICS = ("requestDuration", "concurrency", "rps")  # from the router, for the deployment


class AutoscalingMetric(SpecModel):
    metric: Literal["cpu", "memory", "gpu", "requestDuration", "concurrency", "rps"] = Field(
        description="cpu, memory, gpu: utilisation %; requestDuration: seconds (average over the deployment); "
        "concurrency: in-flight requests per replica; rps: requests per second per replica."
    )
    summary: Literal["average"] = "average"
    value: Quantity

    @model_validator(mode="after")
    def _percent_bounds(self) -> AutoscalingMetric:
        if self.metric in UTILISATION_METRICS and self.value > 100:
            raise ValueError(f"{self.metric} value is a utilisation percentage: at most 100")
        return self


class ScalingPolicy(SpecModel):
    """autoscaling/v2 HPAScalingPolicy: at most `value` pods (or percent) of change per `periodSeconds`."""

    type: Literal["Pods", "Percent"]
    value: Int = Field(gt=0)
    periodSeconds: Int = Field(gt=0, le=1800)


class ScalingRules(SpecModel):
    """autoscaling/v2 HPAScalingRules; unset fields take the HPA's defaults for the direction."""

    stabilizationWindowSeconds: Int | None = Field(default=None, ge=0, le=3600)
    selectPolicy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: list[ScalingPolicy] | None = Field(default=None, min_length=1, max_length=16)
    tolerance: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)


class ScalingBehavior(SpecModel):
    """autoscaling/v2 HorizontalPodAutoscalerBehavior."""

    scaleUp: ScalingRules | None = None
    scaleDown: ScalingRules | None = None


class Autoscaling(SpecModel):
    enabled: bool = False
    minReplicas: Int | None = Field(default=None, ge=0, description="Defaults to resources.replicas.")
    maxReplicas: Int = Field(ge=1)
    metrics: list[AutoscalingMetric] = Field(default_factory=list)
    behavior: ScalingBehavior | None = Field(
        default=None, description="Scale-up/scale-down rates and stabilisation, as in an autoscaling/v2 HPA."
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.minReplicas is not None and self.minReplicas > self.maxReplicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.enabled and not self.metrics:
            raise ValueError("autoscaling needs at least one metric when enabled")
        names = [m.metric for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError("each metric may appear once")
        # As the HPA (HPAScaleToZero): at zero replicas no replica reports cpu or memory, so only a
        # request metric (from the router) can bring the first one back.
        if self.enabled and self.minReplicas == 0 and not set(names) & set(REQUEST_METRICS):
            raise ValueError("minReplicas 0 needs a requestDuration, concurrency or rps metric")
        return self


class Resources(SpecModel):
    ports: list[Port] = Field(min_length=1, description="The first port receives traffic.")
    replicas: Int = Field(default=1, ge=0, le=1000)
    machineType: Text | None = None
    autoscaling: Autoscaling | None = None
    # Console fields (seeds/002), per replica.
    cpu: Quantity | None = Field(default=None, description="CPU cores per replica.")
    memory: Quantity | None = Field(default=None, description="Memory per replica, GB.")
    gpuCount: Int = Field(default=0, ge=0)
    gpuType: Literal["T4", "V100", "A100"] | None = None

    @model_validator(mode="after")
    def _gpu(self) -> Resources:
        if self.gpuType is not None and self.gpuCount == 0:
            raise ValueError("gpuType needs gpuCount greater than 0")
        if self.autoscaling and self.autoscaling.enabled and self.replicas > self.autoscaling.maxReplicas:
            raise ValueError("replicas must not exceed autoscaling.maxReplicas")
        minimum = self.autoscaling.minReplicas if self.autoscaling and self.autoscaling.enabled else None
        if minimum is not None and self.replicas < minimum:
            raise ValueError("replicas must not be below autoscaling.minReplicas")
        return self

    def replica_bounds(self) -> tuple[int, int] | None:
        """(minimum, maximum) replicas while autoscaling is enabled; the minimum defaults to `replicas`."""
        scaling = self.autoscaling
        if scaling is None or not scaling.enabled:
            return None
        return (self.replicas if scaling.minReplicas is None else scaling.minReplicas), scaling.maxReplicas

    @property
    def port(self) -> int:
        return self.ports[0]


def _mount_path(path: str) -> str:
    """An absolute path that stays where it says: no `.`/`..` segment (which would put the content
    outside the directory it names, or on top of another one), no backslash or control character."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    if "\\" in path or any(unicodedata.category(char) == "Cc" for char in path):
        raise ValueError("must not contain backslashes or control characters")
    return path


MountPath = Annotated[str, Field(pattern=r"^/", max_length=1024), AfterValidator(_mount_path)]
IntegrationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class _Mounted(SpecModel):
    """An integration's content appears at `<path>/<name>` (seeds/000: `falcon` at `/models/`)."""

    name: IntegrationName
    path: MountPath

    @property
    def mount(self) -> str:
        return self.path.rstrip("/") + "/" + self.name


# Integration fields that may hold a secret reference: unsealed by whoever fetches (the integrations
# service, or on Kubernetes the scheduler into the Pod's Secret for the init container).
CREDENTIAL_FIELDS: tuple[str, ...] = ("username", "password", "sshKey", "secretAccessKey")


class GitLfsIntegration(_Mounted):
    type: Literal["git-lfs"]
    url: str = Field(pattern=r"^(https?|ssh|git|file)://")
    ref: Text | None = Field(default=None, description="Branch, tag or commit; the default branch when unset.")
    username: str | None = Field(default=None, description="Basic-auth user: text or a secret reference.")
    password: str | None = Field(default=None, description="Basic-auth password or token: a secret reference.")
    sshKey: str | None = Field(default=None, description="Private key for an ssh:// url: a secret reference.")

    @field_validator("url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        # A URL is shown by every GET and kept in git's config: a password belongs in `password`.
        if re.match(r"^[a-z]+://[^/@]*:[^/@]*@", value):
            raise ValueError("must not hold a password (user:password@): give it as password: secret:<name>")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        return value if value is None or not is_secret_ref(value) else _check_secret_ref(value)

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        return _only_secret_ref(value, "the password")

    @field_validator("sshKey")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        return _only_secret_ref(value, "the key")

    @model_validator(mode="after")
    def _credentials_over_http(self) -> GitLfsIntegration:
        # Credentials travel as an HTTP Authorization header: ssh://, git:// and file:// have none.
        errors = []
        if self.password is not None and not re.match(r"^https?://", self.url):
            rule = "is sent as HTTP basic auth, so the url must be http:// or https://"
            errors.append(spec_error_detail(("password",), rule, self.password))
        if self.username is not None and self.password is None:
            errors.append(spec_error_detail(("username",), "needs a password (a secret reference)", self.username))
        if self.sshKey is not None and not self.url.startswith("ssh://"):
            errors.append(spec_error_detail(("sshKey",), "is an ssh private key, so the url must be ssh://", self.sshKey))
        raise_if(errors, type(self).__name__)
        return self


class S3Integration(_Mounted):
    type: Literal["s3"]
    url: str = Field(pattern=r"^s3://[^/]+")
    region: str | None = None
    endpointUrl: str | None = Field(default=None, pattern=r"^https?://[^/]+", description="An S3-compatible store.")
    accessKeyId: str | None = None
    secretAccessKey: str | None = None

    @field_validator("secretAccessKey")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return _only_secret_ref(value, "the key")

    @model_validator(mode="after")
    def _pair(self) -> S3Integration:
        if (self.accessKeyId is None) != (self.secretAccessKey is None):
            raise ValueError("accessKeyId and secretAccessKey are given together or not at all")
        return self


# A PersistentVolumeClaim's name: a DNS-1123 subdomain, as Kubernetes requires of object names.
ClaimName = Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]


class VolumeIntegration(_Mounted):
    """An existing directory given to the replicas as it is: not copied, not cached. `hostPath` is a
    directory of the machine (local runtime; a hostPath volume on Kubernetes), `claimName` an existing
    PersistentVolumeClaim in the runtime namespace (Kubernetes only; it wins there when both are given)."""

    type: Literal["volume"]
    hostPath: MountPath | None = Field(
        default=None, description="Absolute path of an existing directory on the machine that runs the replicas."
    )
    claimName: ClaimName | None = Field(
        default=None, description="An existing PersistentVolumeClaim in the runtime namespace (kubernetes runtime)."
    )
    readOnly: bool = Field(default=True, description="The replicas are not to write to it (see docs/integrations.md).")

    @model_validator(mode="after")
    def _a_source(self) -> VolumeIntegration:
        if self.hostPath is None and self.claimName is None:
            rule = "is required unless claimName names a PersistentVolumeClaim"
            raise_if([spec_error_detail(("hostPath",), rule, None)], type(self).__name__)
        return self


Integration = Annotated[GitLfsIntegration | S3Integration | VolumeIntegration, Field(discriminator="type")]
INTEGRATION_TYPES = ("git-lfs", "s3", "volume")


class LoadBalancer(SpecModel):
    """Console load-balancer settings (seeds/002)."""

    enabled: bool = True
    algorithm: Literal["round-robin", "least-connections", "ip-hash"] = "round-robin"
    stickySessions: bool = False
    healthCheckPath: ProbePath | None = None
    healthCheckIntervalSeconds: int | None = Field(default=None, ge=1, le=INT32_MAX, strict=True)


# An absolute count or a percent of the desired replicas, as Kubernetes' IntOrString ("25%").
PERCENT = re.compile(r"^(100|[1-9]?[0-9])%$")


def _int_or_percent(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT32_MAX:
        return value
    if isinstance(value, str) and PERCENT.match(value):
        return value
    raise ValueError('must be a count (0 or more) or a percent from "0%" to "100%"')


IntOrPercent = Annotated[int | str, BeforeValidator(_int_or_percent)]
DEFAULT_SURGE = DEFAULT_UNAVAILABLE = "25%"  # Kubernetes' RollingUpdateDeployment defaults
DEFAULT_SCALE_DOWN_DELAY_SECONDS = 30  # Argo Rollouts' blue-green scaleDownDelaySeconds default
DEFAULT_CANARY_PERCENT = 10
DEFAULT_CANARY_STEP_SECONDS = 60
DEFAULT_MAX_ERROR_RATE_INCREASE = 5.0  # percentage points (Flagger's request-success-rate default threshold is 99 %)
DEFAULT_ANALYSIS_MIN_REQUESTS = 20
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600  # Kubernetes' Deployment progressDeadlineSeconds default


class CanaryAnalysis(SpecModel):
    """Bounds a canary must keep, relative to the stable revision, for its steps to advance (Flagger's
    and Argo Rollouts' analysis); a bound that fails rolls the canary back."""

    maxErrorRateIncrease: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = Field(
        default=DEFAULT_MAX_ERROR_RATE_INCREASE,
        description="Percentage points the canary's error rate (responses >= 500) may exceed the stable one's by.",
    )
    maxP99LatencyRatio: Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)] | None = Field(
        default=None, description="The canary's p99 latency may be at most this times the stable one's (unset: not judged)."
    )
    minRequests: Int = Field(
        default=DEFAULT_ANALYSIS_MIN_REQUESTS, ge=1, le=1_000_000,
        description="Requests the canary (and the stable revision) must have answered before a bound is judged.",
    )  # fmt: skip


class UpdateStrategy(SpecModel):
    """How replicas of a new revision replace the running ones (seeds/002).

    rolling: Kubernetes' RollingUpdate (maxSurge rounds up, maxUnavailable down; both 0 is refused);
    blue-green: the new set comes up fully beside the old, traffic switches at once when all are ready,
    the old set is kept scaleDownDelaySeconds for an instant switch back; canary: once the new set is
    ready it takes canarySteps' weights (default [canaryPercent], 10), each for canaryStepSeconds, then
    all traffic; applying the previous spec aborts it.
    """

    type: StrategyType = "rolling"
    canaryPercent: Int | None = Field(default=None, ge=1, le=99)
    maxSurge: IntOrPercent | None = Field(default=None, description='rolling: extra replicas, e.g. 1 or "25%" (default).')
    maxUnavailable: IntOrPercent | None = Field(
        default=None, description='rolling: replicas that may be unready, e.g. 0 or "25%" (default).'
    )
    scaleDownDelaySeconds: Int | None = Field(
        default=None, ge=0, le=86_400, description="blue-green: how long the old set is kept after the switch (30)."
    )
    canarySteps: list[Annotated[int, Field(strict=True, ge=1, le=99)]] | None = Field(
        default=None, max_length=20, description="canary: weights in percent, rising, one per step (default [canaryPercent])."
    )
    canaryStepSeconds: Int | None = Field(
        default=None, ge=1, le=86_400, description="canary: seconds each step lasts before the next (60)."
    )
    analysis: CanaryAnalysis | None = Field(
        default=None, description="canary: bounds relative to the stable revision; a failed one rolls the canary back."
    )
    progressDeadlineSeconds: Int = Field(
        default=DEFAULT_PROGRESS_DEADLINE_SECONDS, ge=1, le=86_400,
        description="Seconds an update may take to get its replicas ready before status says it is stuck.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _per_type(self) -> UpdateStrategy:
        errors = [
            spec_error_detail((name,), f"applies only to type '{kind}'", getattr(self, name))
            for name, kind in (
                ("canaryPercent", "canary"), ("maxSurge", "rolling"), ("maxUnavailable", "rolling"),
                ("scaleDownDelaySeconds", "blue-green"), ("canarySteps", "canary"), ("canaryStepSeconds", "canary"),
                ("analysis", "canary"),
            )  # fmt: skip
            if getattr(self, name) is not None and self.type != kind
        ]
        if self.type == "rolling" and _is_zero(self.maxSurge) and _is_zero(self.maxUnavailable):
            errors.append(spec_error_detail(("maxUnavailable",), "may not be 0 when maxSurge is 0", 0))
        steps = self.canarySteps or []
        if any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
            errors.append(spec_error_detail(("canarySteps",), "must rise from step to step", steps))
        raise_if(errors, type(self).__name__)
        return self


StrategyType = Literal["rolling", "blue-green", "canary"]


def with_strategy(document: Any, strategy: StrategyType | None) -> Any:
    """A spec document rolled out with `strategy` (`berth apply --strategy`, `?strategy=` on the API):
    updateStrategy.type set; the document's other strategy settings are kept when the type is the
    same and dropped when it differs (they belong to their type). Anything but a mapping is left to
    validation."""
    if strategy is None or not isinstance(document, dict):
        return document
    current = document.get("updateStrategy")
    if isinstance(current, dict) and current.get("type", "rolling") == strategy:
        return document
    return {**document, "updateStrategy": {"type": strategy}}


def _is_zero(value: int | str | None) -> bool:
    return value in (0, "0%")


# -- alerts -----------------------------------------------------------------------------------------

MAX_ALERTS = 20
MAX_ALERT_WINDOW_SECONDS = 3600  # BERTH_METRICS keeps an hour of reports: a longer range has no data
MAX_ALERT_FOR_SECONDS = 7 * 86400
ALERT_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
AlertMetric = Literal[
    "error_rate_percent", "client_error_rate_percent", "request_rate", "latency_p50_seconds",
    "latency_p95_seconds", "latency_p99_seconds", "ready_below_desired", "restarts", "cpu_percent", "memory_percent",
]  # fmt: skip


def _duration(maximum: float, minimum: float = 0.0) -> Any:
    def check(value: str) -> str:
        seconds = duration_seconds(value)
        if seconds < minimum or seconds > maximum:
            raise ValueError(f"must be between {minimum:g}s and {maximum:g}s")
        return value

    return AfterValidator(check)


class AlertRule(SpecModel):
    """One alerting rule of the deployment, evaluated as a Prometheus alerting rule (docs/monitoring.md):
    `metric` over the last `window`, compared with `threshold` by `op`; pending while the comparison
    holds, firing once it has held for `for`, resolved when it stops holding."""

    # `for` is a Python keyword: the field is `for_`, written and shown as `for`.
    model_config = ConfigDict(**SpecModel.model_config, serialize_by_alias=True)

    name: Annotated[
        str,
        *_pattern(ALERT_NAME, "must start with a letter and hold only letters, digits, '_' and '-' (at most 63)"),
    ]
    metric: AlertMetric = Field(
        description="error_rate_percent / client_error_rate_percent: % of requests answered 5xx or failed "
        "upstream / answered 4xx; request_rate: requests/s; latency_pNN_seconds: quantiles of the router's "
        "latency histogram; ready_below_desired: desired minus ready replicas (now); restarts: replica "
        "restarts within the window; cpu_percent, memory_percent: mean utilisation of the replicas."
    )
    op: Literal[">", ">=", "<", "<="]
    threshold: float = Field(allow_inf_nan=False, strict=True)
    for_: Annotated[Text, _duration(MAX_ALERT_FOR_SECONDS)] = Field(
        default="0s", alias="for", description="How long the comparison must hold before the alert fires (0s: at once)."
    )
    window: Annotated[Text, _duration(MAX_ALERT_WINDOW_SECONDS, minimum=1)] = Field(
        default="5m", description="The range the metric is computed over, as in rate(x[5m]); at most 1h."
    )

    @property
    def for_seconds(self) -> float:
        return duration_seconds(self.for_)

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)

    @property
    def slug(self) -> str:
        """The rule's token in its alert's subject (`berth.alerts.v1.<deployment_id>.<slug>`)."""
        return slugify(self.name)

    def holds(self, value: float | None) -> bool:
        """Whether `value` meets the condition; no value (no data, NaN) never does, as a PromQL comparison
        drops NaN samples."""
        if value is None or value != value:
            return False
        return {">": value > self.threshold, ">=": value >= self.threshold,
                "<": value < self.threshold, "<=": value <= self.threshold}[self.op]  # fmt: skip


class Model(SpecModel):
    id: Text = Field(min_length=1)
    version: Text = Field(min_length=1)


class DeploymentSpec(SpecModel):
    apiVersion: Literal["v1"] = "v1"
    name: str = Field(min_length=1, max_length=200)
    image: str = Field(min_length=1)
    enabled: bool = True
    containerRegistry: str | None = None
    command: list[str] | None = None
    resources: Resources
    integrations: list[Integration] = Field(default_factory=list, max_length=MAX_INTEGRATIONS)
    healthChecks: HealthChecks = Field(default_factory=HealthChecks)
    basicAuthKey: str | None = None
    env: list[EnvVar] = Field(default_factory=list)
    # Console fields (seeds/002).
    description: str | None = Field(default=None, max_length=2000)
    model: Model | None = None
    environment: Literal["development", "staging", "production"] = "development"
    loadBalancer: LoadBalancer = Field(default_factory=LoadBalancer)
    updateStrategy: UpdateStrategy = Field(default_factory=UpdateStrategy)
    alerts: list[AlertRule] = Field(
        default_factory=list, max_length=MAX_ALERTS, description="Alerting rules (docs/monitoring.md, Alerts)."
    )
    restartedAt: AwareDatetime | None = Field(
        default=None,
        description="Changing it makes a new revision, so every replica is replaced through updateStrategy "
        "(as kubectl rollout restart's restartedAt annotation); `berth secrets set --restart-users` sets it.",
    )

    @field_validator("basicAuthKey")
    @classmethod
    def _basic_auth_secret(cls, value: str | None) -> str | None:
        return _only_secret_ref(value, "the key")

    @field_validator("name")
    @classmethod
    def _visible_name(cls, name: str) -> str:
        # A name that looks like another one (bidi overrides reorder it, zero-width characters hide)
        # would pass for it in every listing.
        if any(unicodedata.category(char) in ("Cc", "Cf") for char in name):
            raise ValueError("must not contain control, bidi-override or zero-width characters")
        return name

    @field_validator("integrations")
    @classmethod
    def _unique_integrations(cls, items: list[Integration]) -> list[Integration]:
        repeats = [*_repeats("integrations", items, "name"), *_repeats("integrations", items, "path")]
        raise_if(repeats or _nested_mounts(items), "integrations")
        return items

    @field_validator("alerts")
    @classmethod
    def _unique_alerts(cls, items: list[AlertRule]) -> list[AlertRule]:
        # Names differing only in case or '_'/'-' share a slug, hence a subject: one would hide the other.
        raise_if(_repeats("alerts", items, "slug", shown="name", why=" (ignoring case, '-' and '_')"), "alerts")
        return items

    @field_validator("env")
    @classmethod
    def _unique_env(cls, items: list[EnvVar]) -> list[EnvVar]:
        raise_if(_repeats("env", items, "name"), "env")
        return items

    @model_validator(mode="after")
    def _probe_ports(self) -> DeploymentSpec:
        # Only the spec's ports are a replica's (the local runtime maps each to a host port of its own):
        # a probe of any other port would probe something else than the replica.
        ports = self.resources.ports
        allowed = ", ".join(str(port) for port in ports)
        raise_if(
            [
                spec_error_detail(
                    ("healthChecks", kind, "port"), f"must be one of resources.ports ({allowed})", probe.port
                )
                for kind, probe in self.healthChecks.probes()
                if probe.port is not None and probe.port not in ports
            ],
            type(self).__name__,
        )
        return self

    @property
    def slug(self) -> str:
        return slugify(self.name)

    @property
    def desired_replicas(self) -> int:
        """How many replicas should run: none while the deployment is stopped."""
        return self.resources.replicas if self.enabled else 0

    def secret_refs(self) -> set[str]:
        """Names of every `secret:` reference in the spec, checked against the project when applied."""
        return {name for _, name in self.secret_ref_fields()}

    def secret_ref_fields(self) -> list[tuple[str, str]]:
        """(field path, secret name) of every `secret:` reference, e.g. ("env[1].value", "token")."""
        refs = [(f"env[{i}].value", e.value) for i, e in enumerate(self.env)]
        refs.append(("basicAuthKey", self.basicAuthKey or ""))
        refs += [
            (f"integrations[{i}].secretAccessKey", integration.secretAccessKey or "")
            for i, integration in enumerate(self.integrations)
            if isinstance(integration, S3Integration)
        ]
        refs += [
            (f"integrations[{i}].{field}", getattr(integration, field) or "")
            for i, integration in enumerate(self.integrations)
            if isinstance(integration, GitLfsIntegration)
            for field in ("username", "password", "sshKey")
        ]
        return [(field, secret_name(value)) for field, value in refs if is_secret_ref(value)]

    def effective_readiness(self) -> Probe | None:
        """The readiness probe, or the console's load-balancer health check when only that is set."""
        if self.healthChecks.readiness is not None:
            return self.healthChecks.readiness
        if self.loadBalancer.healthCheckPath:
            return Probe(
                path=self.loadBalancer.healthCheckPath,
                periodSeconds=self.loadBalancer.healthCheckIntervalSeconds or 10,
            )
        return None


def _repeats(
    field: str, items: Sequence[BaseModel], attr: str, shown: str | None = None, why: str = ""
) -> list[InitErrorDetails]:
    """An error at every item whose `attr` an earlier item has already, naming that item (one pass);
    the error is placed on the field `shown` (default `attr`)."""
    first: dict[Any, int] = {}
    found: list[InitErrorDetails] = []
    where = shown or attr
    for index, item in enumerate(items):
        value = getattr(item, attr)
        if value in first:
            rule = PydanticCustomError("unique", f"must be unique: {field}[{first[value]}].{where} is the same{why}")
            found.append(InitErrorDetails(type=rule, loc=(index, where), input=value))
        else:
            first[value] = index
    return found


def _nested_mounts(items: Sequence[Integration]) -> list[InitErrorDetails]:
    """An error at every integration whose content would land inside another's (or over it)."""
    found: list[InitErrorDetails] = []
    for index, item in enumerate(items):
        for other_index, other in enumerate(items):
            if other_index != index and (item.mount + "/").startswith(other.mount + "/"):
                rule = PydanticCustomError(
                    "nested", f"must not put content inside integrations[{other_index}]'s mount"
                )
                found.append(InitErrorDetails(type=rule, loc=(index, "path"), input=item.path))
                break
    return found


def slugify(name: str) -> str:
    """A DNS-1123 label derived from a free-text name: `my cool deployment` -> `my-cool-deployment`.

    Names in any script are transliterated (`Модель` -> `model`, `模型` -> `mo-xing`); a name with
    nothing to transliterate (emoji only) gets a label made from its hash, so distinct names still
    get distinct slugs."""
    slug = python_slugify.slugify(name, max_length=63)
    return slug or "d-" + hashlib.blake2b(name.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class SpecError:
    """One broken rule: the dotted field path (`resources.replicas`) and what the rule says."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class SpecInvalid(ValueError):
    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item in INTEGRATION_TYPES and parts and parts[-1].endswith("]"):
            continue  # the discriminated-union tag pydantic inserts; the user never wrote it
        else:
            parts.append(str(item))
    return ".".join(parts) or "(spec)"


def _rule(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field (not part of the spec; check its spelling)"
    if error["type"] == "missing":
        return "field required"
    if error["type"] == "union_tag_invalid":  # pydantic's message repeats the value given
        return f"must be one of {error.get('ctx', {}).get('expected_tags', '')}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def errors_from(exc: ValidationError) -> list[SpecError]:
    return spec_errors(exc.errors())


MAX_ERRORS = 100  # reported of one spec; 30,000 repeated env names need not make a 2 MB answer


def spec_errors(errors: Sequence[Mapping[str, Any]]) -> list[SpecError]:
    """SpecErrors from pydantic error dicts (also FastAPI's request validation errors)."""
    found = [SpecError(_field_path(tuple(e["loc"])), _rule(e)) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        found.append(SpecError("(spec)", f"{len(errors) - MAX_ERRORS} more errors not shown"))
    return found


def _document_error(rule: str) -> SpecInvalid:
    return SpecInvalid([SpecError("(spec)", rule)])


TOO_LARGE = f"larger than the limit of a spec, {MAX_SPEC_BYTES} bytes as JSON"
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels of mappings and lists"
TOO_MANY_DIGITS = f"an integer has more than {MAX_INTEGER_DIGITS} digits"


class _Loader(yaml.CSafeLoader):
    """The safe loader (libyaml), with integers bounded before Python converts them: a 5,000-digit
    integer would otherwise fail in int() with an error that is not a YAML error."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if sum(char.isalnum() for char in str(node.value)) > MAX_INTEGER_DIGITS + 2:  # + a 0x/0o prefix
            raise yaml.constructor.ConstructorError(None, None, TOO_MANY_DIGITS, node.start_mark)
        return int(yaml.constructor.SafeConstructor.construct_yaml_int(self, node))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def parse_yaml(text: str) -> Any:
    """Parse YAML (JSON is YAML too); a syntax error becomes a SpecInvalid naming the line.

    Nesting is measured on the parser's events first (libyaml, no recursion), so a deeply nested
    document is refused before the composer, which recurses, ever sees it."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _document_error(f"{TOO_DEEP} at line {event.start_mark.line + 1}")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is the safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None)
        why = problem if problem == TOO_MANY_DIGITS else "not valid YAML or JSON"
        raise _document_error(f"{why} at {where}") from exc
    check_shape(document)
    return document


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError(TOO_MANY_DIGITS)
    return int(text)


def parse_json(text: str) -> Any:
    """Parse JSON; errors name the line and column (never the text found there)."""
    try:
        document = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise _document_error(f"not valid JSON at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError as exc:
        raise _document_error(TOO_DEEP) from exc
    except ValueError as exc:
        raise _document_error(TOO_MANY_DIGITS) from exc
    check_shape(document)
    return document


parse_document = parse_yaml


def _scalar_size(value: Any) -> int:
    return len(json.dumps(value)) if isinstance(value, str) else len(str(value))


def check_shape(document: Any) -> None:
    """Refuse a document too deep or too large before it is validated.

    YAML aliases let a small text stand for a huge document (each `*alias` repeats a whole subtree),
    so sizes are those of the document expanded, computed once per distinct node: linear in the text.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(container) -> (JSON bytes, depth)
    open_nodes: set[int] = set()
    stack: list[Any] = [document]
    while stack:
        node = stack[-1]
        if not isinstance(node, dict | list) or id(node) in measured:
            stack.pop()
            continue
        children: Iterable[Any] = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        unmeasured = [c for c in children if isinstance(c, dict | list) and id(c) not in measured]
        if id(node) not in open_nodes:
            open_nodes.add(id(node))
            if any(id(c) in open_nodes for c in unmeasured):
                raise _document_error("a YAML alias refers to a node that contains it")
            stack.extend(unmeasured)
            continue
        stack.pop()
        open_nodes.discard(id(node))
        size, depth = 2, 1
        for child in children:
            if isinstance(child, dict | list):
                child_size, child_depth = measured[id(child)]
                size, depth = size + child_size + 2, max(depth, child_depth + 1)
            else:
                size += _scalar_size(child) + 2
        if size > MAX_SPEC_BYTES:
            raise _document_error(TOO_LARGE)
        if depth > MAX_DEPTH:
            raise _document_error(TOO_DEEP)
        measured[id(node)] = (size, depth)
    if not isinstance(document, dict | list) and _scalar_size(document) > MAX_SPEC_BYTES:
        raise _document_error(TOO_LARGE)


def validate_spec(document: Any) -> DeploymentSpec:
    """Validate a parsed document; raises SpecInvalid listing every error at once."""
    if not isinstance(document, dict):
        raise SpecInvalid([SpecError("(spec)", "a spec is a mapping of fields (YAML or JSON object)")])
    try:
        spec = DeploymentSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecInvalid(errors_from(exc)) from exc
    # Validation may have turned numbers into text, hence a second look at the spec as it is kept.
    if len(json.dumps(spec.model_dump(mode="json", exclude_unset=True))) > MAX_SPEC_BYTES:
        raise SpecInvalid([SpecError("(spec)", TOO_LARGE)])
    return spec


def scale_errors(spec: DeploymentSpec, replicas: int) -> list[SpecError]:
    """Why `replicas` cannot be set by a manual scale: outside the autoscaling bounds while
    autoscaling is enabled (the autoscaler would undo it at once)."""
    bounds = spec.resources.replica_bounds()
    if bounds is None or bounds[0] <= replicas <= bounds[1]:
        return []
    low, high = bounds
    return [
        SpecError(
            "replicas",
            f"autoscaling is enabled: between {low} (minReplicas) and {high} (maxReplicas); "
            "to run none, stop the deployment",
        )
    ]


def load_spec(text: str) -> DeploymentSpec:
    return validate_spec(parse_document(text))


def spec_json_schema() -> dict[str, Any]:
    return DeploymentSpec.model_json_schema(by_alias=True)
