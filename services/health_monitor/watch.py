"""Probing of one replica process: one asyncio task per probe kind, from start until stop or restart.

Timing follows Kubernetes: the first probe of a kind comes initialDelaySeconds after the process
started (the ReplicaStarted's occurred_at, so a restarted monitor does not delay probes again), then
one every periodSeconds, each given timeoutSeconds. Startup runs alone; when it succeeds readiness
and liveness begin. Without a readiness probe, readiness is "the primary port accepts TCP
connections", so a process that has not bound its port yet gets no traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

import aiohttp

from libs.events import (
    Event,
    ReplicaHealthChanged,
    ReplicaRef,
    ReplicaRestartRequested,
    ReplicaStarted,
    utcnow,
)
from libs.logging import bind, get_logger
from libs.spec import Probe
from libs.tasks import cancel_and_wait
from services.health_monitor.metrics import RESTARTS_REQUESTED
from services.health_monitor.prober import HttpProbeKind, http_probe, tcp_probe
from services.health_monitor.state import Flags, ReplicaHealth

Publish = Callable[[Event], Awaitable[None]]

HEARTBEAT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
# Until the port accepts, a connect attempt every 5 ms: a refused local connect costs about 0.1 ms of
# CPU, and the first request is served within a few ms of the app listening (the 50 ms doubling back-off
# this replaced added ~170 ms on average: docs/benchmarks.md). A replica still not listening after
# TCP_FAST_FOR_SECONDS (a large model loading) is tried less and less often, up to once a second.
TCP_FAST_RETRY_SECONDS = 0.005
TCP_FAST_FOR_SECONDS = 10.0
TCP_PERIOD_UNTIL_READY_SECONDS = 1.0
TCP_PERIOD_SECONDS = 10.0
TCP_TIMEOUT_SECONDS = 1.0
TCP_FAILURE_THRESHOLD = 3

log = get_logger(__name__)


def _ref(replica: ReplicaStarted) -> dict[str, str]:
    """The replica's identity (deployment, replica, spec and revision ids) for the events about it."""
    return replica.model_dump(include=set(ReplicaRef.model_fields))


def first_probe_delay(started_at: datetime, initial_delay_seconds: float, now: datetime) -> float:
    """Seconds to wait before the first probe: initialDelaySeconds counted from the process start."""
    return max(0.0, initial_delay_seconds - (now - started_at).total_seconds())


