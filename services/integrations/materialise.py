"""What the integrations service decides: for every revision the scheduler may start — the newest
spec's, and each one an alias names (the scheduler keeps an aliased version running beside the newest)
— materialise its integrations (once per revision), publish IntegrationsReady or IntegrationsFailed,
and retry failures with a growing delay. Fetches of different sources run concurrently, up to a limit;
two fetches of one source (the same repository or bucket) never overlap: the second finds the first's
content and downloads nothing. Level-triggered: the state is rebuilt from the newest spec, alias and
integrations events on start, and the periodic resync starts whatever has no outcome yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from libs.events import (
    DeploymentAliasSet,
    DeploymentDeleted,
    Event,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    IntegrationsRetryRequested,
    MaterialisedIntegration,
    SpecApplied,
)
from libs.kit import RetryPolicy
from libs.logging import get_logger
from libs.revision import revision_id
from libs.secrets import SecretNotFound
from libs.spec import GitLfsIntegration, Integration, S3Integration, VolumeIntegration
from libs.tasks import cancel_and_wait
from services.integrations.cache import Cache, Fetched, FetchFailed
from services.integrations import git, s3
from services.integrations.fetch import credential_fields, fetch

log = get_logger(__name__)
Publish = Callable[[Event], Awaitable[None]]
InUse = Callable[[], Awaitable[set[Path]]]  # content paths of the revisions that run now
# A failed fetch is tried again after 5 s, 10 s, 20 s ... up to 5 minutes.
RETRY = RetryPolicy(first_delay_seconds=5.0, factor=2.0, max_delay_seconds=300.0)
PROGRESS_INTERVAL_SECONDS = 1.0  # at most one progress event a second per fetch
CONCURRENT_FETCHES = 4


class SecretResolver(Protocol):
    async def resolve(self, project: str, value: str) -> str: ...


@dataclass
class Wanted:
    """One revision of a deployment the scheduler may start, and the outcome for it."""

    applied: SpecApplied  # the newest version of that revision known here (newest spec or aliased)
    outcome: IntegrationsReady | IntegrationsFailed | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def revision(self) -> str:
        return revision_id(self.applied.spec)


@dataclass
class Held:
    """One deployment: its newest spec, what its aliases name, and the revisions to materialise."""

    newest: SpecApplied | None = None
    aliases: dict[str, DeploymentAliasSet] = field(default_factory=dict)  # each alias's newest event
    revisions: dict[str, Wanted] = field(default_factory=dict)

    def versions(self) -> list[SpecApplied]:
        """The versions the scheduler may start, as it composes them (services/scheduler/desired.py):
        the newest spec, and while it is enabled every aliased version."""
        if self.newest is None:
            return []
        found = [self.newest]
        if self.newest.spec.enabled:
            found += [e.target.applied(self.newest) for e in self.aliases.values() if e.target is not None]
        return found

    def refresh(self) -> bool:
        """Bring `revisions` in line with `versions()`: a revision no longer wanted is forgotten (its
        fetch under way publishes nothing), a new one is added; True when one was added."""
        wanted: dict[str, SpecApplied] = {}
        for applied in sorted(self.versions(), key=lambda a: a.spec_version):
            if applied.spec.integrations:
                wanted[revision_id(applied.spec)] = applied  # the newest version of each revision
        added = False
        for revision in [r for r in self.revisions if r not in wanted]:
            del self.revisions[revision]
        for revision, applied in wanted.items():
            if revision in self.revisions:
                self.revisions[revision].applied = applied  # same revision: what was fetched for it holds
            else:
                self.revisions[revision], added = Wanted(applied), True
        return added


SpecEvent = SpecApplied | DeploymentDeleted | DeploymentAliasSet


class Materialiser:
    def __init__(
        self, cache: Cache, secrets: SecretResolver, publish: Publish, retry: RetryPolicy = RETRY,
        max_bytes: int | None = None, in_use: InUse | None = None,
        progress_interval_seconds: float = PROGRESS_INTERVAL_SECONDS, host_volumes: bool = True,
        concurrent_fetches: int = CONCURRENT_FETCHES,
    ) -> None:  # fmt: skip
        self._cache = cache
        # A volume's hostPath is a directory of this machine (local runtime); on kubernetes the kubelet
        # mounts it on the Pod's node, so there is nothing to check here.
        self._host_volumes = host_volumes
        self._progress_interval = progress_interval_seconds
        self._max_bytes = max_bytes
        self._in_use = in_use
        # Contents fetched by a materialisation still under way (not published yet: not evictable).
        self._fresh: dict[tuple[str, str], set[Path]] = {}
        self._secrets = secrets
        self._publish = publish
        self._retry = retry
        self._held: dict[str, Held] = {}
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}  # (deployment, revision) -> task
        # At most `concurrent_fetches` fetches at once; eviction takes every slot (no fetch writes then).
        self._concurrency = concurrent_fetches
        self._slots = asyncio.Semaphore(concurrent_fetches)
        self._evicting = asyncio.Lock()
        # One fetch per source at a time: two revisions with the same source must not write its working
        # copy at once (the second then finds the first's content and downloads nothing).
        self._sources: dict[tuple[str, ...], asyncio.Lock] = {}
        self._closing = False

    def rebuild(self, specs: Iterable[Event], outcomes: Iterable[Event], aliases: Iterable[Event] = ()) -> None:
        for event in [*specs, *aliases]:
            if isinstance(event, SpecApplied | DeploymentDeleted | DeploymentAliasSet):
                self._take(event)
        for event in outcomes:
            held = self._held.get(getattr(event, "deployment_id", ""))
            if isinstance(event, IntegrationsReady | IntegrationsFailed) and held is not None:
                wanted = held.revisions.get(event.revision_id)
                if wanted is not None:
                    wanted.outcome = event

    async def on_spec(self, event: SpecEvent) -> None:
        if self._take(event):
            self.kick(event.deployment_id)

    async def retry_now(self, request: IntegrationsRetryRequested) -> None:
        """Try the deployment's failed revisions again at once (the user asked), whatever their back-off."""
        held = self._held.get(request.deployment_id)
        for wanted in held.revisions.values() if held is not None else ():
            if isinstance(wanted.outcome, IntegrationsFailed):
                wanted.retry_at = 0.0
        self.kick(request.deployment_id)

    async def resync(self) -> None:
        for deployment_id in list(self._held):
            self.kick(deployment_id)

    def kick(self, deployment_id: str) -> None:
        held = self._held.get(deployment_id)
        for revision, wanted in list(held.revisions.items()) if held is not None else ():
            key = (deployment_id, revision)
            if key in self._running or isinstance(wanted.outcome, IntegrationsReady):
                continue
            if isinstance(wanted.outcome, IntegrationsFailed) and time.monotonic() < wanted.retry_at:
                continue
            task = asyncio.create_task(self._materialise(wanted), name=f"integrations:{deployment_id}:{revision}")
            self._running[key] = task
            task.add_done_callback(lambda _, key=key: self._finished(key))  # type: ignore[misc]

    def _finished(self, key: tuple[str, str]) -> None:
        """A revision that became wanted again during the fetch is started now (not at the next resync)."""
        self._running.pop(key, None)
        if not self._closing:
            self.kick(key[0])

    def held(self) -> dict[str, int]:
        return {
            "deployments": len(self._held),
            "revisions": sum(len(h.revisions) for h in self._held.values()),
            "running": len(self._running),
        }

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(list(self._running.values()))

    def _take(self, event: SpecEvent) -> bool:
        """Hold the newest spec and each alias's newest target; True when a revision to materialise
        was added."""
        if isinstance(event, DeploymentDeleted):
            # A fetch under way runs to its end (its thread cannot be stopped, and the next fetch of
            # the same source must not overlap it); its outcome is not published.
            self._held.pop(event.deployment_id, None)
            return False
        held = self._held.setdefault(event.deployment_id, Held())
        if isinstance(event, DeploymentAliasSet):
            known = held.aliases.get(event.alias)
            if known is not None and known.occurred_at > event.occurred_at:
                return False  # a redelivery of an older move
            held.aliases[event.alias] = event
        elif held.newest is not None and held.newest.spec_version >= event.spec_version:
            return False
        else:
            held.newest = event
        return held.refresh()

    def _current(self, wanted: Wanted) -> bool:
        """Whether the revision is still wanted (not forgotten, nor its deployment deleted, meanwhile)."""
        held = self._held.get(wanted.applied.deployment_id)
        return held is not None and held.revisions.get(wanted.revision) is wanted

    @contextlib.asynccontextmanager
    async def _fetch_slot(self, integration: Integration) -> AsyncIterator[None]:
        """The source's lock, then one of the concurrent slots (in that order: a fetch waiting for its
        source holds no slot)."""
        key = _source(integration)
        lock = self._sources.setdefault(key, asyncio.Lock()) if key is not None else contextlib.nullcontext()
        async with lock, self._slots:
            yield

    async def _materialise(self, held: Wanted) -> None:
        applied, revision = held.applied, held.revision
        key = (applied.deployment_id, revision)
        ref = {"deployment_id": applied.deployment_id, "project": applied.project, "slug": applied.slug}
        done: list[MaterialisedIntegration] = []
        outcome: IntegrationsReady | IntegrationsFailed
        for integration in applied.spec.integrations:
            try:
                async with self._fetch_slot(integration), self._progress(held, integration):
                    fetched = await self._fetch(applied.project, integration)
            except FetchFailed as exc:
                held.failures += 1
                delay = self._retry.delay(held.failures)
                held.retry_at = time.monotonic() + delay
                outcome = IntegrationsFailed(
                    **ref, revision_id=revision, spec_version=applied.spec_version,
                    integration=integration.name, reason=f"integration {integration.name}: {exc}", retry_in_seconds=delay,
                )  # fmt: skip
                log.warning("integration failed", integration=integration.name, reason=str(exc), retry_in=delay, **ref)
                break
            done.append(_described(integration, fetched))
            self._fresh.setdefault(key, set()).add(fetched.path)
            log.info(
                "integration ready", integration=integration.name, identity=fetched.identity,
                fetched_files=fetched.fetched.files, fetched_bytes=fetched.fetched.bytes, **ref,
            )  # fmt: skip
        else:
            held.failures = 0
            outcome = IntegrationsReady(**ref, revision_id=revision, spec_version=applied.spec_version, integrations=done)
        if self._current(held):  # not forgotten (a newer revision, an alias moved) meanwhile
            await self._publish(outcome)
            held.outcome = outcome
        self._fresh.pop(key, None)
        await self.evict()

    @contextlib.asynccontextmanager
    async def _progress(self, held: Wanted, integration: Integration) -> AsyncIterator[None]:
        """While the fetch runs, publish what it has written so far into its source's working copy
        (no other fetch writes there meanwhile), when that changed, at a bounded rate. A volume
        fetches nothing."""
        source = _source(integration)
        if source is None:
            yield
            return
        applied, revision = held.applied, held.revision
        start = await asyncio.to_thread(self._cache.written, source)

        async def report() -> None:
            last = (0, 0)
            while True:
                await asyncio.sleep(self._progress_interval)
                now = await asyncio.to_thread(self._cache.written, source)
                so_far = (max(now.files - start.files, 0), max(now.bytes - start.bytes, 0))
                if so_far != last and self._current(held):
                    last = so_far
                    await self._publish(IntegrationsProgress(
                        deployment_id=applied.deployment_id, project=applied.project, slug=applied.slug,
                        revision_id=revision, spec_version=applied.spec_version, integration=integration.name,
                        fetched_files=so_far[0], fetched_bytes=so_far[1],
                    ))  # fmt: skip

        reporter = asyncio.create_task(report(), name=f"progress:{applied.deployment_id}")
        try:
            yield
        finally:
            await cancel_and_wait([reporter])

    async def evict(self) -> None:
        """Fit the cache in its size limit, keeping what running revisions, the newest revision of
        every deployment, its aliased revisions and fetches under way use. Holding every fetch slot:
        no fetch writes meanwhile, and what is kept is read then (a fetch that just ended has added its
        content)."""
        if self._max_bytes is None:
            return
        async with self._every_slot():
            keep = {Path(i.local_path) for h in self._held.values() for w in h.revisions.values()
                    if isinstance(w.outcome, IntegrationsReady) for i in w.outcome.integrations}  # fmt: skip
            keep |= {path for paths in self._fresh.values() for path in paths}
            try:
                keep |= await self._in_use() if self._in_use is not None else set()
            except Exception as exc:  # not knowing what runs, remove nothing
                log.warning("integrations cache not evicted: cannot read what runs", error=type(exc).__name__)
                return
            outcome = await asyncio.to_thread(self._cache.evict, self._max_bytes, keep)
        if outcome.removed:
            log.info("integrations cache evicted", removed=len(outcome.removed), bytes_before=outcome.bytes_before,
                     bytes_after=outcome.bytes_after)  # fmt: skip
        if outcome.bytes_after > self._max_bytes:
            log.warning("integrations cache above its limit: the rest is in use", bytes=outcome.bytes_after,
                        max_bytes=self._max_bytes)  # fmt: skip

    @contextlib.asynccontextmanager
    async def _every_slot(self) -> AsyncIterator[None]:
        taken = 0
        try:
            async with self._evicting:  # one eviction at a time: two taking slots would deadlock
                for _ in range(self._concurrency):
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()

    async def _fetch(self, project: str, integration: Integration) -> Fetched:
        values = {
            field: await self._unseal(project, value, field) for field, value in credential_fields(integration).items()
        }
        return await asyncio.to_thread(fetch, integration, self._cache, values, self._host_volumes)

    async def _unseal(self, project: str, reference: str, field: str) -> str:
        """A secret's value (a plain value as it is), unsealed here just before the fetch and held only
        for its duration."""
        try:
            return await self._secrets.resolve(project, reference)
        except SecretNotFound:
            raise FetchFailed(f"its {field} names a secret the project does not have") from None


def _source(integration: Integration) -> tuple[str, ...] | None:
    """What identifies the integration's working copy in the cache (None: a volume has none)."""
    if isinstance(integration, GitLfsIntegration):
        return git.source(integration)
    if isinstance(integration, S3Integration):
        return s3.source(integration)
    return None


def _described(integration: Integration, fetched: Fetched) -> MaterialisedIntegration:
    return MaterialisedIntegration(
        name=integration.name,
        type=integration.type,
        read_only=integration.readOnly if isinstance(integration, VolumeIntegration) else True,
        mount=integration.mount,
        identity=fetched.identity,
        local_path=str(fetched.path),
        files=fetched.total.files,
        bytes=fetched.total.bytes,
        fetched_files=fetched.fetched.files,
        fetched_bytes=fetched.fetched.bytes,
    )
