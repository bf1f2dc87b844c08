"""Update strategies in the reconciler, against the in-memory runtime (no process, no NATS).

Rolling follows Kubernetes' Deployment controller: the fencepost cases are those of the comment on
deploymentutil.ResolveFenceposts and of the Kubernetes documentation (maxSurge rounds up,
maxUnavailable rounds down; 10 replicas at 25 %/25 % -> 3 and 2), and every step keeps
ready >= desired - maxUnavailable and running <= desired + maxSurge."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from libs.events import DeploymentPromoted, ReplicaStopped, TrafficAssigned
from libs.revision import revision_id
from libs.spec import UpdateStrategy
from services.scheduler import reconcile
from services.scheduler.strategies import Counts, RollingStep, fenceposts, rolling_step
from tests.fakes import Call
from tests.unit.test_scheduler_reconcile import DID, World, spec

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def world() -> World:
    return World()


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected"),
    [
        (None, None, 10, (3, 2)),  # the documented defaults: 25 % of 10 -> 3 up, 2 down
        (None, None, 4, (1, 1)),
        (None, None, 2, (1, 0)),
        (None, None, 1, (1, 0)),
        ("30%", "30%", 5, (2, 1)),
        ("1%", "0%", 2, (1, 0)),  # "2 desired, max unavailable 0%, surge 1%"
        ("0%", "1%", 2, (0, 1)),  # "2 desired, max unavailable 1%, surge 0%": both 0 -> unavailable 1
        ("1%", "25%", 1, (1, 0)),
        (2, 2, 10, (2, 2)),
        (0, 1, 3, (0, 1)),
    ],
)
def test_fenceposts_round_as_kubernetes(surge: Any, unavailable: Any, desired: int, expected: tuple[int, int]) -> None:
    strategy = UpdateStrategy.model_construct(type="rolling", maxSurge=surge, maxUnavailable=unavailable)
    assert fenceposts(strategy, desired) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # replicas 10, maxSurge 2, maxUnavailable 2 (the worked example of the controller's docs)
        (Counts(new=0, new_ready=0, old=10, old_ready=10), RollingStep(2, 0, 0)),  # scale up, nothing else
        (Counts(new=2, new_ready=0, old=10, old_ready=10), RollingStep(2, 0, 2)),  # min available 8 holds
        (Counts(new=2, new_ready=0, old=8, old_ready=8), RollingStep(4, 0, 0)),
        (Counts(new=4, new_ready=0, old=8, old_ready=8), RollingStep(4, 0, 0)),  # 12 - 8 - 4 = 0: wait
        (Counts(new=4, new_ready=4, old=8, old_ready=8), RollingStep(4, 0, 4)),
        (Counts(new=10, new_ready=10, old=2, old_ready=2), RollingStep(10, 0, 2)),
        (Counts(new=4, new_ready=4, old=8, old_ready=5), RollingStep(4, 3, 1)),  # unready old ones first
    ],
)
def test_rolling_steps_as_the_deployment_controller(counts: Counts, expected: RollingStep) -> None:
    strategy = UpdateStrategy(maxSurge=2, maxUnavailable=2)
    assert rolling_step(strategy, 10, counts) == expected


@dataclass(frozen=True)
class RollCase:
    replicas: int
    strategy: dict[str, Any]
    surge: int
    unavailable: int


ROLL_CASES = [
    RollCase(4, {}, 1, 1),
    RollCase(4, {"maxSurge": 0, "maxUnavailable": 1}, 0, 1),
    RollCase(4, {"maxSurge": 2, "maxUnavailable": 0}, 2, 0),
    RollCase(3, {"maxSurge": "50%", "maxUnavailable": "0%"}, 2, 0),
    RollCase(1, {}, 1, 0),
    RollCase(10, {}, 3, 2),
]


@pytest.mark.parametrize("case", ROLL_CASES, ids=lambda c: f"{c.replicas}-{c.strategy}")
async def test_rolling_update_stays_within_its_fenceposts_every_step(world: World, case: RollCase) -> None:
    old_ids = await world.running(spec(replicas=case.replicas))
    old_rev = revision_id(spec(replicas=case.replicas))
    new_spec = spec(replicas=case.replicas, command=["python", "v2.py"], updateStrategy={"type": "rolling", **case.strategy})
    new_rev = revision_id(new_spec)
    world.apply(new_spec)
    world.clear()
    both_served = False
    for _ in range(60):
        await world.reconcile()
        running = await world.runtime.replicas()
        assert len(running) <= case.replicas + case.surge
        served = sum(len(t.replicas) for t in world.assignment().targets)
        assert served >= case.replicas - case.unavailable, world.serving()
        both_served |= all(world.serving().get(r, (0, []))[1] for r in (old_rev, new_rev))
        ids = sorted(r.replica_id for r in running)
        done = len(running) == case.replicas and {r.revision_id for r in running} == {new_rev}
        if done and world.serving() == {new_rev: (100, ids)}:
            break
        await world.ready(*await world.replica_ids(new_rev))  # each new replica gets ready after a round
    else:
        pytest.fail(f"the rollout did not finish: {world.serving()}")
    assert len(await world.replica_ids(new_rev)) == case.replicas
    assert both_served or case.replicas == 1 or case.unavailable >= case.replicas
    assert sorted(e.replica_id for e in world.of(ReplicaStopped)) == sorted(old_ids)
    for stopped in world.of(ReplicaStopped):  # each left the assignment before it stopped
        before = [e for e in world.timeline[: world.timeline.index(stopped)] if isinstance(e, TrafficAssigned)]
        assert stopped.replica_id not in {r.replica_id for t in before[-1].targets for r in t.replicas}


async def test_blue_green_switches_at_once_when_all_are_ready_and_keeps_the_old_set(world: World) -> None:
    old = await world.running(spec(replicas=2))
    old_rev = revision_id(spec(replicas=2))
    blue_green = {"type": "blue-green", "scaleDownDelaySeconds": 3600}
    v2 = spec(replicas=2, command=["python", "v2.py"], updateStrategy=blue_green)
    new_rev = revision_id(v2)
    world.apply(v2)
    await world.reconcile()
    new = await world.replica_ids(new_rev)
    assert len(new) == 2  # the whole new set at once
    await world.ready(new[0])
    await world.reconcile()
    assert world.serving() == {new_rev: (0, [new[0]]), old_rev: (100, old)}  # not before all are ready
    await world.ready(new[1])
    await world.reconcile()
    assert world.serving() == {new_rev: (100, new), old_rev: (0, old)}  # all at once; the old set kept
    assert world.of(ReplicaStopped) == []
    assert world.status().phase == "Ready"

    # A rollback within the hold switches back without starting anything.
    world.clear()
    world.apply(spec(replicas=2, updateStrategy=blue_green))
    await world.reconcile()
    assert world.calls() == [] or all(c.method == "apply" and c.replicas == 2 for c in world.calls())
    assert world.serving() == {old_rev: (100, old), new_rev: (0, new)}
    assert await world.replica_ids() == sorted(old + new)


async def test_blue_green_retires_the_old_set_when_the_hold_ends(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    old = await world.running(spec(replicas=1))
    v2 = spec(replicas=1, command=["python", "v2.py"], updateStrategy={"type": "blue-green", "scaleDownDelaySeconds": 30})
    world.apply(v2)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    assert len(await world.replica_ids()) == 2
    clock = reconcile.time.monotonic() + 31
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock)
    await world.reconcile()
    assert await world.replica_ids() == await world.replica_ids(revision_id(v2))
    assert [e.replica_id for e in world.of(ReplicaStopped)] == old
    assert Call("delete", f"default-iris-{revision_id(spec(replicas=1))}") in world.calls()


CANARY = {"type": "canary", "canarySteps": [20, 50], "canaryStepSeconds": 60}


async def test_canary_takes_its_weights_step_by_step_then_all(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    old = await world.running(spec(replicas=2))
    old_rev = revision_id(spec(replicas=2))
    v2 = spec(replicas=2, command=["python", "v2.py"], updateStrategy=CANARY)
    new_rev = revision_id(v2)
    world.apply(v2)
    await world.reconcile()
    new = await world.replica_ids(new_rev)
    await world.ready(new[0])
    await world.reconcile()
    assert world.serving() == {new_rev: (0, [new[0]]), old_rev: (100, old)}  # not before all are ready
    start = reconcile.time.monotonic()
    await world.ready(new[1])
    await world.reconcile()
    assert world.serving() == {new_rev: (20, new), old_rev: (80, old)}
    for elapsed, expected in ((59, (20, 80)), (61, (50, 50)), (119, (50, 50))):
        monkeypatch.setattr(reconcile.time, "monotonic", lambda e=elapsed: start + e)
        await world.reconcile()
        assert (world.serving()[new_rev][0], world.serving()[old_rev][0]) == expected, elapsed
    assert world.of(ReplicaStopped) == []
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: start + 121)
    await world.reconcile()
    assert world.serving() == {new_rev: (100, new)}
    assert sorted(e.replica_id for e in world.of(ReplicaStopped)) == old


async def test_aborting_a_canary_sends_all_traffic_back_at_once(world: World) -> None:
    old = await world.running(spec(replicas=2))
    old_rev = revision_id(spec(replicas=2))
    v2 = spec(replicas=2, command=["python", "v2.py"], updateStrategy=CANARY)
    world.apply(v2)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    assert world.serving()[revision_id(v2)][0] == 20
    canary = await world.replica_ids(revision_id(v2))
    world.clear()

    world.apply(spec(replicas=2))  # the previous spec again (berth deployments rollback)
    await world.reconcile()
    assert world.serving() == {old_rev: (100, old)}
    assert not any(c.method in ("apply", "scale") and c.name.endswith(old_rev) and c.replicas != 2 for c in world.calls())
    assert sorted(e.replica_id for e in world.of(ReplicaStopped)) == canary


async def test_a_canary_whose_replica_is_not_ready_leaves_the_stable_one_all_traffic(world: World) -> None:
    old = await world.running(spec(replicas=1))
    v2 = spec(replicas=1, command=["python", "v2.py"], updateStrategy=CANARY)
    world.apply(v2)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    (canary,) = await world.replica_ids(revision_id(v2))
    await world.ready(canary, ready=False)
    await world.reconcile()
    assert world.serving() == {revision_id(v2): (0, []), revision_id(spec(replicas=1)): (100, old)}


@pytest.mark.parametrize("strategy", [{"maxSurge": 0, "maxUnavailable": 1}, {"type": "blue-green"}, {"type": "canary"}])
async def test_an_update_never_ready_is_rolled_back_at_its_deadline(
    world: World, monkeypatch: pytest.MonkeyPatch, strategy: dict[str, Any]
) -> None:
    old = await world.running(spec(replicas=2))
    old_rev = revision_id(spec(replicas=2))
    broken = spec(replicas=2, command=["python", "broken.py"], updateStrategy={**strategy, "progressDeadlineSeconds": 30})
    start = reconcile.time.monotonic()
    world.clear()
    world.apply(broken)
    for _ in range(3):  # its replicas start but never get ready
        await world.reconcile()
    assert world.of(TrafficAssigned)[-1].targets  # the endpoint kept answering from the old revision
    served_before = {r.replica_id for t in world.assignment().targets for r in t.replicas}
    assert served_before and served_before <= set(old)
    assert world.status().phase != "Degraded"

    monkeypatch.setattr(reconcile.time, "monotonic", lambda: start + 31)
    await world.reconcile()
    await world.ready()  # an old replica the rollout had stopped comes back
    await world.reconcile()
    running = await world.runtime.replicas()
    assert {r.revision_id for r in running} == {old_rev} and len(running) == 2
    assert world.serving() == {revision_id(broken): (0, []), old_rev: (100, sorted(r.replica_id for r in running))}
    status = world.status()
    assert status.phase == "Degraded" and "rolled back" in status.reason and "30 s" in status.reason
    for assignment in world.of(TrafficAssigned):  # never a moment without a ready replica
        assert any(t.replicas for t in assignment.targets)
    reasons = {e.reason for e in world.of(ReplicaStopped) if e.revision_id == revision_id(broken)}
    assert reasons == {"rolled back: spec version 2 did not get ready within its progress deadline (30 s)"}

    world.apply(spec(replicas=2, command=["python", "fixed.py"]))  # a newer spec rolls out as usual
    await world.reconcile()
    assert revision_id(spec(replicas=2, command=["python", "fixed.py"])) in {w.revision_id for w in await world.runtime.workloads()}


@pytest.mark.parametrize("strategy", [CANARY, {"type": "blue-green", "scaleDownDelaySeconds": 3600}])
async def test_promoting_ends_the_update_at_once(world: World, strategy: dict[str, Any]) -> None:
    old = await world.running(spec(replicas=2))
    v2 = spec(replicas=2, command=["python", "v2.py"], updateStrategy=strategy)
    applied = world.apply(v2)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    assert revision_id(spec(replicas=2)) in world.serving()  # the stable or standby set still runs
    promoted = DeploymentPromoted(deployment_id=DID, project="default", slug="iris", spec_version=applied.spec_version)
    assert world.reconciler.promoted(promoted)
    assert not world.reconciler.promoted(promoted)  # said once
    await world.reconcile()
    assert world.serving() == {revision_id(v2): (100, await world.replica_ids(revision_id(v2)))}
    assert sorted(e.replica_id for e in world.of(ReplicaStopped)) == old


async def test_an_update_in_a_crash_loop_is_rolled_back_before_its_deadline(world: World) -> None:
    old = await world.running(spec(replicas=1))
    crashing = spec(replicas=1, command=["python", "crash.py"])
    world.apply(crashing)
    await world.reconcile()
    (replica,) = await world.replica_ids(revision_id(crashing))
    for _ in range(3):
        world.runtime.crash(replica, exit_code=1)
        world.runtime.recover(replica)
        await world.reconcile()
    await world.reconcile()
    assert await world.replica_ids() == old
    assert world.serving()[revision_id(spec(replicas=1))] == (100, old)
    assert world.serving().get(revision_id(crashing), (0, []))[1] == []
    status = world.status()
    assert status.phase == "Degraded" and "restarted 3 times without getting ready" in status.reason


async def test_a_rollback_after_a_restart_restores_the_previous_revision_from_its_spec(world: World) -> None:
    """A new scheduler adopts what runs, and the runtime reads a workload back without its secret
    values (the local runtime never writes them to disk). The rollback grows the previous revision
    from its own spec version (read from the spec stream), so its new replica has the value."""
    world.secrets.values["apiKey"] = "the-key"
    stable = spec(replicas=2, env=[{"name": "API_KEY", "value": "secret:apiKey"}],
                  updateStrategy={"type": "rolling", "maxSurge": 0, "maxUnavailable": 1})  # fmt: skip
    await world.running(stable)
    crashing = stable.model_copy(update={"command": ["python", "crash.py"]})
    first, update = world.reconciler.applied(DID), world.apply(crashing)
    await world.reconcile()  # the previous revision is scaled down to 1 for the update's first replica
    await world.reconcile()
    name = next(w.name for w in await world.runtime.workloads() if w.revision_id == revision_id(stable))
    world.runtime._workloads[name] = replace(world.runtime._workloads[name], env={})  # as read back

    world.reconciler = reconcile.Reconciler(world.runtime, world.secrets, world.publish)  # a restart
    world.reconciler.rebuild(specs=[first, update])  # every version, as the scheduler reads BERTH_SPECS
    await world.ready()
    (replica,) = await world.replica_ids(revision_id(crashing))
    for _ in range(3):
        world.runtime.crash(replica, exit_code=1)
        world.runtime.recover(replica)
        await world.ready(*await world.replica_ids(revision_id(stable)))
        await world.reconcile()

    assert world.status().phase == "Degraded" and world.status().rolled_back_version == update.spec_version
    (restored,) = await world.runtime.workloads()
    assert (restored.revision_id, restored.replicas, restored.env["API_KEY"]) == (revision_id(stable), 2, "the-key")
