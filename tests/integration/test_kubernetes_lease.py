"""Leader election on a Lease (libs/runtime/kubernetes/lease.py) against the emulator: one candidate
holds it, the other waits; when the holder dies the standby takes over within the lease duration
(client-go semantics: measured by the standby's own clock from when it last saw the record change)."""

from __future__ import annotations

import asyncio
import time

from libs.config import Settings
from libs.runtime.kubernetes.lease import LeaseElector
from services.scheduler.leader import lead
from tests.helpers import eventually
from tests.kube import Cluster, cluster  # noqa: F401

LEASE = 1.0


def elector(cluster: Cluster, identity: str) -> LeaseElector:
    return LeaseElector(cluster.api(), cluster.namespace, "berth-scheduler", identity,
                        lease_seconds=LEASE, renew_seconds=0.2, retry_seconds=0.1)


def holder(cluster: Cluster) -> dict:
    return cluster.objects("coordination.k8s.io/v1/leases")["berth-scheduler"]["spec"]


async def test_the_standby_takes_over_within_the_lease_duration_when_the_holder_dies(cluster: Cluster) -> None:
    a, b = elector(cluster, "scheduler-a"), elector(cluster, "scheduler-b")
    await a.acquire()
    renewing = asyncio.create_task(a.hold(on_lost=lambda: None))
    standby = asyncio.create_task(b.acquire())
    # While a renews, b keeps waiting for longer than a lease duration.
    for _ in range(3 * int(LEASE / 0.2)):
        await asyncio.sleep(0.2)  # a renews on this period: b must see fresh records all along
        assert not standby.done() and holder(cluster)["holderIdentity"] == "scheduler-a"
    renewing.cancel()  # a dies: no release, no more renewals
    died = time.monotonic()
    await asyncio.wait_for(standby, timeout=LEASE * 3)
    took = time.monotonic() - died
    assert LEASE * 0.9 <= took <= LEASE + 0.5, took  # not before the lease ran out, and soon after
    spec = holder(cluster)
    assert spec["holderIdentity"] == "scheduler-b" and spec["leaseTransitions"] == 1
    # the old holder, were it to come back, sees it lost the lease
    lost = asyncio.Event()
    await asyncio.wait_for(a.hold(on_lost=lost.set), timeout=LEASE * 3)
    assert lost.is_set() and not a.leading


async def test_a_released_lease_is_taken_at_once(cluster: Cluster) -> None:
    a, b = elector(cluster, "scheduler-a"), elector(cluster, "scheduler-b")
    await a.acquire()
    standby = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.3)
    assert not standby.done()
    await a.release()
    released = time.monotonic()
    await asyncio.wait_for(standby, timeout=LEASE * 3)
    # the released record has no holder: b takes it on its next attempt
    assert time.monotonic() - released <= 0.5  # the next retry, not a lease duration later
    assert holder(cluster)["holderIdentity"] == "scheduler-b"


async def test_two_schedulers_one_runs_and_the_standby_runs_when_it_stops(cluster: Cluster) -> None:
    running: list[str] = []

    def settings() -> Settings:
        return Settings(runtime="kubernetes", kubeconfig=cluster.kubeconfig, kubernetes_namespace=cluster.namespace,
                        scheduler_leader_election=True, scheduler_lease_seconds=2, scheduler_ops_port=0)

    def scheduler(name: str):  # stands in for services.scheduler.app.run
        async def run(_: Settings, stop: asyncio.Event) -> None:
            running.append(name)
            try:
                await stop.wait()
            finally:
                running.remove(name)
        return run

    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(lead(settings(), stop_a, scheduler("a")))
    await eventually(lambda: running == ["a"], what="a leads")
    b = asyncio.create_task(lead(settings(), stop_b, scheduler("b")))
    await asyncio.sleep(1.0)  # b retries every 0.4 s meanwhile
    assert running == ["a"]  # never both
    stop_a.set()  # a stops on purpose and releases the Lease
    await a
    await eventually(lambda: running == ["b"], what="b takes over")
    stop_b.set()
    await b
