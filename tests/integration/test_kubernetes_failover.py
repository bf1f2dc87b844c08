"""Kill the active scheduler: two real scheduler processes (leader election on a Lease, the kubernetes
runtime against the emulator, real nats-server). The holder is killed with SIGKILL (no release); the
standby takes the Lease within the lease duration (plus at most one of its retries, client-go's
algorithm), adopts the Deployment and carries on with the next spec; nothing is duplicated or deleted."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import kmock
import pytest

from libs.config import Settings
from libs.events import TrafficAssigned
from tests.helpers import eventually
from tests.integration.test_kubernetes_scheduler import berth_deployments, serving
from tests.integration.test_scheduler_replicas import (  # noqa: F401
    Bus,
    SchedulerProcess,
    bus,
    echo_spec,
    scheduler_settings,
)
from tests.kube import Cluster, Kubelet, cluster  # noqa: F401

LEASE_SECONDS = 4.0  # short for the test; the chart's default is 10 (the same algorithm, scaled)
RETRY_SECONDS = LEASE_SECONDS / 5  # services/scheduler/leader.py


@pytest.fixture
def schedulers(scheduler_settings: Settings, cluster: Cluster, tmp_path: Path) -> Iterator[list[SchedulerProcess]]:  # noqa: F811
    env = {
        "BERTH_RUNTIME": "kubernetes",
        "BERTH_KUBECONFIG": str(cluster.kubeconfig),
        "BERTH_KUBERNETES_NAMESPACE": cluster.namespace,
        "BERTH_SCHEDULER_LEADER_ELECTION": "true",
        "BERTH_SCHEDULER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    processes = [SchedulerProcess(scheduler_settings, tmp_path / f"scheduler-{n}.log", env) for n in "ab"]
    yield processes
    for process in processes:
        if process.process is not None and process.process.poll() is None:
            process.signal(signal.SIGKILL)


def holder(cluster: Cluster) -> str | None:  # noqa: F811
    lease = cluster.objects("coordination.k8s.io/v1/leases").get("berth-scheduler")
    return lease["spec"].get("holderIdentity") if lease else None


@pytest.mark.slow
async def test_killing_the_active_scheduler_hands_over_within_the_lease(
    schedulers: list[SchedulerProcess], bus: Bus, cluster: Cluster  # noqa: F811
) -> None:
    active, standby = schedulers
    active.start()
    first = await eventually(lambda: holder(cluster), what="the first scheduler holding the Lease")
    await bus.apply(echo_spec(replicas=2))
    (name,) = (await eventually(lambda: berth_deployments(cluster), timeout=30, what="a Deployment")).keys()
    pods = set(await Kubelet(cluster).run(name, 2))
    await eventually(lambda: serving(bus) == pods, what="both Pods in the assignment")
    standby.start()  # its ops port answers: it is a candidate, waiting
    assert holder(cluster) == first

    before = len(cluster.requests())
    generation = bus.of(TrafficAssigned)[-1].generation
    assert active.process is not None
    killed = time.monotonic()
    active.signal(signal.SIGKILL)  # no release: the standby must wait out the lease
    await bus.apply(echo_spec(replicas=3))  # news that only the new leader can act on

    await eventually(lambda: holder(cluster) not in (None, first), timeout=LEASE_SECONDS * 3,
                     what="the standby holding the Lease")
    took_lease = time.monotonic() - killed
    await eventually(lambda: berth_deployments(cluster)[name]["spec"]["replicas"] == 3, timeout=LEASE_SECONDS * 3,
                     what="the new leader scaling the Deployment")
    acting = time.monotonic() - killed
    print(f"failover (lease {LEASE_SECONDS:.0f} s): Lease taken after {took_lease:.2f} s, "
          f"the spec acted on after {acting:.2f} s")
    assert took_lease <= LEASE_SECONDS + RETRY_SECONDS + 0.5

    # It carried on where the first left: the same Deployment (adopted, not re-created), nothing deleted,
    # the same Pods serving, and the assignment's generation going on from the last one.
    assert list(berth_deployments(cluster)) == [name]
    after = cluster.requests()[before:]
    assert not [r for r in after if r.action in (kmock.action.DELETE, kmock.action.CREATE)
                and r.resource is not None and r.resource.plural in ("deployments", "pods", "secrets")]
    await eventually(lambda: bus.of(TrafficAssigned)[-1].generation > generation, what="a new assignment")
    assert serving(bus) == pods
