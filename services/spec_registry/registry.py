"""Accepting specs: validation, secret references, and the one write path every new version takes
(PUT, stop, start and rollback all end in `Registry.update`). A scale is not a spec version: it is the
user's scale decision (`Registry.scale`). A write that asks for what is already so is answered
`unchanged` and stores and publishes nothing."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from pydantic import ValidationError

from libs.bus import LOGS_RPC, METRICS_RPC, latest_per_subject
from libs.logcursor import LogSearch
from libs.changes import field_changes, replaces_replicas, rollout
from libs.events import DeploymentScaled, utcnow
from libs.secrets import SecretStore
from libs.spec import DeploymentSpec, SpecError, SpecInvalid, secret_name, validate_spec
from services.spec_registry.metrics import SPEC_VERSIONS_ACCEPTED
from services.spec_registry.live import DeploymentFeed
from services.spec_registry.outbox import OutboxRelay
from libs.store import AliasRow, WebhookRow
from services.spec_registry.alerts import MAX_WEBHOOKS, AlertBoard, check_webhook, valid_url
from services.spec_registry.problems import BadGateway, Invalid, NotFound, Unavailable
from services.spec_registry.repository import Repository, StoredDeployment, WebhookOutcome
from services.spec_registry.schemas import ALIAS_NAME, DryRun, FieldChange, LogPage

RPC_TIMEOUT_SECONDS = 5.0
# Aliases per deployment. Each aliased version keeps replicas running (docs/api.md): a bound on cost too.
MAX_ALIASES = 16
ALIAS_RULE = "must be a DNS-1123 label (a-z, 0-9 and '-', at most 63, starting and ending alphanumeric) and not all digits"
SpecEdit = Callable[[dict[str, Any]], dict[str, Any]]


class Registry:
    def __init__(
        self,
        repo: Repository,
        secrets: SecretStore,
        relay: OutboxRelay,
        nc: Client,
        feed: DeploymentFeed,
        alerts: AlertBoard | None = None,
    ) -> None:
        self.repo = repo
        self.alerts = alerts or AlertBoard()
        self.secrets = secrets
        self.feed = feed  # what the API changes is shown at once to the console (GET /v1/deployments/events)
        self._relay = relay
        self._nc = nc

    async def check(self, project: str, document: Any) -> DeploymentSpec:
        """The validated spec; SpecInvalid lists every broken rule, then every missing secret.
        Validated in a worker thread, like parsing: the event loop serves others meanwhile."""
        return await asyncio.to_thread(self._check, project, document)

    def _check(self, project: str, document: Any) -> DeploymentSpec:
        spec = validate_spec(document)
        refs = spec.secret_ref_fields()
        if refs:
            existing = self.repo.secret_names(project)
            missing = [
                SpecError(field, f"names the secret '{name}', which does not exist in the project")
                for field, name in refs
                if name not in existing
            ]
            if missing:
                raise SpecInvalid(missing)
        return spec

    async def _write(self, write: Callable[[], StoredDeployment]) -> StoredDeployment:
        """Validation and the write together: on the event loop when the repository says the write
        neither waits nor costs more than the hand-off (SQLite, its writer free), otherwise in one
        worker thread. On SQLite a worker-thread hop cost more CPU than the transaction (docs/benchmarks.md)."""
        return write() if self.repo.writes_inline() else await asyncio.to_thread(write)

    async def create(self, project: str, document: Any, by: int | None = None) -> StoredDeployment:
        def create() -> StoredDeployment:
            return self.repo.create_deployment(project, self._check(project, document), by)

        stored = await self._write(create)
        self._accepted(stored)
        return stored

    async def update(
        self, project: str, ref: str, document: Any, if_match: list[str], by: int | None = None
    ) -> StoredDeployment:
        """A new spec version, based on the version whose spec_id is in `if_match`."""

        def update() -> StoredDeployment:
            return self.repo.update_deployment(project, ref, self._check(project, document), if_match, by)

        stored = await self._write(update)
        self._accepted(stored)
        return stored

    async def dry_run(self, project: str, ref: str | None, document: Any, if_match: list[str]) -> DryRun:
        """What creating (`ref` None) or updating would do; the same checks, nothing stored."""
        spec = await self.check(project, document)
        if ref is None:
            await asyncio.to_thread(self.repo.preview_create, project, spec)
            return dry_run_answer(None, spec)
        current = await asyncio.to_thread(self.repo.preview_update, project, ref, spec, if_match)
        return dry_run_answer(current, spec)

    async def scale(self, project: str, ref: str, replicas: int) -> StoredDeployment:
        """The user's scale decision: kept with the deployment and published, no new spec version."""
        stored = await asyncio.to_thread(self.repo.scale_deployment, project, ref, replicas)
        if not stored.unchanged:
            self._relay.notify()
            self.feed.changed(stored)
        return stored

    async def change(self, project: str, ref: str, edit: SpecEdit, by: int | None = None) -> StoredDeployment:
        """A new version made from the current one by `edit` (stop, start, rollback)."""
        current = await asyncio.to_thread(self.repo.get_deployment, project, ref)
        document = edit(copy.deepcopy(current.spec))
        return await self.update(project, current.row.id, document, [current.row.spec_id], by)

    async def restart_users(self, project: str, secret: str) -> list[str]:
        """A new version of every deployment whose current spec uses `secret`, with `restartedAt` now:
        a new revision, so each replaces its replicas through its update strategy (and the new ones
        read the secret's new value as they start). The names of those deployments."""
        users = (await asyncio.to_thread(self.repo.secret_users, project)).get(secret, [])
        at = utcnow().isoformat()
        for name in users:
            await self.change(project, name, restarted_at(at))
        return users

    async def promote(self, project: str, ref: str) -> StoredDeployment:
        stored = await asyncio.to_thread(self.repo.promote, project, ref)
        self._relay.notify()
        self.feed.changed(stored)
        return stored

    async def set_alias(self, project: str, ref: str, alias: str, version: int) -> tuple[AliasRow, bool]:
        """Point `alias` at `version`; the row, and whether anything changed (then it is published)."""
        check_alias(alias)
        row, changed = await asyncio.to_thread(self.repo.set_alias, project, ref, alias, version, MAX_ALIASES)
        if changed:
            self._relay.notify()
        return row, changed

    async def remove_alias(self, project: str, ref: str, alias: str) -> None:
        check_alias(alias)
        await asyncio.to_thread(self.repo.remove_alias, project, ref, alias)
        self._relay.notify()

    async def retry(self, project: str, ref: str) -> StoredDeployment:
        stored = await asyncio.to_thread(self.repo.request_retry, project, ref)
        self._relay.notify()
        return stored

    async def delete(self, project: str, ref: str) -> None:
        current = await asyncio.to_thread(self.repo.get_deployment, project, ref)
        await asyncio.to_thread(self.repo.delete_deployment, project, current.row.id)
        self._relay.notify()
        self.feed.deleted(project, current.row.id, current.row.name)

    async def set_webhook(self, project: str, url: str, secret: str) -> tuple[WebhookRow, WebhookOutcome]:
        """Add or update a webhook; its key must be a secret of the project (checked, never read here)."""
        check_webhook(url, secret)
        if not await asyncio.to_thread(self.repo.has_secret, project, secret_name(secret)):
            raise Invalid(
                "the webhook is not valid",
                [SpecError("secret", "names a secret that does not exist in the project (berth secrets set)")],
            )
        row, outcome = await asyncio.to_thread(self.repo.set_webhook, project, url, secret, MAX_WEBHOOKS)
        if outcome != "unchanged":
            self._relay.notify()
        return row, outcome

    async def delete_webhook(self, project: str, url: str) -> None:
        if not valid_url(url):  # never stored: no such webhook
            raise NotFound("the project has no webhook with this URL", field="url")
        await asyncio.to_thread(self.repo.delete_webhook, project, url)
        self._relay.notify()

    async def logs(
        self, deployment_id: str, replica: str | None, tail: int, since: str | None, search: LogSearch | None = None
    ) -> LogPage:
        """Ask the scheduler, which owns the replicas, for their log lines."""
        request = {"deployment_id": deployment_id, "replica_id": replica, "tail": tail, "since": since,
                   **(search or LogSearch()).fields()}  # fmt: skip
        answer = await self._ask(LOGS_RPC, request, "the scheduler")
        try:
            return LogPage.model_validate(answer)
        except ValidationError as exc:
            raise BadGateway("the scheduler's answer was not understood") from exc

    async def metrics(self, deployment_id: str, window: int, step: int, version: int | None) -> dict[str, Any]:
        """Ask the metrics service, which keeps the history, for a deployment's series."""
        request = {"deployment_id": deployment_id, "window": window, "step": step, "version": version}
        return await self._ask(METRICS_RPC, request, "the metrics service")

    async def _ask(self, subject: str, request: dict[str, Any], who: str) -> dict[str, Any]:
        """One request/reply to the service that owns the answer; its `error` (with a `field`: a query
        it cannot answer as asked) becomes the API's problem."""
        try:
            reply = await self._nc.request(subject, json.dumps(request).encode(), timeout=RPC_TIMEOUT_SECONDS)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise Unavailable(f"{who} did not answer within {RPC_TIMEOUT_SECONDS:g} s; is it running?") from exc
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise BadGateway(f"{who}'s answer was not understood") from exc
        if not isinstance(answer, dict):
            raise BadGateway(f"{who}'s answer was not understood")
        if answer.get("error"):
            if answer.get("field"):  # e.g. a step finer than the history keeps
                raise Invalid("bad query", [SpecError(str(answer["field"]), str(answer.get("rule", "")))])
            raise BadGateway(f"{who} could not answer: {answer['error']}")
        return answer

    async def autoscaler_decision(self, deployment_id: str) -> DeploymentScaled | None:
        """The autoscaler's newest decision about the deployment (the SCALE stream keeps only it)."""
        subject = DeploymentScaled.subject_template.format(deployment_id=deployment_id, source="autoscaler")
        found = await latest_per_subject(self._nc.jetstream(), subject)
        return next((e for e in reversed(found) if isinstance(e, DeploymentScaled)), None)

    def _accepted(self, stored: StoredDeployment) -> None:
        if stored.unchanged:
            return
        SPEC_VERSIONS_ACCEPTED.inc()
        self._relay.notify()
        self.feed.changed(stored)


