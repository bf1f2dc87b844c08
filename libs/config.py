"""berth settings, read from ``BERTH_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faststream.nats import NatsUserPassword


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BERTH_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path(".berth"), description="State of the embedded default.")
    nats_url: str | None = Field(
        default=None, description="Existing NATS server; when unset `berth up` starts its own."
    )
    nats_port: int = Field(default=4333, description="Port of the nats-server that `berth up` starts.")
    # One NATS user per service (libs/busauth.py): `berth up` sets these for each service it starts.
    nats_user: str | None = Field(default=None, description="This service's NATS user.")
    nats_password: SecretStr | None = Field(default=None, description="This service's NATS password.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite in the data directory when unset."
    )
    runtime: Literal["local", "kubernetes"] = "local"
    # Keys that seal secret values (libs/sealing.py), newest first: the variable, else the file.
    secrets_key: SecretStr | None = Field(
        default=None, description="Fernet keys sealing secret values, comma-separated, newest first."
    )
    secrets_key_file: Path | None = Field(
        default=None, description="File of sealing keys, one a line, newest first; <data dir>/secrets.key when unset."
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    router_host: str = "127.0.0.1"
    router_port: int = 8000
    ops_host: str = Field(default="127.0.0.1", description="Interface of /healthz and /metrics (0.0.0.0 in a container).")
    scheduler_ops_port: int = Field(default=8091, description="/healthz and /metrics of the scheduler.")
    health_monitor_ops_port: int = Field(default=8092, description="/healthz and /metrics of the health-monitor.")
    integrations_ops_port: int = Field(default=8094, description="/healthz and /metrics of the integrations service.")
    integrations_dir: Path | None = Field(
        default=None, description="Cache of fetched integrations; <data dir>/integrations when unset."
    )
    integrations_cache_max_bytes: int | None = Field(
        default=None, ge=1,
        description="Size limit of the integrations cache; least recently used content not used by a running "
        "revision is removed to fit. No limit when unset.",
    )  # fmt: skip
    integrations_concurrent_fetches: int = Field(
        default=4, ge=1, le=64,
        description="Integrations fetched at once (different sources; one source is never fetched twice at once).",
    )  # fmt: skip
    router_workers: int = Field(
        default=1, ge=0, le=256,
        description="Router processes serving router_port together (SO_REUSEPORT), each with its own bus "
        "connection, routing table and pools; 0: one per CPU core this process may run on.",
    )  # fmt: skip
    router_metrics_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often the router publishes RequestMetricsReported."
    )
    metrics_max_deployments: int = Field(
        default=1000, ge=1,
        description="Deployments with series of their own on /metrics; the rest are summed as deployment=\"_overflow\".",
    )  # fmt: skip
    logs_retention_seconds: float = Field(
        default=24 * 3600.0, ge=0,
        description="Local runtime: how long the output of a stopped (replaced) replica is kept; 0 keeps none.",
    )  # fmt: skip
    logs_retained_max_bytes: int = Field(
        default=1024**3, ge=0, description="Local runtime: the most the kept output of stopped replicas may take."
    )
    router_response_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long the router waits for a replica's response head before answering 504.",
    )
    # ip-hash keys on the socket peer unless the router sits behind a proxy that sets X-Forwarded-For.
    router_trust_forwarded_for: bool = False
    # `berth up` sets this: stopping berth stops its replicas. A scheduler run on its own leaves them
    # running so that the next scheduler adopts them (an upgrade must not take the endpoints down).
    stop_replicas_on_exit: bool = False

    # The token `berth up` creates for the `default` project on first start; the CLI reads it too.
    token: str | None = None
    api_url: str | None = None

    log_level: str = "INFO"
    log_json: bool = True

    reconcile_interval_seconds: float = 10.0
    traffic_drain_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Between publishing an assignment that removes replicas and stopping them: time for routers to apply it.",
    )
    usage_report_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often the scheduler publishes ReplicaUsageReported (one per deployment with replicas)."
    )
    autoscaler_ops_port: int = Field(default=8093, description="/healthz and /metrics of the autoscaler.")
    autoscaler_interval_seconds: float = Field(
        default=15.0, gt=0, description="How often the autoscaler decides (the HPA's --horizontal-pod-autoscaler-sync-period)."
    )
    autoscaler_metrics_window_seconds: float = Field(
        default=15.0, gt=0, description="Router reports within this span are combined into one sample."
    )
    stop_grace_seconds: float = 10.0
    up_processes: Literal["shared", "per-service"] = Field(
        # The default since a SIGKILL no longer grows the supervisor's back-off: under the crash-consistency
        # chaos the shared process, restarted whole at each kill of any of its services, had backed off to
        # 30 s and kept the API down past the test's 120 s (docs/architecture.md).
        default="shared",
        description="`berth up`: the control-plane services in one process (shared) or each in its own;"
        " the router always runs in its own (docs/architecture.md).",
    )
    alerting_ops_port: int = Field(default=8096, description="/healthz and /metrics of the alerting service.")
    alerting_interval_seconds: float = Field(
        default=15.0, gt=0, description="How often every alerting rule is evaluated (Prometheus' evaluation_interval)."
    )

    # The metrics history (services/metrics, docs/monitoring.md).
    metrics_ops_port: int = Field(default=8095, description="/healthz and /metrics of the metrics service.")
    metrics_database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the metrics history; <data dir>/metrics.db when unset."
    )
    metrics_resolution_seconds: int = Field(default=10, ge=1, description="Full resolution of the history.")
    metrics_raw_retention_seconds: int = Field(default=24 * 3600, ge=60, description="How long full resolution is kept.")
    metrics_downsampled_step_seconds: int = Field(default=300, ge=60, description="Resolution of the older history.")
    metrics_downsampled_retention_seconds: int = Field(
        default=30 * 24 * 3600, ge=3600, description="How long the downsampled history is kept."
    )
    metrics_summary_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often DeploymentMetricsSummarized is published per deployment."
    )

    # runtime: kubernetes (docs/kubernetes.md). No kubeconfig: in-cluster config, else ~/.kube/config.
    kubeconfig: Path | None = Field(default=None, description="Kubeconfig file of the kubernetes runtime.")
    kubernetes_context: str | None = None
    kubernetes_namespace: str = Field(default="berth", description="Namespace of every workload berth runs.")
    kubernetes_machine_types: Path | None = Field(
        default=None, description="YAML file adding to or replacing the machineType table (docs/kubernetes.md)."
    )
    kubernetes_integrations_image: str | None = Field(
        default=None,
        description="Image of the init container that fetches integrations into each Pod: berth's own "
        "(default: berth:<this version>; the chart sets the image it installs).",
    )
    # Several schedulers: the one holding the Lease `berth-scheduler` (in kubernetes_namespace) acts.
    scheduler_leader_election: bool = False
    scheduler_lease_seconds: float = Field(default=10.0, gt=1, description="A dead leader is replaced after this.")

    @property
    def token_file(self) -> Path:
        return self.data_dir / "token"

    def resolved_token(self) -> str | None:
        if self.token:
            return self.token
        return self.token_file.read_text().strip() if self.token_file.exists() else None

    @property
    def resolved_integrations_dir(self) -> Path:
        return self.integrations_dir or self.data_dir / "integrations"

    @property
    def resolved_secrets_key_file(self) -> Path:
        return self.secrets_key_file or self.data_dir / "secrets.key"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'berth.db').resolve()}"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def resolved_nats_url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"

    def nats_security(self) -> NatsUserPassword | None:
        """The credentials to connect to NATS with, when a user is set."""
        if self.nats_user is None:
            return None
        # Imported here: faststream is ~40 MiB that `berth up`'s supervisor, which reads settings, does without.
        from faststream.nats import NatsUserPassword

        password = self.nats_password.get_secret_value() if self.nats_password else ""
        return NatsUserPassword(self.nats_user, password)


@lru_cache
def get_settings() -> Settings:
    return Settings()
