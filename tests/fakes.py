"""In-memory stand-ins for fast tests: a Runtime that runs nothing and records every call, and a
secret store. They implement the interfaces exactly (tests/unit/test_scheduler_reconcile.py checks the
Runtime protocol), so the scheduler cannot tell them from the real ones.

FakeRuntime behaves as the runtime contract says (libs/runtime/base.py): `apply` creates replicas at
once in state "running" (the test decides when they are ready, through health events), a lower count
stops the newest first, `delete` stops every replica; `crash` and `recover` play a process exiting
and being restarted. Every call that changes something is appended to `calls` - a list the test may
share with its publish collector, to check the order of runtime actions and published events.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from libs.events import utcnow
from libs.runtime.base import (
    InvalidWorkload,
    Replica,
    ReplicaEventHook,
    ReplicaNotFound,
    RetainedLog,
    Usage,
    Workload,
)
from libs.secrets import SecretNotFound
from libs.spec import is_secret_ref, secret_name


@dataclass(frozen=True)
class Call:
    method: str  # apply, scale, delete, restart
    name: str  # workload name, or replica id for restart
    replicas: int | None = None


@dataclass
class FakeRuntime:
    calls: list[Any] = field(default_factory=list)
    on_replica_event: ReplicaEventHook | None = None
    fetches_integrations: bool = False
    lacks: list[str] = field(default_factory=list)  # what not_provided answers
    host: str = "10.0.0.1"
    _workloads: dict[str, Workload] = field(default_factory=dict)
    _replicas: dict[str, Replica] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    started: bool = False
    closed: bool = False

    # -- the Runtime protocol --

    async def start(self) -> None:
        self.started = True

    async def close(self, stop_replicas: bool = False) -> None:
        self.closed = True
        if stop_replicas:
            for replica in list(self._replicas.values()):
                await self._stop(replica)

    def not_provided(self, workload: Workload) -> list[str]:
        return list(self.lacks)

    async def apply(self, workload: Workload) -> None:
        if not workload.command:
            raise InvalidWorkload(f"workload {workload.name} has no command")
        self.calls.append(Call("apply", workload.name, workload.replicas))
        await self._resize(workload)

    async def scale(self, name: str, replicas: int) -> None:
        self.calls.append(Call("scale", name, replicas))
        if (workload := self._workloads.get(name)) is None:
            return
        await self._resize(replace(workload, replicas=replicas))

    async def _resize(self, workload: Workload) -> None:
        self._workloads[workload.name] = workload
        mine = sorted(self._of(workload.name), key=lambda r: (r.created_at, r.replica_id))
        for _ in range(workload.replicas - len(mine)):
            self._create(workload)
        for replica in mine[workload.replicas :]:  # the newest go first
            await self._stop(replica)

    async def delete(self, name: str) -> None:
        self.calls.append(Call("delete", name))
        self._workloads.pop(name, None)
        for replica in self._of(name):
            await self._stop(replica)

    async def workloads(self) -> list[Workload]:
        return list(self._workloads.values())

    async def replicas(self, name: str | None = None) -> list[Replica]:
        return [replace(r, ports=dict(r.ports)) for r in self._replicas.values() if name in (None, r.workload)]

    async def restart(self, replica_id: str) -> None:
        self.calls.append(Call("restart", replica_id))
        replica = self._get(replica_id)
        replica.restart_count += 1
        replica.started_at = utcnow()

    async def logs(self, replica_id: str, tail: int = 100, timestamps: bool = False) -> list[str]:
        self._get(replica_id)
        line = f"2026-01-01T00:00:00.000000Z {replica_id} log line" if timestamps else f"{replica_id} log line"
        return [line][-tail:] if tail else []

    async def retained_logs(self, deployment_id: str) -> list[RetainedLog]:
        return []

    async def follow_logs(self, replica_id: str) -> AsyncIterator[str]:
        yield f"{replica_id} log line"

    async def usage(self, replica_id: str) -> Usage | None:
        return None

    # -- playing what processes do --

    def adopt(self, workload: Workload, replica_ids: list[str]) -> list[Replica]:
        """Replicas already running when the scheduler starts (left by a previous one)."""
        self._workloads[workload.name] = workload
        return [self._create(workload, replica_id) for replica_id in replica_ids]

    def crash(self, replica_id: str, exit_code: int = 1) -> Replica:
        """The process exited; the runtime restarts it after a back-off."""
        replica = self._get(replica_id)
        replica.state, replica.pid, replica.last_exit_code = "backoff", None, exit_code
        replica.next_restart_at = utcnow() + timedelta(seconds=10)
        return replica

    def recover(self, replica_id: str) -> Replica:
        """The back-off is over: the replica runs again, a new process."""
        replica = self._get(replica_id)
        replica.state, replica.pid, replica.next_restart_at = "running", 1000 + next(self._ids), None
        replica.restart_count += 1
        replica.started_at = utcnow()
        return replica

    # -- inside --

    def _create(self, workload: Workload, replica_id: str | None = None) -> Replica:
        number = next(self._ids)
        replica = Replica(
            replica_id=replica_id or f"{workload.name}-{number}",
            workload=workload.name,
            deployment_id=workload.deployment_id,
            spec_id=workload.spec_id,
            revision_id=workload.revision_id,
            host=self.host,
            ports={port: 30000 + number for port in workload.ports},
            state="running",
            pid=1000 + number,
            started_at=utcnow(),
            created_at=utcnow() + timedelta(microseconds=number),  # strictly in creation order
        )
        self._replicas[replica.replica_id] = replica
        return replica

    async def _stop(self, replica: Replica) -> None:
        del self._replicas[replica.replica_id]
        if self.on_replica_event is not None:
            await self.on_replica_event("stopped", replace(replica), None)

    def _of(self, name: str) -> list[Replica]:
        return [r for r in self._replicas.values() if r.workload == name]

    def _get(self, replica_id: str) -> Replica:
        try:
            return self._replicas[replica_id]
        except KeyError:
            raise ReplicaNotFound(replica_id) from None


@dataclass
class FakeSecrets:
    """A project's secrets, by name; resolves `secret:` references as SecretStore does."""

    values: dict[str, str] = field(default_factory=dict)

    async def resolve(self, project: str, value: str) -> str:
        if not is_secret_ref(value):
            return value
        try:
            return self.values[secret_name(value)]
        except KeyError:
            raise SecretNotFound(secret_name(value)) from None
