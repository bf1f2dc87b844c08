"""What the scheduler holds about one deployment, in one place: everything that grows with the
deployment or its replicas lives here, so that forgetting a deployment is dropping one entry and
forgetting a replica is `forget_replicas` (bounded state)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from libs.events import (
    AliasTarget,
    DeploymentAliasSet,
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentStatusChanged,
    IntegrationsEvent,
    IntegrationsFailed,
    IntegrationsReady,
    ReplicaHealthChanged,
    SpecApplied,
    TrafficAssigned,
)
from libs.revision import revision_id
from services.scheduler.analysis import CanaryTally
from services.scheduler.lifecycle import Ledger

# Spec versions remembered per revision (the newest): older ones answer "not running" at @<version>.
MAX_VERSIONS_PER_REVISION = 64


@dataclass
class DeploymentState:
    applied: SpecApplied | None = None  # the newest spec version
    deleted: DeploymentDeleted | None = None
    decisions: dict[str, DeploymentScaled] = field(default_factory=dict)  # newest per source
    aliases: dict[str, DeploymentAliasSet] = field(default_factory=dict)  # newest per alias (removals too)
    alias_serving: dict[str, AliasTarget] = field(default_factory=dict)  # what each alias resolved to last
    versions: dict[str, list[int]] = field(default_factory=dict)  # revision -> spec versions running it
    # revision -> the newest spec version of it: what the revision is rendered from whenever it is
    # (re)applied (a rollback restoring it, a scale down, after a restart), never the workload read back.
    specs: dict[str, SpecApplied] = field(default_factory=dict)
    health: dict[str, ReplicaHealthChanged] = field(default_factory=dict)  # by replica id
    # The newest integrations outcome per revision (only revisions with integrations have one).
    integrations: dict[str, IntegrationsEvent] = field(default_factory=dict)
    restarts: dict[str, tuple[int, str]] = field(default_factory=dict)  # replica -> (restart count, why)
    ledger: Ledger = field(default_factory=Ledger)
    status: DeploymentStatusChanged | None = None  # the last one published
    traffic: TrafficAssigned | None = None  # the last assignment published
    generation: int = 0  # of the last assignment attempted: never reused, even when publishing failed
    stop_reason: str = "scaled down"
    failures: int = 0  # reconciles failed in a row: the requeue back-off
    requeue: asyncio.TimerHandle | None = None
    complete_since: tuple[str, float] | None = None  # (revision, monotonic time) it first had all ready
    wake: asyncio.TimerHandle | None = None  # a reconcile when a blue-green hold ends
    standing_by: set[str] = field(default_factory=set)  # revisions kept without traffic (aliased, blue-green's old set)
    progress_since: tuple[str, float] | None = None  # (revision, monotonic time) its rollout began, until complete
    rolled_back: str | None = None  # a desired revision given up on (progress deadline, crash loop)
    rolled_back_why: str = ""
    came_up: str | None = None  # the last desired revision seen without all its replicas ready
    promoted: int = 0  # the newest spec version the user promoted (canary: all traffic; blue-green: no hold)
    deadline: asyncio.TimerHandle | None = None  # a reconcile at the progress deadline
    canary_tally: CanaryTally | None = None  # request counts while a canary with analysis takes a weight

    def learn_version(self, applied: SpecApplied | AliasTarget) -> None:
        versions = self.versions.setdefault(revision_id(applied.spec), [])
        if applied.spec_version not in versions:
            versions.append(applied.spec_version)
            versions.sort()
            del versions[:-MAX_VERSIONS_PER_REVISION]

    def learn_spec(self, applied: SpecApplied) -> None:
        """Remember the spec of `applied`'s revision (the newest version of it wins)."""
        revision = revision_id(applied.spec)
        known = self.specs.get(revision)
        if known is None or known.spec_version < applied.spec_version:
            self.specs[revision] = applied

    def wanted_aliases(self) -> dict[str, AliasTarget]:
        return {alias: e.target for alias, e in self.aliases.items() if e.target is not None}

    def aliased(self) -> list[AliasTarget]:
        """Every version an alias names or still resolves to: each keeps its revision running."""
        return [*self.wanted_aliases().values(), *self.alias_serving.values()]

    def learn_assignment(self, assignment: TrafficAssigned) -> None:
        self.traffic = assignment
        self.generation = max(self.generation, assignment.generation)
        for target in assignment.targets:
            known = self.versions.setdefault(target.revision_id, [])
            known[:] = sorted(set(known) | set(target.spec_versions))[-MAX_VERSIONS_PER_REVISION:]

    def keep_revisions(self, revisions: Iterable[str]) -> None:
        keep = set(revisions)
        for revision in [r for r in self.versions if r not in keep]:
            del self.versions[revision]
        for held in (self.integrations, self.specs):
            for revision in [r for r in held if r not in keep]:
                del held[revision]

    def forget_replicas(self, present: set[str]) -> None:
        """Drop what is held about replicas that no longer run here."""
        for held in (self.health, self.restarts):
            for replica_id in [r for r in held if r not in present]:
                del held[replica_id]

    def cancel_requeue(self) -> None:
        for handle in (self.requeue, self.wake, self.deadline):
            if handle is not None:
                handle.cancel()
        self.requeue = self.wake = self.deadline = None

    def progressing(self, revision: str, complete: bool, now: float) -> float | None:
        """When the rollout of `revision` began (None: it is complete)."""
        if complete:
            self.progress_since = None
        elif self.progress_since is None or self.progress_since[0] != revision:
            self.progress_since = (revision, now)
        return self.progress_since[1] if self.progress_since else None

    def completed(self, revision: str, complete: bool, now: float) -> float | None:
        """When `revision` first had all its replicas ready (None: not yet)."""
        if not complete:
            self.complete_since = None
        elif self.complete_since is None or self.complete_since[0] != revision:
            self.complete_since = (revision, now)
        return self.complete_since[1] if self.complete_since else None