def dry_run_answer(current: StoredDeployment | None, spec: DeploymentSpec) -> DryRun:
    before = DeploymentSpec.model_validate(current.spec) if current is not None else None
    changes = field_changes(before, spec)
    return DryRun(
        deployment_id=current.row.id if current else None,
        spec_version=current.row.spec_version if current else None,
        unchanged=current is not None and not changes,
        changes=[FieldChange(**vars(c)) for c in changes],
        replaces_replicas=replaces_replicas(changes),
        strategy=spec.updateStrategy.type,
        rollout=rollout(spec, changes) if current else "creates the deployment and starts its replicas",
    )


def check_alias(alias: str) -> None:
    """422 naming the field and the rule, never the value."""
    if not re.fullmatch(ALIAS_NAME, alias):
        raise Invalid("bad alias", [SpecError("alias", ALIAS_RULE)])


def with_enabled(enabled: bool) -> SpecEdit:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        spec["enabled"] = enabled
        return spec

    return edit


def restarted_at(at: str) -> SpecEdit:
    def edit(spec: dict[str, Any]) -> dict[str, Any]:
        spec["restartedAt"] = at
        return spec

    return edit


def replaced_by(old_spec: dict[str, Any]) -> SpecEdit:
    return lambda _: copy.deepcopy(old_spec)
