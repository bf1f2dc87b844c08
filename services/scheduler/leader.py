"""Several schedulers, one acting: the holder of the Lease `berth-scheduler` runs the scheduler; the
others wait, serving /healthz so that Kubernetes does not take a waiting standby for a dead one. A
holder that loses the Lease stops (its process exits and Kubernetes starts it again as a candidate);
one that stops on purpose releases the Lease so that a standby takes over at once."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable

from libs.config import Settings
from libs.runtime.kubernetes.lease import LeaseElector
from libs.runtime.kubernetes.runtime import connect
from libs.telemetry import serve_ops

LEASE_NAME = "berth-scheduler"
Run = Callable[[Settings, asyncio.Event], Awaitable[None]]


def identity() -> str:
    # The Pod name (hostname) for people reading the Lease, and a random part so that no two
    # candidates share one, not even a restarted container of the same Pod (client-go does the same).
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


async def lead(settings: Settings, stop: asyncio.Event, run: Run) -> None:
    api = await asyncio.to_thread(connect, settings.kubeconfig, settings.kubernetes_context)
    lease = settings.scheduler_lease_seconds
    elector = LeaseElector(api, settings.kubernetes_namespace, LEASE_NAME, identity(),
                           lease_seconds=lease, renew_seconds=lease / 3, retry_seconds=lease / 5)
    try:
        if await _wait_for_lease(settings, stop, elector):
            holding = asyncio.create_task(elector.hold(on_lost=stop.set), name="lease-renewal")
            try:
                await run(settings, stop)
            finally:
                holding.cancel()
                await elector.release()
    finally:
        await asyncio.to_thread(api.close)


async def _wait_for_lease(settings: Settings, stop: asyncio.Event, elector: LeaseElector) -> bool:
    """True once this candidate holds the Lease; False when asked to stop first."""
    ops = await serve_ops(settings.ops_host, settings.scheduler_ops_port, lambda: True)
    try:
        acquiring = asyncio.create_task(elector.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (acquiring, stopping):
            task.cancel()
        await asyncio.gather(acquiring, stopping, return_exceptions=True)
        return elector.leading
    finally:
        await ops.cleanup()  # the scheduler serves its own /healthz on this port from now on
