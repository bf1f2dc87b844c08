"""Aliases in the reconciler, against the in-memory runtime (no process, no NATS): which versions keep
replicas, what `@<alias>` resolves to in the assignment, and that moving an alias switches only once
the new version has a ready replica (so no request meets "no ready replica")."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from libs.events import AliasTarget, DeploymentAliasSet, ReplicaStopped, SpecApplied, TrafficAssigned
from libs.revision import revision_id
from tests.fakes import Call
from tests.unit.test_scheduler_reconcile import DID, World, spec

pytestmark = pytest.mark.timeout(5)

V1 = spec(replicas=2)
V2 = spec(replicas=2, command=["python", "serve.py", "--v2"])
V3 = spec(replicas=3, command=["python", "serve.py", "--v3"])


@pytest.fixture
def world() -> World:
    return World()


def alias(world: World, name: str, applied: SpecApplied | None) -> DeploymentAliasSet:
    target = None
    if applied is not None:
        target = AliasTarget(spec_version=applied.spec_version, spec_id=applied.spec_id, spec=applied.spec)
    event = DeploymentAliasSet(deployment_id=DID, project="default", slug="iris", alias=name, target=target)
    assert world.reconciler.alias_set(event)
    return event


async def settle(world: World) -> None:
    """Reconcile, mark every replica ready, reconcile until nothing changes (a few rounds)."""
    for _ in range(4):
        await world.reconcile()
        await world.ready()
    await world.reconcile()


async def v2_with_prod_on_v1(world: World) -> SpecApplied:
    """Version 1 ran; version 2 (another revision) is current, alias prod keeps version 1."""
    v1 = world.apply(V1)
    await settle(world)
    world.apply(V2)
    alias(world, "prod", v1)
    await settle(world)
    return v1


def pinned_versions(world: World) -> dict[str, list[int]]:
    return {t.revision_id: t.spec_versions for t in world.assignment().targets}


@dataclass(frozen=True)
class Case:
    name: str
    specs: list[str]  # applied in order: "v1", "v2", "v3"
    aliases: dict[str, int]  # alias -> index into the applied versions (1-based spec version)
    running: dict[str, int]  # version name whose revision runs -> replicas
    percents: dict[str, int]  # version name -> percent of the endpoint's traffic


SPECS = {"v1": V1, "v2": V2, "v3": V3}
CASES = [
    Case("alias on the current version runs nothing more", ["v1"], {"prod": 1}, {"v1": 2}, {"v1": 100}),
    Case("an aliased older version keeps its replicas, at 0 %", ["v1", "v2"], {"prod": 1}, {"v1": 2, "v2": 2}, {"v1": 0, "v2": 100}),
    Case("no alias: the older version retires", ["v1", "v2"], {}, {"v2": 2}, {"v2": 100}),
    Case("two aliases on two older versions", ["v1", "v2", "v3"], {"a": 1, "b": 2}, {"v1": 2, "v2": 2, "v3": 3}, {"v1": 0, "v2": 0, "v3": 100}),
    Case("an alias on a version never run here starts it", ["v2", "v1"], {"old": 1}, {"v1": 2, "v2": 2}, {"v1": 100, "v2": 0}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_which_versions_keep_replicas(world: World, case: Case) -> None:
    applied: list[SpecApplied] = []
    for name in case.specs:
        applied.append(world.apply(SPECS[name]))
        if len(applied) == 1:
            await settle(world)
    for name, version in case.aliases.items():
        alias(world, name, applied[version - 1])
    await settle(world)

    by_revision = {revision_id(SPECS[n]): n for n in case.specs}
    running = {by_revision[w.revision_id]: w.replicas for w in await world.runtime.workloads()}
    assert running == case.running
    assert {by_revision[t.revision_id]: t.percent for t in world.assignment().targets} == case.percents
    assert world.assignment().aliases == case.aliases
    for name, version in case.aliases.items():  # each alias resolves to a revision with ready replicas
        target = next(t for t in world.assignment().targets if version in t.spec_versions)
        assert target.replicas, name
    assert world.status().phase == "Ready"  # pinned replicas are not "the previous version"


async def test_moving_an_alias_switches_only_once_the_new_version_has_a_ready_replica(world: World) -> None:
    await v2_with_prod_on_v1(world)
    rev1, rev2 = revision_id(V1), revision_id(V2)
    assert world.assignment().aliases == {"prod": 1}
    v3 = world.apply(V3)  # a new current version; prod is moved to it before it is ready
    alias(world, "prod", v3)
    await world.reconcile()
    rev3 = revision_id(V3)
    assert world.assignment().aliases == {"prod": 1}  # v3 has no ready replica: prod stays on v1
    assert rev1 in {w.revision_id for w in await world.runtime.workloads()}

    world.clear()
    first_new = (await world.replica_ids(rev3))[0]
    await world.ready(first_new)
    await world.reconcile()
    switched = world.assignment()
    assert switched.aliases == {"prod": 3}
    await world.reconcile()  # the version prod left is no longer pinned: it retires
    await world.ready()
    await settle(world)
    assert {w.revision_id for w in await world.runtime.workloads()} == {rev3}
    delete_v1 = world.timeline.index(Call("delete", f"default-iris-{rev1}"))
    assert world.timeline.index(switched) < delete_v1  # published the switch before its replicas stop
    assert rev2 not in pinned_versions(world)
    assert world.assignment().aliases == {"prod": 3}


async def test_removing_an_alias_retires_its_version_after_the_assignment_without_it(world: World) -> None:
    await v2_with_prod_on_v1(world)
    world.clear()

    alias(world, "prod", None)
    await settle(world)
    rev1 = revision_id(V1)
    without = next(e for e in world.of(TrafficAssigned) if not e.aliases)
    assert rev1 not in pinned_versions(world)
    assert world.timeline.index(without) < world.timeline.index(Call("delete", f"default-iris-{rev1}"))
    assert {e.reason for e in world.of(ReplicaStopped)} == {"replaced by spec version 2"}


async def test_a_stopped_deployment_runs_no_aliased_version(world: World) -> None:
    await v2_with_prod_on_v1(world)
    world.apply(spec(replicas=2, command=["python", "serve.py", "--v2"], enabled=False))
    await settle(world)
    assert await world.runtime.replicas() == []
    assert world.assignment().targets == []


async def test_an_older_alias_event_is_ignored(world: World) -> None:
    v1 = world.apply(V1)
    newer = alias(world, "prod", v1)
    older = newer.model_copy(update={"occurred_at": newer.occurred_at.replace(year=2000), "target": None})
    assert not world.reconciler.alias_set(older)