class ReplicaWatch:
    """Probes one replica process (one ReplicaStarted) and publishes what it learns."""

    def __init__(
        self,
        replica: ReplicaStarted,
        health: ReplicaHealth,
        session: aiohttp.ClientSession,
        publish: Publish,
        published: Flags | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.replica = replica
        self.health = health
        self._session = session
        self._publish = publish
        self._published = published  # the flags the bus last heard about this replica
        self._published_at = time.monotonic() if published else float("-inf")
        self._heartbeat_seconds = heartbeat_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._publishing = asyncio.Lock()

    @property
    def probing(self) -> bool:
        return any(not task.done() for task in self._tasks)

    async def start(self) -> None:
        await self._report()
        if self.health.restart_requested:
            return
        if self.health.started:
            self._start_after_startup()
        else:
            assert self.replica.health_checks.startup is not None  # fresh() starts probe-less replicas
            self._spawn(self._http_loop("startup", self.replica.health_checks.startup))

    async def stop(self) -> None:
        # Bounded: a probe task that will not stop must not block the consumer that handles this
        # replica's events (and with it every replica's) for ever.
        await cancel_and_wait(list(self._tasks), timeout=STOP_TIMEOUT_SECONDS)

    async def publish_gone(self, event_id: str) -> None:
        """The process is gone: tell the bus it is neither started, ready nor live."""
        self.health.mark_gone()
        await self._publish(self._health_event().model_copy(update={"event_id": event_id}))

    def _start_after_startup(self) -> None:
        checks = self.replica.health_checks
        self._spawn(self._http_loop("readiness", checks.readiness) if checks.readiness else self._tcp_loop())
        if checks.liveness:
            self._spawn(self._http_loop("liveness", checks.liveness))

    def _spawn(self, loop: Coroutine[Any, Any, None]) -> None:
        # The task copies this context: the health it publishes continues the trace of the
        # ReplicaStarted being handled (none when the watch starts from a rebuild or resync).
        task = asyncio.create_task(loop)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("probe loop crashed", exc_info=task.exception())

    async def _http_loop(self, kind: HttpProbeKind, probe: Probe) -> None:
        self._bind_log()
        spec_port = probe.port or self.replica.primary_port
        host_port = self.replica.ports.get(spec_port, spec_port)  # a port the spec does not map is used as is
        url = f"http://{self.replica.host}:{host_port}{probe.path}"
        headers = [(header.name, header.value) for header in probe.headers]
        await asyncio.sleep(first_probe_delay(self.replica.occurred_at, probe.initialDelaySeconds, utcnow()))
        while True:
            began = time.monotonic()
            result = await http_probe(self._session, kind, url, headers, probe.timeoutSeconds)
            restart_reason = self.health.record(result, probe.failureThreshold, probe.successThreshold)
            if restart_reason:
                await self._request_restart(kind, restart_reason)
                if self.health.restart_requested:
                    return
            await self._report()
            if kind == "startup" and result.ok:
                self._start_after_startup()
                return
            await asyncio.sleep(max(0.0, probe.periodSeconds - (time.monotonic() - began)))

    async def _tcp_loop(self) -> None:
        self._bind_log()
        host, port = self.replica.host, self.replica.ports[self.replica.primary_port]
        retry, fast_until = TCP_FAST_RETRY_SECONDS, time.monotonic() + TCP_FAST_FOR_SECONDS
        while True:
            result = await tcp_probe(host, port, TCP_TIMEOUT_SECONDS)
            self.health.record(result, TCP_FAILURE_THRESHOLD)
            await self._report()
            if self.health.ready:
                retry, fast_until = TCP_FAST_RETRY_SECONDS, 0.0  # once ready, a lost port is retried at once
                await asyncio.sleep(TCP_PERIOD_SECONDS)
            else:
                await asyncio.sleep(retry)
                if time.monotonic() >= fast_until:
                    retry = min(retry * 2, TCP_PERIOD_UNTIL_READY_SECONDS)

    async def _request_restart(self, kind: str, reason: str) -> None:
        replica = self.replica
        request = ReplicaRestartRequested(
            # Deterministic: a redelivered or repeated request for this process is de-duplicated.
            event_id=f"restart-{replica.replica_id}-{replica.restart_count}-{kind}",
            **_ref(replica),
            reason=reason,
        )
        await self._report()
        try:
            await self._publish(request)
        except Exception:
            # Still failing at the next probe, the threshold is still reached: the request is retried.
            log.exception("restart request not published")
            return
        log.warning("restart requested", reason=reason)
        RESTARTS_REQUESTED.labels(kind).inc()
        self.health.restart_requested = True
        await self.stop()  # one failure episode, one request: nothing more until a new process starts

    async def _report(self) -> None:
        """Publish the health when it changed, or as a heartbeat carrying the last probe."""
        async with self._publishing:  # the probe tasks of one replica report one at a time
            flags = self.health.flags
            heartbeat_due = time.monotonic() - self._published_at >= self._heartbeat_seconds
            if flags == self._published and not heartbeat_due:
                return
            try:
                await self._publish(self._health_event())
            except Exception:
                log.exception("health not published; retried after the next probe")
                return
            self._published, self._published_at = flags, time.monotonic()

    def _health_event(self) -> ReplicaHealthChanged:
        replica = self.replica
        return ReplicaHealthChanged(
            **_ref(replica),
            address=replica.address,
            started=self.health.started,
            ready=self.health.ready,
            live=self.health.live,
            last_probe=self.health.last_probe,
            restart_count=replica.restart_count,
        )

    def _bind_log(self) -> None:
        replica = self.replica
        bind(deployment_id=replica.deployment_id, spec_id=replica.spec_id, replica_id=replica.replica_id)
