"""The health of one replica process, as a state machine fed with probe results (no I/O here).

Kubernetes probe semantics: failures count consecutively per probe and one success resets the
count (successThreshold is 1). Startup gates the others: until it succeeds the replica is not
started, gets no readiness or liveness probe and is neither ready nor live. Readiness failing its
threshold makes the replica unready; one success makes it ready again. Liveness failing its
threshold, or startup failing its threshold, means the replica must be restarted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from libs.events import ProbeResult
from libs.spec import HealthChecks


class Flags(NamedTuple):
    started: bool
    ready: bool
    live: bool


@dataclass
class ReplicaHealth:
    started: bool
    ready: bool
    live: bool
    last_probe: ProbeResult | None = None
    failures: dict[str, int] = field(default_factory=dict)
    # Set once a restart was requested: the replica is not probed again until a new process starts.
    restart_requested: bool = False

    @classmethod
    def fresh(cls, checks: HealthChecks) -> ReplicaHealth:
        """A process that just started: started at once without a startup probe, never ready yet."""
        started = checks.startup is None
        return cls(started=started, ready=False, live=started)

    @classmethod
    def resumed(cls, checks: HealthChecks, known: Flags, last_probe: ProbeResult | None) -> ReplicaHealth:
        """Health already known of this process (published by a previous monitor, or before its probes
        changed): a ready replica stays ready until its probes say otherwise; counts start at 0."""
        health = cls.fresh(checks)
        health.started = health.started or known.started
        health.ready, health.live, health.last_probe = known.ready, known.live, last_probe
        return health

    @property
    def flags(self) -> Flags:
        return Flags(self.started, self.ready, self.live)

    def record(self, result: ProbeResult, failure_threshold: int) -> str | None:
        """Apply one probe result; returns why the replica must be restarted, or None."""
        self.last_probe = result
        kind = result.probe
        self.failures[kind] = 0 if result.ok else self.failures.get(kind, 0) + 1
        failed = self.failures[kind] >= failure_threshold
        if kind == "startup":
            if result.ok:
                self.started = self.live = True
            elif failed:
                return self._must_restart(kind, failure_threshold, result)
        elif kind in ("readiness", "tcp"):
            if result.ok:
                self.ready = True
            elif failed:
                self.ready = False
        elif kind == "liveness":
            if result.ok:
                self.live = True
            elif failed:
                return self._must_restart(kind, failure_threshold, result)
        return None

    def mark_gone(self) -> None:
        self.started = self.ready = self.live = False

    def _must_restart(self, kind: str, threshold: int, result: ProbeResult) -> str:
        # The replica is about to be killed: it must leave the pool now, not after its readiness fails.
        self.live = self.ready = False
        if kind == "startup":
            self.started = False
        cause = result.error or f"HTTP {result.status_code}"
        return f"{kind} probe failed {threshold} consecutive times (last: {cause})"
