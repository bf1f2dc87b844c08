"""The health of one replica process, as a state machine fed with probe results (no I/O here).

The kubelet's rules (pkg/kubelet/prober/worker.go, doProbe): each probe kind counts how many times in
a row it returned the same result; a result changes the probe's state only once that run reaches the
threshold - successThreshold for a success, failureThreshold for a failure - and below it the state
stays as it was. Readiness starts as failure (its initialValue), so a replica is first ready after
successThreshold successes. Startup gates the others: until it succeeds the replica is not started,
gets no readiness or liveness probe and is neither ready nor live. Liveness or startup reaching its
failureThreshold means the replica must be restarted (and the probe holds until a new process).
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


class Run(NamedTuple):
    """The last result of one probe kind and how many times in a row it came (worker.go resultRun)."""

    ok: bool
    length: int


@dataclass
class ReplicaHealth:
    started: bool
    ready: bool
    live: bool
    last_probe: ProbeResult | None = None
    runs: dict[str, Run] = field(default_factory=dict)
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
        changed): a ready replica stays ready until its probes say otherwise; runs start at 0."""
        health = cls.fresh(checks)
        health.started = health.started or known.started
        health.ready, health.live, health.last_probe = known.ready, known.live, last_probe
        return health

    @property
    def flags(self) -> Flags:
        return Flags(self.started, self.ready, self.live)

    @property
    def failures(self) -> dict[str, int]:
        """Consecutive failures of each probe kind (0 for a kind whose last result was a success)."""
        return {kind: 0 if run.ok else run.length for kind, run in self.runs.items()}

    def record(self, result: ProbeResult, failure_threshold: int, success_threshold: int = 1) -> str | None:
        """Apply one probe result; returns why the replica must be restarted, or None."""
        self.last_probe = result
        kind = result.probe
        previous = self.runs.get(kind)
        length = previous.length + 1 if previous is not None and previous.ok == result.ok else 1
        self.runs[kind] = Run(result.ok, length)
        if length < (success_threshold if result.ok else failure_threshold):
            return None  # below its threshold a result leaves the state as it was
        if kind == "startup":
            if not result.ok:
                return self._must_restart(kind, failure_threshold, result)
            self.started = self.live = True
        elif kind in ("readiness", "tcp"):
            self.ready = result.ok
        elif kind == "liveness":
            if not result.ok:
                return self._must_restart(kind, failure_threshold, result)
            self.live = True
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
