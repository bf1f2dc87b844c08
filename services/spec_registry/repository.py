"""SQL reads and writes of the registry. Synchronous: the async layer runs them in worker threads.

Every write that changes a deployment commits its outbox event in the same transaction
(transactional outbox); the relay publishes it afterwards.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from libs.events import (
    DeploymentDeleted,
    DeploymentMetricsSummarized,
    AliasTarget,
    DeploymentAliasSet,
    DeploymentPromoted,
    DeploymentScaled,
    DeploymentStatusChanged,
    Event,
    IntegrationsRetryRequested,
    SpecApplied,
    Webhook,
    WebhooksChanged,
    new_id,
)
from libs.spec import DeploymentSpec, SpecError
from libs.store import (
    AliasRow,
    DeploymentRow,
    DeploymentStatusRow,
    OutboxRow,
    ProjectRow,
    SecretNameRow,
    SpecVersionRow,
    Store,
    TokenRow,
    WebhookRow,
    reader,
    utcnow,
)
from libs.telemetry import trace_headers
from services.spec_registry.faults import crash_point
from services.spec_registry.problems import Conflict, Invalid, NotFound, StaleVersion
from services.spec_registry.scale import holds, wanted

DEFAULT_PROJECT = "default"
WebhookOutcome = Literal["created", "updated", "unchanged"]
RENAME_RULE = (
    "deployment name cannot be edited: create a deployment with the new name, move traffic to it "
    "(or an alias), then delete this one"
)


@dataclass(frozen=True)
class Principal:
    """Who a token speaks for: one project, and whether it may also manage projects."""

    project: str
    is_admin: bool
    token_id: int | None = None  # recorded as the author of the spec versions it creates


@dataclass(frozen=True)
class StoredDeployment:
    row: DeploymentRow
    spec: dict[str, Any]  # as submitted
    status: dict[str, Any] | None  # the newest DeploymentStatusChanged, or None before the first
    unchanged: bool = False  # the write asked for what was already so: nothing stored, nothing published


def submitted(spec: DeploymentSpec) -> dict[str, Any]:
    """The spec as the user wrote it (defaults left out), which is what the API shows and stores."""
    return spec.model_dump(mode="json", exclude_unset=True)


def canonical(spec: DeploymentSpec | dict[str, Any]) -> dict[str, Any]:
    """The spec with every default filled in: two specs that mean the same compare equal, however
    they were written (key order, a default spelled out or left out, YAML or JSON)."""
    model = spec if isinstance(spec, DeploymentSpec) else DeploymentSpec.model_validate(spec)
    return model.model_dump(mode="json")


@dataclass(frozen=True)
class Committed:
    """An outbox event as its transaction committed it, handed to the relay in memory so that it
    publishes it without reading the row back and decoding it again (the row stays the durable copy)."""

    id: int
    subject: str
    event: Event
    headers: dict[str, str] | None

    @property
    def msg_id(self) -> str:
        return self.event.event_id


# The events the current write transaction added (set by `_write_with_event` in the thread that runs it).
_COMMITTING: ContextVar[list[Committed] | None] = ContextVar("committing", default=None)


# Canonical forms of recent current specs, by spec_id (immutable): an update compares against the
# current spec without validating it again. Bounded; cleared whole when full (the next update refills).
CANONICAL_CACHE_SIZE = 4096

_DEPLOYMENTS: sa.Table = DeploymentRow.__table__  # type: ignore[attr-defined]
_VERSIONS: sa.Table = SpecVersionRow.__table__  # type: ignore[attr-defined]
_STATUS: sa.Table = DeploymentStatusRow.__table__  # type: ignore[attr-defined]
_OUTBOX: sa.Table = OutboxRow.__table__  # type: ignore[attr-defined]

# The statements of a spec update, built once with bound parameters: building a Core statement and
# computing its cache key (the compiled form is cached on that key) cost more CPU than executing it
# (about 40 % of an update's SQL time, docs/benchmarks.md); a statement built once keeps its key.
# The row alone is locked (and re-read after a concurrent update committed): a join here would let
# PostgreSQL drop the updated row from the answer instead of giving its new version.
_LOCK_DEPLOYMENT = (
    sa.select(_DEPLOYMENTS)
    .where(
        _DEPLOYMENTS.c.project == sa.bindparam("project"),
        sa.or_(_DEPLOYMENTS.c.id == sa.bindparam("ref"), _DEPLOYMENTS.c.slug == sa.bindparam("ref")),
    )
    .with_for_update()
)
_CURRENT_SPEC = (
    sa.select(_VERSIONS.c.spec, _STATUS.c.status)
    .outerjoin(_STATUS, _STATUS.c.deployment_id == _VERSIONS.c.deployment_id)
    .where(_VERSIONS.c.spec_id == sa.bindparam("current_spec_id"))
)
# SET takes the columns the parameters name (all but the key and the creation time).
_UPDATE_DEPLOYMENT = sa.update(_DEPLOYMENTS).where(_DEPLOYMENTS.c.id == sa.bindparam("row_id"))
_UPDATED_COLUMNS = tuple(c.name for c in _DEPLOYMENTS.c if c.name not in ("id", "created_at"))
_INSERT_VERSION = sa.insert(_VERSIONS)
_INSERT_EVENT = sa.insert(_OUTBOX)
_PENDING_IDS = (
    sa.select(_OUTBOX.c.id)
    .where(_OUTBOX.c.published_at.is_(None), _OUTBOX.c.set_aside_at.is_(None))
    .order_by(_OUTBOX.c.id)
    .limit(sa.bindparam("limit"))
)


class Repository:
    """`store`: the writer and reader engines (libs/store); a bare engine serves both."""

    def __init__(self, store: Store | sa.Engine) -> None:
        if isinstance(store, sa.Engine):
            store = Store(store, reader(store))
        self._engine = store.writer
        self._reader = store.reader
        self._canonical: dict[str, dict[str, Any]] = {}
        # A file SQLite database: its one writer connection, WAL, synchronous=NORMAL (libs/store).
        self._local_writer = self._engine.dialect.name == "sqlite" and isinstance(self._engine.pool, sa.pool.QueuePool)
        # Given the outbox events of each write after its commit (in the writer's thread): the relay's.
        self.on_commit: Callable[[list[Committed]], None] | None = None

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._reader, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _write_with_event(self) -> Iterator[Session]:
        """A write that adds an outbox event: the test-only crash hook fires right after its commit,
        then the events committed are handed to `on_commit`."""
        with self._handing_over(), self._write() as session:
            yield session

    @contextmanager
    def _core_write_with_event(self) -> Iterator[sa.Connection]:
        """`_write_with_event` on SQLAlchemy Core, for the hot path (spec updates): no unit of work."""
        with self._handing_over(), self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _handing_over(self) -> Iterator[None]:
        """Collect the events `_add_event` inserts; after the commit (and only then: a write that
        failed, even at COMMIT, hands nothing, and the relay reads whatever did commit) hand them over."""
        committed: list[Committed] = []
        token = _COMMITTING.set(committed)
        try:
            yield
        finally:
            _COMMITTING.reset(token)
        crash_point("crash_after_commit")
        if committed and self.on_commit is not None:
            self.on_commit(committed)

    def _canonical_of(self, spec_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        found = self._canonical.get(spec_id)
        if found is None:
            found = self._remember(spec_id, canonical(spec))
        return found

    def _remember(self, spec_id: str, canonical_spec: dict[str, Any]) -> dict[str, Any]:
        if len(self._canonical) >= CANONICAL_CACHE_SIZE:
            self._canonical.clear()
        self._canonical[spec_id] = canonical_spec
        return canonical_spec

    def writes_inline(self) -> bool:
        """Whether a write is best run on the caller's thread (the event loop) rather than a worker
        thread: on SQLite a transaction is local CPU and a ~0.1 ms COMMIT, less than the hand-off to a
        thread and back (docs/benchmarks.md), as long as the writer connection is free; when a worker
        thread holds it the write goes to a thread too, so the loop never waits for it. PostgreSQL:
        never (round trips over the network)."""
        return self._local_writer and self._engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    def ping(self) -> bool:
        with self._read() as session:
            return session.exec(select(sa.literal(1))).one() == 1

    # -- projects and tokens ------------------------------------------------------------------------

    def has_admin(self) -> bool:
        with self._read() as session:
            return session.exec(select(TokenRow).where(col(TokenRow.is_admin))).first() is not None

    def bootstrap(self, token_hash: str) -> None:
        """Create project `default` and its admin token (first start)."""
        with self._write() as session:
            if session.get(ProjectRow, DEFAULT_PROJECT) is None:
                session.add(ProjectRow(name=DEFAULT_PROJECT))
                session.flush()
            session.add(TokenRow(project=DEFAULT_PROJECT, token_hash=token_hash, is_admin=True))

    def principal(self, token_hash: str) -> Principal | None:
        with self._read() as session:
            row = session.exec(select(TokenRow).where(TokenRow.token_hash == token_hash)).first()
        # The lookup is by digest of a high-entropy token; the constant-time compare keeps the final
        # check free of timing differences anyway.
        if row is None or not hmac.compare_digest(row.token_hash, token_hash):
            return None
        return Principal(project=row.project, is_admin=row.is_admin, token_id=row.id)

    def create_project(self, name: str, token_hash: str) -> None:
        try:
            with self._write() as session:
                if session.get(ProjectRow, name) is not None:
                    raise Conflict("a project of this name exists")
                session.add(ProjectRow(name=name))
                session.flush()
                session.add(TokenRow(project=name, token_hash=token_hash))
        except IntegrityError as exc:
            raise Conflict("a project of this name exists") from exc

    def add_token(self, project: str, token_hash: str) -> None:
        with self._write() as session:
            if session.get(ProjectRow, project) is None:
                raise NotFound("no project of this name", field="project")
            session.add(TokenRow(project=project, token_hash=token_hash))

    # -- deployments ----------------------------------------------------------------------------------

    def create_deployment(self, project: str, spec: DeploymentSpec, by: int | None = None) -> StoredDeployment:
        try:
            with self._write_with_event() as session:
                taken = self._taken(session, project, spec, exclude_id=None)
                if taken is not None:
                    raise _name_taken(taken)
                now = utcnow()
                row = DeploymentRow(
                    id=new_id(),
                    project=project,
                    name=spec.name,
                    slug=spec.slug,
                    environment=spec.environment,
                    spec_id=new_id(),
                    spec_version=1,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
                self._add_version(session, row, spec, by)
        except IntegrityError as exc:
            raise Conflict("a deployment with this name, or one with the same slug, exists in the project") from exc
        return StoredDeployment(row, submitted(spec), None)

    def update_deployment(
        self, project: str, ref: str, spec: DeploymentSpec, if_match: list[str], by: int | None = None
    ) -> StoredDeployment:
        """A new spec version based on the one `if_match` names. One transaction on SQLAlchemy Core
        (the hot path of every apply), its statements built once: lock the deployment's row, read its
        current spec and status, update it, insert the version and its outbox event."""
        try:
            with self._core_write_with_event() as connection:
                found = connection.execute(_LOCK_DEPLOYMENT, {"project": project, "ref": ref}).all()
                if not found:
                    raise NotFound("no deployment with this id or slug in the project")
                row = _deployment_row(next((r for r in found if r.id == ref), found[0])._mapping)
                self._check_update(connection, project, row, spec, if_match)
                current = connection.execute(_CURRENT_SPEC, {"current_spec_id": row.spec_id}).one()
                status = current.status
                new_canonical = canonical(spec)
                if self._canonical_of(row.spec_id, current.spec) == new_canonical:
                    return StoredDeployment(row, current.spec, status, unchanged=True)
                row.spec_id, row.spec_version = new_id(), row.spec_version + 1
                row.environment, row.updated_at = spec.environment, utcnow()
                self._supersede_scale(connection, row, spec)
                connection.execute(
                    _UPDATE_DEPLOYMENT, {"row_id": row.id, **{name: getattr(row, name) for name in _UPDATED_COLUMNS}}
                )
                self._add_version(connection, row, spec, by)
        except IntegrityError as exc:  # another update based on the same version committed first
            raise StaleVersion("the deployment changed meanwhile; read it again") from exc
        self._remember(row.spec_id, new_canonical)
        return StoredDeployment(row, submitted(spec), status)

    def preview_update(self, project: str, ref: str, spec: DeploymentSpec, if_match: list[str]) -> StoredDeployment:
        """The current version, after the checks the update would make (a dry run stores nothing)."""
        with self._read() as session:
            row = self._find(session, project, ref)
            self._check_update(session, project, row, spec, if_match)
            version = self._version(session, row)
        return StoredDeployment(row, version.spec, None)

    def preview_create(self, project: str, spec: DeploymentSpec) -> None:
        """Raise what creating `spec` would raise (409 when the name is taken)."""
        with self._read() as session:
            taken = self._taken(session, project, spec, exclude_id=None)
        if taken is not None:
            raise _name_taken(taken)

    def scale_deployment(self, project: str, ref: str, replicas: int) -> StoredDeployment:
        """Record the user's decision to run `replicas` (no new spec version) and publish it as
        DeploymentScaled; unchanged when that is already the count the user controls."""
        with self._write_with_event() as session:
            row = self._find(session, project, ref, for_update=True)
            version = self._version(session, row)
            status = session.get(DeploymentStatusRow, row.id)
            spec = DeploymentSpec.model_validate(version.spec)
            if replicas == wanted(row, spec):
                return StoredDeployment(row, version.spec, status.status if status else None, unchanged=True)
            row.scale_replicas, row.scale_spec_version = replicas, row.spec_version
            row.scale_spec_replicas, row.scaled_at = spec.resources.replicas, utcnow()
            row.updated_at = row.scaled_at
            session.add(row)
            self._add_scaled(session, row, replicas, spec.resources.replicas, f"scaled by the user to {replicas}")
        return StoredDeployment(row, version.spec, status.status if status else None)

    def request_retry(self, project: str, ref: str) -> StoredDeployment:
        """Publish the user's request to fetch the deployment's integrations again now."""
        with self._write_with_event() as session:
            row = self._find(session, project, ref)
            version = self._version(session, row)
            status = session.get(DeploymentStatusRow, row.id)
            self._add_event(session, IntegrationsRetryRequested(deployment_id=row.id, project=project, slug=row.slug))
        return StoredDeployment(row, version.spec, status.status if status else None)

    def delete_deployment(self, project: str, ref: str) -> None:
        with self._write_with_event() as session:
            row = self._find(session, project, ref, for_update=True)
            for table in (DeploymentStatusRow, AliasRow, SpecVersionRow):
                session.execute(sa.delete(table).where(col(table.deployment_id) == row.id))
            session.delete(row)
            self._add_event(session, DeploymentDeleted(deployment_id=row.id, project=project, slug=row.slug))

    def get_deployment(self, project: str, ref: str) -> StoredDeployment:
        with self._read() as session:
            row = self._find(session, project, ref)
            version = self._version(session, row)
            status = session.get(DeploymentStatusRow, row.id)
        return StoredDeployment(row, version.spec, status.status if status else None)

    def list_deployments(
        self, project: str, environment: str | None, limit: int, after_name: str | None = None
    ) -> list[StoredDeployment]:
        """Up to `limit` deployments by name, those named after `after_name` when given."""
        query = (
            select(DeploymentRow, SpecVersionRow, DeploymentStatusRow)
            .join(SpecVersionRow, col(SpecVersionRow.spec_id) == DeploymentRow.spec_id)
            .join(DeploymentStatusRow, col(DeploymentStatusRow.deployment_id) == DeploymentRow.id, isouter=True)
            .where(DeploymentRow.project == project)
            .order_by(col(DeploymentRow.name))
            .limit(limit)
        )
        if environment is not None:
            query = query.where(DeploymentRow.environment == environment)
        if after_name is not None:
            query = query.where(col(DeploymentRow.name) > after_name)
        with self._read() as session:
            rows = session.exec(query).all()
        return [StoredDeployment(d, v.spec, s.status if s else None) for d, v, s in rows]

    def history(self, project: str, ref: str, limit: int, before_version: int | None = None) -> list[SpecVersionRow]:
        """Up to `limit` versions, newest first; those older than `before_version` when given."""
        with self._read() as session:
            row = self._find(session, project, ref)
            query = (
                select(SpecVersionRow)
                .where(SpecVersionRow.deployment_id == row.id)
                .order_by(col(SpecVersionRow.version).desc())
                .limit(limit)
            )
            if before_version is not None:
                query = query.where(col(SpecVersionRow.version) < before_version)
            return list(session.exec(query).all())

    def spec_version(self, project: str, ref: str, version: int) -> SpecVersionRow:
        with self._read() as session:
            return self._version_row(session, self._find(session, project, ref), version)

    # -- aliases --------------------------------------------------------------------------------------

    def aliases(self, project: str, ref: str) -> list[AliasRow]:
        with self._read() as session:
            row = self._find(session, project, ref)
            return self._aliases(session, row.id)

    def set_alias(self, project: str, ref: str, alias: str, version: int, limit: int) -> tuple[AliasRow, bool]:
        """Point `alias` at spec `version` (creating or moving it); the row and whether it changed.
        Publishes it with its version's spec."""
        with self._write_with_event() as session:
            row = self._find(session, project, ref, for_update=True)
            known = {a.name: a for a in self._aliases(session, row.id)}
            current = known.get(alias)
            if current is not None and current.spec_version == version:
                return current, False
            target = self._version_row(session, row, version)  # 404 naming spec_version when there is none
            if current is None and len(known) >= limit:
                raise Invalid(
                    "too many aliases", [SpecError("alias", f"a deployment has at most {limit} aliases")]
                )
            current = current or AliasRow(deployment_id=row.id, name=alias, spec_version=version)
            current.spec_version, current.updated_at = version, utcnow()
            session.add(current)
            self._add_alias_event(session, row, alias, target)
        return current, True

    def remove_alias(self, project: str, ref: str, alias: str) -> None:
        with self._write_with_event() as session:
            row = self._find(session, project, ref, for_update=True)
            found = session.get(AliasRow, (row.id, alias))
            if found is None:
                raise NotFound("the deployment has no alias of this name", field="alias")
            session.delete(found)
            self._add_alias_event(session, row, alias, None)

    def promote(self, project: str, ref: str) -> StoredDeployment:
        """Publish that the current version's update is promoted (no new version: nothing in the spec changes)."""
        with self._write_with_event() as session:
            row = self._find(session, project, ref, for_update=True)
            version = self._version(session, row)
            status = session.get(DeploymentStatusRow, row.id)
            event = DeploymentPromoted(
                deployment_id=row.id, project=row.project, slug=row.slug, spec_version=row.spec_version
            )
            self._add_event(session, event)
        return StoredDeployment(row, version.spec, status.status if status else None)

    # -- status read model ------------------------------------------------------------------------------

    def save_status(self, event: DeploymentStatusChanged) -> bool:
        """Keep the newest status of a deployment; older (re-delivered, reordered) events are ignored."""
        with self._write() as session:
            if session.get(DeploymentRow, event.deployment_id) is None:
                return False  # deleted meanwhile
            row = session.get(DeploymentStatusRow, event.deployment_id)
            if row is not None and row.occurred_at >= event.occurred_at:
                return False
            status = event.model_dump(
                mode="json",
                include={"phase", "reason", "desired_replicas", "ready_replicas", "replicas", "not_provided", "scale_reason",
                         "integrations", "fetching"},
            )
            status["observed_at"] = event.occurred_at.isoformat()
            if row is not None and "metrics" in row.status:  # the metrics service's figures stay
                status["metrics"] = row.status["metrics"]
            row = row or DeploymentStatusRow(
                deployment_id=event.deployment_id, occurred_at=event.occurred_at, status={}
            )
            row.occurred_at, row.status = event.occurred_at, status
            session.add(row)
            if event.rolled_back_version is not None:
                self._mark_rolled_back(session, event)
            return True

    def save_metrics(self, event: DeploymentMetricsSummarized) -> bool:
        """Fold the metrics service's current figures into the status read model (newest kept)."""
        with self._write() as session:
            if session.get(DeploymentRow, event.deployment_id) is None:
                return False
            row = session.get(DeploymentStatusRow, event.deployment_id)
            if row is None:  # before the scheduler's first report: a status of figures only
                row = DeploymentStatusRow(
                    deployment_id=event.deployment_id, occurred_at=datetime.fromtimestamp(0, UTC), status={}
                )
            current = row.status.get("metrics")
            if current is not None and current["at"] >= event.summary.at.isoformat():
                return False
            row.status = {**row.status, "metrics": event.summary.model_dump(mode="json")}
            session.add(row)
            return True

    @staticmethod
    def _mark_rolled_back(session: Session, event: DeploymentStatusChanged) -> None:
        """History keeps the first time the scheduler rolled a version back by itself, and why."""
        query = select(SpecVersionRow).where(
            SpecVersionRow.deployment_id == event.deployment_id, SpecVersionRow.version == event.rolled_back_version
        )
        version = session.exec(query).first()
        if version is not None and version.rolled_back_at is None:
            version.rolled_back_at, version.rolled_back_reason = event.occurred_at, event.rolled_back_reason
            session.add(version)

    # -- secret names (the values are in JetStream KV) ------------------------------------------------

    def secret_names(self, project: str) -> set[str]:
        with self._read() as session:
            query = select(SecretNameRow.name).where(SecretNameRow.project == project)
            return set(session.exec(query).all())

    def secret_users(self, project: str) -> dict[str, list[str]]:
        """Secret name -> names of the deployments whose current spec refers to it (sorted)."""
        query = (
            select(DeploymentRow.name, SpecVersionRow.spec)
            .join(SpecVersionRow, col(SpecVersionRow.spec_id) == DeploymentRow.spec_id)
            .where(DeploymentRow.project == project)
        )
        users: dict[str, set[str]] = {}
        with self._read() as session:
            for name, spec in session.exec(query).all():
                for _, secret in DeploymentSpec.model_validate(spec).secret_ref_fields():
                    users.setdefault(secret, set()).add(name)
        return {secret: sorted(names) for secret, names in users.items()}

    def has_secret(self, project: str, name: str) -> bool:
        with self._read() as session:
            return session.get(SecretNameRow, (project, name)) is not None

    def add_secret_name(self, project: str, name: str) -> None:
        with contextlib.suppress(IntegrityError), self._write() as session:  # there already: nothing to do
            if session.get(SecretNameRow, (project, name)) is None:
                session.add(SecretNameRow(project=project, name=name))

    def remove_secret_name(self, project: str, name: str) -> None:
        with self._write() as session:
            session.execute(
                sa.delete(SecretNameRow).where(col(SecretNameRow.project) == project, col(SecretNameRow.name) == name)
            )

    def backfill_secret_names(self, names: set[tuple[str, str]]) -> int:
        """Index the (project, name)s of secrets stored before the index existed; how many were new.
        Only adds: the values are written first, so a name in the index and not in the bucket comes
        only from a delete that failed half-way, which the next delete completes."""
        with self._write() as session:
            projects = set(session.exec(select(ProjectRow.name)).all())
            held = {(row.project, row.name) for row in session.exec(select(SecretNameRow)).all()}
            new = {(p, n) for p, n in names if p in projects} - held
            session.add_all(SecretNameRow(project=p, name=n) for p, n in new)
        return len(new)

    # -- webhooks (alert transitions are POSTed to them by the alerting service) ---------------------------

    def webhooks(self, project: str) -> list[WebhookRow]:
        with self._read() as session:
            return self._webhooks(session, project)

    def set_webhook(self, project: str, url: str, secret: str, limit: int) -> tuple[WebhookRow, WebhookOutcome]:
        """Add the webhook, or point an existing one (same URL) at another key; the row and what was
        done. Publishes the project's webhooks, all of them, with the change."""
        with self._write_with_event() as session:
            current = {row.url: row for row in self._webhooks(session, project)}
            row = current.get(url)
            if row is not None and row.secret == secret:
                return row, "unchanged"
            outcome: WebhookOutcome = "updated" if row is not None else "created"
            if row is None and len(current) >= limit:
                raise Invalid("too many webhooks", [SpecError("url", f"a project has at most {limit} webhooks")])
            row = row or WebhookRow(project=project, url=url, secret=secret)
            row.secret, row.updated_at = secret, utcnow()
            session.add(row)
            session.flush()
            self._add_webhooks_event(session, project)
        return row, outcome

    def delete_webhook(self, project: str, url: str) -> None:
        with self._write_with_event() as session:
            row = session.get(WebhookRow, (project, url))
            if row is None:
                raise NotFound("the project has no webhook with this URL", field="url")
            session.delete(row)
            session.flush()
            self._add_webhooks_event(session, project)

    @staticmethod
    def _webhooks(session: Session, project: str) -> list[WebhookRow]:
        query = select(WebhookRow).where(WebhookRow.project == project).order_by(col(WebhookRow.url))
        return list(session.exec(query).all())

    def _add_webhooks_event(self, session: Session, project: str) -> None:
        hooks = [Webhook(url=row.url, secret=row.secret) for row in self._webhooks(session, project)]
        self._add_event(session, WebhooksChanged(project=project, webhooks=hooks))

    # -- outbox -------------------------------------------------------------------------------------------

    def pending_events(self, limit: int) -> list[OutboxRow]:
        """Unpublished events in commit order, less those set aside."""
        with self._read() as session:
            query = select(OutboxRow).where(_pending()).order_by(col(OutboxRow.id)).limit(limit)
            return list(session.exec(query).all())

    def pending_outbox(self, limit: int, known: Container[int]) -> list[OutboxRow | int]:
        """`pending_events` for the relay: the ids in `known` (events it was handed, `on_commit`) as
        they are, only the others read whole. The table decides what is pending and in which order."""
        with self._read() as session:
            ids = list(session.execute(_PENDING_IDS, {"limit": limit}).scalars())
            unknown = {id_ for id_ in ids if id_ not in known}
            rows: dict[int | None, OutboxRow] = {}
            if unknown:
                rows = {row.id: row for row in session.exec(select(OutboxRow).where(col(OutboxRow.id).in_(unknown)))}
        # An unknown row gone between the two reads was published or pruned meanwhile: left out.
        return [rows[id_] if id_ in unknown else id_ for id_ in ids if id_ not in unknown or id_ in rows]

    def set_aside(self, event_id: int, reason: str) -> None:
        """The relay cannot publish this event: keep it, with why, and pass over it from now on."""
        with self._write() as session:
            session.execute(
                sa.update(OutboxRow)
                .where(col(OutboxRow.id) == event_id)
                .values(set_aside_at=utcnow(), set_aside_reason=reason[:500])
            )

    def set_aside_count(self) -> int:
        with self._read() as session:
            query = select(sa.func.count()).select_from(OutboxRow).where(col(OutboxRow.set_aside_at).is_not(None))
            return int(session.exec(query).one())

    def mark_published(self, ids: list[int]) -> None:
        with self._write() as session:
            session.execute(sa.update(OutboxRow).where(col(OutboxRow.id).in_(ids)).values(published_at=utcnow()))

    def prune_published(self, before: datetime) -> int:
        """Forget events published before `before`; how many. Pending ones are kept whatever their age."""
        with self._write() as session:
            result = session.execute(
                sa.delete(OutboxRow).where(col(OutboxRow.published_at).is_not(None), col(OutboxRow.published_at) < before)
            )
            return int(result.rowcount)

    def outbox_lag(self) -> int:
        with self._read() as session:
            query = select(sa.func.count()).select_from(OutboxRow).where(_pending())
            return int(session.exec(query).one())

    # -- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _find(session: Session, project: str, ref: str, for_update: bool = False) -> DeploymentRow:
        query = select(DeploymentRow).where(
            DeploymentRow.project == project, sa.or_(col(DeploymentRow.id) == ref, col(DeploymentRow.slug) == ref)
        )
        if for_update:
            query = query.with_for_update()
        found = session.exec(query).all()
        if not found:
            raise NotFound("no deployment with this id or slug in the project")
        return next((row for row in found if row.id == ref), found[0])

    @staticmethod
    def _version(session: Session, row: DeploymentRow) -> SpecVersionRow:
        version = session.get(SpecVersionRow, row.spec_id)
        assert version is not None, "a deployment always points at one of its versions"
        return version

    def _check_update(
        self, session: Session | sa.Connection, project: str, row: DeploymentRow, spec: DeploymentSpec, if_match: list[str]
    ) -> None:
        if row.spec_id not in if_match:
            raise StaleVersion(
                f"the deployment is at spec version {row.spec_version} (spec_id {row.spec_id}); "
                "read it again and apply your change to that version"
            )
        if spec.name != row.name:
            taken = self._taken(session, project, spec, exclude_id=row.id)
            if taken is not None:
                raise _name_taken(taken)
            raise Invalid("a deployment cannot be renamed", [SpecError("name", RENAME_RULE)])

    @staticmethod
    def _version_row(session: Session, row: DeploymentRow, version: int) -> SpecVersionRow:
        query = select(SpecVersionRow).where(SpecVersionRow.deployment_id == row.id, SpecVersionRow.version == version)
        found = session.exec(query).first()
        if found is None:
            raise NotFound("the deployment has no spec version of this number", field="spec_version")
        return found

    @staticmethod
    def _aliases(session: Session, deployment_id: str) -> list[AliasRow]:
        query = select(AliasRow).where(AliasRow.deployment_id == deployment_id).order_by(col(AliasRow.name))
        return list(session.exec(query).all())

    def _add_alias_event(self, session: Session | sa.Connection, row: DeploymentRow, alias: str, version: SpecVersionRow | None) -> None:
        target = None
        if version is not None:
            spec = DeploymentSpec.model_validate(version.spec)
            target = AliasTarget(spec_version=version.version, spec_id=version.spec_id, spec=spec)
        event = DeploymentAliasSet(deployment_id=row.id, project=row.project, slug=row.slug, alias=alias, target=target)
        self._add_event(session, event)

    def _supersede_scale(self, session: Session | sa.Connection, row: DeploymentRow, spec: DeploymentSpec) -> None:
        """A spec that sets another `resources.replicas` than the user's scale was made against ends
        that decision. The decision is also replaced on the bus by one that follows the new spec, so
        a later spec returning to the old count does not bring the old decision back."""
        if row.scale_replicas is None or holds(row, spec):
            return
        row.scale_replicas = row.scale_spec_version = row.scale_spec_replicas = row.scaled_at = None
        replicas = spec.resources.replicas
        self._add_scaled(session, row, replicas, replicas, f"superseded by spec version {row.spec_version}")

    def _add_scaled(self, session: Session | sa.Connection, row: DeploymentRow, replicas: int, spec_replicas: int, reason: str) -> None:
        self._add_event(
            session,
            DeploymentScaled(
                deployment_id=row.id,
                project=row.project,
                slug=row.slug,
                source="user",
                replicas=replicas,
                spec_version=row.spec_version,
                spec_replicas=spec_replicas,
                reason=reason,
            ),
        )

    @staticmethod
    def _taken(
        session: Session | sa.Connection, project: str, spec: DeploymentSpec, exclude_id: str | None
    ) -> DeploymentRow | None:
        query = sa.select(_DEPLOYMENTS).where(
            _DEPLOYMENTS.c.project == project,
            sa.or_(_DEPLOYMENTS.c.name == spec.name, _DEPLOYMENTS.c.slug == spec.slug),
        )
        if exclude_id is not None:
            query = query.where(_DEPLOYMENTS.c.id != exclude_id)
        found = session.execute(query).first()
        return None if found is None else _deployment_row(found._mapping)

    def _add_version(
        self, session: Session | sa.Connection, row: DeploymentRow, spec: DeploymentSpec, by: int | None
    ) -> None:
        """Insert the version and its SpecApplied (Core statements: on a Session they run at once, after
        the deployment row it refers to was flushed)."""
        session.execute(
            _INSERT_VERSION,
            {
                "spec_id": row.spec_id,
                "deployment_id": row.id,
                "version": row.spec_version,
                "spec": submitted(spec),
                "created_at": row.updated_at,
                "created_by": by,
            },
        )
        self._add_event(
            session,
            SpecApplied(
                event_id=row.spec_id,
                deployment_id=row.id,
                project=row.project,
                slug=row.slug,
                name=row.name,
                spec_id=row.spec_id,
                spec_version=row.spec_version,
                spec=spec,
            ),
        )

    @staticmethod
    def _add_event(session: Session | sa.Connection, event: Event) -> None:
        """Commit the event with the change; it keeps the current trace context for the relay."""
        subject, headers = event.subject(), trace_headers() or None
        result = session.execute(
            _INSERT_EVENT,
            {
                "msg_id": event.event_id,
                "subject": subject,
                "payload": event.model_dump(mode="json"),
                "headers": headers,
                "created_at": utcnow(),
            },
        )
        committing = _COMMITTING.get()
        if committing is not None:
            committing.append(Committed(result.inserted_primary_key[0], subject, event, headers))  # type: ignore[attr-defined]


def _deployment_row(mapping: Mapping[str, Any]) -> DeploymentRow:
    """A DeploymentRow (detached) from a Core result row holding the deployments' columns."""
    return DeploymentRow(**{c.name: mapping[c.name] for c in _DEPLOYMENTS.c})


def _pending() -> sa.ColumnElement[bool]:
    return sa.and_(col(OutboxRow.published_at).is_(None), col(OutboxRow.set_aside_at).is_(None))


def _name_taken(taken: DeploymentRow) -> Conflict:
    # The id of the deployment in the way, not its name: the name is what the caller sent.
    return Conflict(f"deployment {taken.id} has this name, or a name with the same slug, in the project")
