"""What the integrations service decides: for the newest spec of each deployment, materialise its
revision's integrations (once per revision), publish IntegrationsReady or IntegrationsFailed, and
retry failures with a growing delay. Level-triggered: the state is rebuilt from the newest spec and
integrations events on start, and the periodic resync starts whatever has no outcome yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from libs.events import (
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
from libs.spec import Integration, VolumeIntegration
from libs.tasks import cancel_and_wait
from services.integrations.cache import Cache, Fetched, FetchFailed
from services.integrations.fetch import credential_fields, fetch

log = get_logger(__name__)
Publish = Callable[[Event], Awaitable[None]]
InUse = Callable[[], Awaitable[set[Path]]]  # content paths of the revisions that run now
# A failed fetch is tried again after 5 s, 10 s, 20 s ... up to 5 minutes.
RETRY = RetryPolicy(first_delay_seconds=5.0, factor=2.0, max_delay_seconds=300.0)
PROGRESS_INTERVAL_SECONDS = 1.0  # at most one progress event a second (fetches run one at a time)


class SecretResolver(Protocol):
    async def resolve(self, project: str, value: str) -> str: ...


@dataclass
class Held:
    """One deployment: its newest spec and the outcome for that spec's revision."""

    applied: SpecApplied
    outcome: IntegrationsReady | IntegrationsFailed | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def revision(self) -> str:
        return revision_id(self.applied.spec)


class Materialiser:
    def __init__(
        self, cache: Cache, secrets: SecretResolver, publish: Publish, retry: RetryPolicy = RETRY,
        max_bytes: int | None = None, in_use: InUse | None = None,
        progress_interval_seconds: float = PROGRESS_INTERVAL_SECONDS, host_volumes: bool = True,
    ) -> None:  # fmt: skip
        self._cache = cache
        # A volume's hostPath is a directory of this machine (local runtime); on kubernetes the kubelet
        # mounts it on the Pod's node, so there is nothing to check here.
        self._host_volumes = host_volumes
        self._progress_interval = progress_interval_seconds
        self._max_bytes = max_bytes
        self._in_use = in_use
        # Contents fetched by a materialisation still under way (not published yet: not evictable).
        self._fresh: dict[str, set[Path]] = {}
        self._secrets = secrets
        self._publish = publish
        self._retry = retry
        self._held: dict[str, Held] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        # One fetch at a time: two revisions with the same source must not write its mirror at once.
        self._fetching = asyncio.Lock()
        self._closing = False

    def rebuild(self, specs: Iterable[Event], outcomes: Iterable[Event]) -> None:
        for event in specs:
            if isinstance(event, SpecApplied | DeploymentDeleted):
                self._take(event)
        for event in outcomes:
            held = self._held.get(getattr(event, "deployment_id", ""))
            if isinstance(event, IntegrationsReady | IntegrationsFailed) and held and event.revision_id == held.revision:
                held.outcome = event

    async def on_spec(self, event: SpecApplied | DeploymentDeleted) -> None:
        if self._take(event):
            self.kick(event.deployment_id)

    async def retry_now(self, request: IntegrationsRetryRequested) -> None:
        """Try a failed revision again at once (the user asked), whatever its back-off says."""
        held = self._held.get(request.deployment_id)
        if held is not None and isinstance(held.outcome, IntegrationsFailed):
            held.retry_at = 0.0
            self.kick(request.deployment_id)

    async def resync(self) -> None:
        for deployment_id in list(self._held):
            self.kick(deployment_id)

    def kick(self, deployment_id: str) -> None:
        held = self._held.get(deployment_id)
        if held is None or deployment_id in self._running or not held.applied.spec.integrations:
            return
        if isinstance(held.outcome, IntegrationsReady):
            return
        if isinstance(held.outcome, IntegrationsFailed) and time.monotonic() < held.retry_at:
            return
        task = asyncio.create_task(self._materialise(held), name=f"integrations:{deployment_id}")
        self._running[deployment_id] = task
        task.add_done_callback(lambda _: self._finished(deployment_id))

    def _finished(self, deployment_id: str) -> None:
        """A newer revision that arrived during the fetch is started now (not at the next resync)."""
        self._running.pop(deployment_id, None)
        if not self._closing:
            self.kick(deployment_id)

    def held(self) -> dict[str, int]:
        return {"deployments": len(self._held), "running": len(self._running)}

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(list(self._running.values()))

    def _take(self, event: SpecApplied | DeploymentDeleted) -> bool:
        """Hold the newest spec; False when the event is not newer than what is held."""
        held = self._held.get(event.deployment_id)
        if isinstance(event, DeploymentDeleted):
            # A fetch under way runs to its end (its thread cannot be stopped, and the next fetch of
            # the same source must not overlap it); its outcome is not published.
            self._held.pop(event.deployment_id, None)
            return False
        if held is not None and held.applied.spec_version >= event.spec_version:
            return False
        if held is not None and held.revision == revision_id(event.spec):
            held.applied = event  # same revision: what was fetched for it holds
            return False
        self._held[event.deployment_id] = Held(event)
        return True

    async def _materialise(self, held: Held) -> None:
        applied, revision = held.applied, held.revision
        ref = {"deployment_id": applied.deployment_id, "project": applied.project, "slug": applied.slug}
        done: list[MaterialisedIntegration] = []
        outcome: IntegrationsReady | IntegrationsFailed
        for integration in applied.spec.integrations:
            try:
                async with self._fetching, self._progress(held, integration):
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
            self._fresh.setdefault(applied.deployment_id, set()).add(fetched.path)
            log.info(
                "integration ready", integration=integration.name, identity=fetched.identity,
                fetched_files=fetched.fetched.files, fetched_bytes=fetched.fetched.bytes, **ref,
            )  # fmt: skip
        else:
            held.failures = 0
            outcome = IntegrationsReady(**ref, revision_id=revision, spec_version=applied.spec_version, integrations=done)
        if self._held.get(applied.deployment_id) is held:  # not replaced by a newer revision meanwhile
            await self._publish(outcome)
            held.outcome = outcome
        self._fresh.pop(applied.deployment_id, None)
        await self.evict()

    @contextlib.asynccontextmanager
    async def _progress(self, held: Held, integration: Integration) -> AsyncIterator[None]:
        """While the fetch runs, publish what it has written so far, when that changed, at a bounded
        rate. A volume fetches nothing."""
        if isinstance(integration, VolumeIntegration):
            yield
            return
        applied, revision = held.applied, held.revision
        start = await asyncio.to_thread(self._cache.written)

        async def report() -> None:
            last = (0, 0)
            while True:
                await asyncio.sleep(self._progress_interval)
                now = await asyncio.to_thread(self._cache.written)
                so_far = (max(now.files - start.files, 0), max(now.bytes - start.bytes, 0))
                if so_far != last and self._held.get(applied.deployment_id) is held:
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
        every deployment and fetches under way use. Under the fetch lock: no fetch writes meanwhile,
        and what is kept is read then (a fetch that just ended has added its content)."""
        if self._max_bytes is None:
            return
        async with self._fetching:
            keep = {Path(i.local_path) for h in self._held.values() if isinstance(h.outcome, IntegrationsReady)
                    for i in h.outcome.integrations}  # fmt: skip
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
