"""The reconciler against an in-memory runtime (tests/fakes.py): no process, no NATS. Each case gives
the desired state (spec, scale and delete events) and the observed state (the fake runtime's
workloads and replicas, health events), reconciles, and checks the runtime calls and the published
events - in the order they happened, runtime calls and events on one timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from libs.events import (
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentStatusChanged,
    Event,
    IntegrationsFailed,
    IntegrationsProgress,
    IntegrationsReady,
    MaterialisedIntegration,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    SpecApplied,
    TrafficAssigned,
)
from libs.revision import revision_id
from libs.runtime.base import Mount, Runtime
from libs.spec import DeploymentSpec, validate_spec
from services.scheduler.lifecycle import Serving, started_event
from services.scheduler.reconcile import Reconciler, health_checks_of
from services.scheduler.render import ResolvedEnv, render
from tests.fakes import Call, FakeRuntime, FakeSecrets

DID = "dep-1"
pytestmark = pytest.mark.timeout(5)


def spec(replicas: int = 2, **fields: Any) -> DeploymentSpec:
    document: dict[str, Any] = {
        "name": "iris",
        "image": "python:3.11",
        "command": ["python", "serve.py"],
        "resources": {"ports": [8000], "replicas": replicas},
    }
    return validate_spec(document | fields)


@dataclass
class World:
    """The scheduler's surroundings: what the bus says, what the runtime runs, what was published."""

    timeline: list[Any] = field(default_factory=list)
    history: list[Event] = field(default_factory=list)  # every event published, never cleared
    version: int = 0

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime(calls=self.timeline)
        self.secrets = FakeSecrets()
        self.reconciler = Reconciler(self.runtime, self.secrets, self.publish)

    async def publish(self, event: Event) -> None:
        self.timeline.append(event)
        self.history.append(event)

    # -- desired state --

    def apply(self, s: DeploymentSpec, version: int | None = None, deployment_id: str = DID) -> SpecApplied:
        self.version = version or self.version + 1
        event = SpecApplied(
            deployment_id=deployment_id, project="default", slug=s.slug, name=s.name,
            spec_id=f"spec-{self.version}", spec_version=self.version, spec=s,
        )  # fmt: skip
        self.reconciler.spec_event(event)
        return event

    def scale(self, replicas: int, spec_replicas: int, source: str = "user") -> DeploymentScaled:
        event = DeploymentScaled(
            deployment_id=DID, project="default", slug="iris", source=source,  # type: ignore[arg-type]
            replicas=replicas, spec_version=self.version, spec_replicas=spec_replicas,
        )  # fmt: skip
        self.reconciler.scale_decided(event)
        return event

    def delete(self, deployment_id: str = DID) -> None:
        self.reconciler.spec_event(DeploymentDeleted(deployment_id=deployment_id, project="default", slug="iris"))

    # -- observed state --

    async def replica_ids(self, revision: str | None = None) -> list[str]:
        return sorted(
            r.replica_id for r in await self.runtime.replicas() if revision in (None, r.revision_id)
        )

    async def ready(self, *replica_ids: str, ready: bool = True, deployment_id: str = DID) -> None:
        """The health-monitor says so about the replicas' current processes."""
        replicas = {r.replica_id: r for r in await self.runtime.replicas()}
        for replica_id in replica_ids or list(replicas):
            r = replicas[replica_id]
            self.reconciler.health_changed(self.health(r.replica_id, r.restart_count, ready, deployment_id))

    @staticmethod
    def health(replica_id: str, restart_count: int, ready: bool, deployment_id: str = DID) -> ReplicaHealthChanged:
        return ReplicaHealthChanged(
            deployment_id=deployment_id, project="default", slug="iris", replica_id=replica_id, spec_id="x",
            address="10.0.0.1:1", started=True, ready=ready, live=True, restart_count=restart_count,
        )  # fmt: skip

    async def reconcile(self, deployment_id: str = DID) -> None:
        await self.reconciler.reconcile(deployment_id)

    async def running(self, s: DeploymentSpec) -> list[str]:
        """Apply `s` and reconcile until its replicas are ready and served; their ids."""
        self.apply(s)
        await self.reconcile()
        await self.ready()
        await self.reconcile()
        return await self.replica_ids()

    # -- what happened --

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.timeline if isinstance(e, kind)]

    def calls(self) -> list[Call]:
        return self.of(Call)

    def assignment(self) -> TrafficAssigned:
        return [e for e in self.history if isinstance(e, TrafficAssigned)][-1]

    def serving(self) -> dict[str, tuple[int, list[str]]]:
        """revision -> (percent, ready replica ids) of the last assignment."""
        return {t.revision_id: (t.percent, sorted(r.replica_id for r in t.replicas)) for t in self.assignment().targets}

    def status(self) -> DeploymentStatusChanged:
        return [e for e in self.history if isinstance(e, DeploymentStatusChanged)][-1]

    def clear(self) -> None:
        self.timeline.clear()


@pytest.fixture
def world() -> World:
    return World()


def test_the_fake_runtime_is_a_runtime() -> None:
    runtime: Runtime = FakeRuntime()  # mypy checks the protocol; this checks every method exists
    assert all(callable(getattr(runtime, name)) for name in Runtime.__dict__ if not name.startswith("_") and name != "on_replica_event")


async def test_create_starts_the_replicas_then_serves_them_once_ready(world: World) -> None:
    applied = world.apply(spec(replicas=2))
    rev = revision_id(applied.spec)
    await world.reconcile()

    (apply,) = world.calls()
    assert apply.method == "apply" and apply.replicas == 2 and apply.name == f"default-iris-{rev}"
    assert world.serving() == {rev: (0, [])}  # listed (its version resolves), nothing ready yet
    started = world.of(ReplicaStarted)
    assert len(started) == 2 and {e.revision_id for e in started} == {rev}
    assert world.status().phase == "Provisioning" and world.status().revision_id == rev

    ids = await world.replica_ids()
    await world.ready(ids[0])
    await world.reconcile()
    assert world.serving() == {rev: (100, [ids[0]])}
    await world.ready(ids[1])
    await world.reconcile()
    assignment = world.assignment()
    assert world.serving() == {rev: (100, ids)}
    assert [t.spec_versions for t in assignment.targets] == [[1]]
    assert [a.generation for a in world.of(TrafficAssigned)] == [1, 2, 3]
    assert {r.address for r in assignment.targets[0].replicas} <= {f"10.0.0.1:{p}" for p in range(30000, 30010)}
    assert (world.status().phase, world.status().ready_replicas) == ("Ready", 2)

    world.clear()
    await world.reconcile()  # nothing changed: nothing is done, nothing is said
    assert world.timeline == []


@dataclass(frozen=True)
class ScaleCase:
    name: str
    spec_replicas: int
    then: list[tuple[str, int, int]]  # ("spec", replicas, _) | ("user"/"autoscaler", replicas, spec_replicas)
    desired: int
    source: str
    autoscaling: bool = False


SCALE_CASES = [
    ScaleCase("spec scales up", 2, [("spec", 3, 0)], 3, "spec"),
    ScaleCase("spec scales down", 3, [("spec", 1, 0)], 1, "spec"),
    ScaleCase("user scales without a spec version", 2, [("user", 4, 2)], 4, "user"),
    ScaleCase("user scales down", 3, [("user", 1, 3)], 1, "user"),
    ScaleCase("a spec with another count supersedes the user", 2, [("user", 4, 2), ("spec", 1, 0)], 1, "spec"),
    ScaleCase("a spec keeping the count keeps the user's", 2, [("user", 4, 2), ("spec", 2, 0)], 4, "user"),
    ScaleCase("the autoscaler counts while autoscaling is on", 2, [("user", 5, 2), ("autoscaler", 3, 2)], 3, "autoscaler", True),
    ScaleCase("the autoscaler does not count while it is off", 2, [("autoscaler", 3, 2)], 2, "spec"),
]


@pytest.mark.parametrize("case", SCALE_CASES, ids=lambda c: c.name)
async def test_scale_composes_spec_and_decisions(world: World, case: ScaleCase) -> None:
    autoscaling = {"autoscaling": {"enabled": True, "maxReplicas": 9, "metrics": [{"metric": "cpu", "value": 50}]}}

    def versioned(replicas: int) -> DeploymentSpec:
        return spec(replicas, resources={"ports": [8000], "replicas": replicas, **(autoscaling if case.autoscaling else {})})

    first = world.apply(versioned(case.spec_replicas))
    await world.reconcile()
    before = await world.replica_ids()
    await world.ready()
    await world.reconcile()
    world.clear()
    for source, replicas, spec_replicas in case.then:
        if source == "spec":
            world.apply(versioned(replicas))
        else:
            world.scale(replicas, spec_replicas, source)
    await world.reconcile()
    await world.ready()
    await world.reconcile()

    after = await world.replica_ids()
    assert len(after) == case.desired
    rev = revision_id(first.spec)
    assert set(after) >= set(before) or set(after) <= set(before)  # scaled, never replaced
    assert world.serving() == {rev: (100, after)}
    assert (world.status().desired_replicas, world.status().replicas_source) == (case.desired, case.source)
    stopped = world.of(ReplicaStopped)
    assert sorted(e.replica_id for e in stopped) == sorted(set(before) - set(after))
    if stopped:  # the assignment without them came first, then their stop
        without = next(i for i, e in enumerate(world.timeline) if isinstance(e, TrafficAssigned) and len(e.targets[0].replicas) == case.desired)
        shrink = next(i for i, e in enumerate(world.timeline) if isinstance(e, Call) and e.replicas == case.desired)
        assert without < shrink
        newest_first = sorted(before)[case.desired :]  # the fake numbers replicas in creation order
        assert sorted(e.replica_id for e in stopped) == newest_first


async def test_stop_then_start(world: World) -> None:
    await world.running(spec(replicas=2))
    rev = revision_id(spec(replicas=2))
    world.clear()

    world.apply(spec(replicas=2, enabled=False))
    await world.reconcile()
    assignment = world.assignment()
    assert (assignment.enabled, assignment.targets) == (False, [])
    assert world.timeline.index(assignment) < world.timeline.index(Call("scale", f"default-iris-{rev}", 0))
    assert {e.reason for e in world.of(ReplicaStopped)} == {"stopped (enabled: false)"}
    assert await world.runtime.replicas() == []
    assert (world.status().phase, world.status().desired_replicas) == ("Stopped", 0)
    assert [w.replicas for w in await world.runtime.workloads()] == [0]  # kept, to start again as it was

    world.apply(spec(replicas=2, enabled=True))
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    assert world.assignment().enabled and world.serving()[rev][0] == 100
    assert world.status().phase == "Ready"
    assert world.assignment().targets[0].spec_versions == [1, 2, 3]


async def test_template_change_old_serves_until_new_is_ready_and_leaves_traffic_before_it_stops(world: World) -> None:
    old = await world.running(spec(replicas=2))
    old_rev = revision_id(spec(replicas=2))
    world.clear()

    # Rolling with maxSurge 100 % and maxUnavailable 0: every new replica starts at once, and an old
    # one goes for each new one ready (the default 25 %/25 % steps: test_scheduler_strategies.py).
    surge_all = {"type": "rolling", "maxSurge": "100%", "maxUnavailable": 0}
    second = world.apply(spec(replicas=2, command=["python", "serve.py", "--v2"], updateStrategy=surge_all))
    new_rev = revision_id(second.spec)
    await world.reconcile()
    assert world.calls() == [Call("apply", f"default-iris-{new_rev}", 2)]
    new = await world.replica_ids(new_rev)
    assert world.serving() == {new_rev: (0, []), old_rev: (100, old)}
    assert world.status().phase == "Provisioning"

    await world.ready(new[0])
    await world.reconcile()
    assert world.serving() == {new_rev: (50, [new[0]]), old_rev: (50, [old[0]])}  # by ready replicas
    assert [e.replica_id for e in world.of(ReplicaStopped)] == [old[1]]  # after the assignment without it

    await world.ready(new[1])
    await world.reconcile()
    cut_over = world.assignment()
    assert world.serving() == {new_rev: (100, new)}
    assert cut_over.targets[0].spec_versions == [2]
    delete = world.timeline.index(Call("delete", f"default-iris-{old_rev}"))
    assert world.timeline.index(cut_over) < delete  # published without the old ones BEFORE they stop
    assert all(world.timeline.index(e) < delete for e in world.of(ReplicaStopped))
    assert {e.reason for e in world.of(ReplicaStopped)} == {"replaced by spec version 2"}
    assert await world.replica_ids() == new
    await world.reconcile()
    assert (world.status().phase, world.status().ready_replicas) == ("Ready", 2)


async def test_template_change_whose_replicas_never_get_ready_keeps_the_old_serving(world: World) -> None:
    old = await world.running(spec(replicas=1))
    second = world.apply(spec(replicas=1, command=["python", "broken.py"]))
    await world.reconcile()
    new = await world.replica_ids(revision_id(second.spec))
    await world.ready(*new, ready=False)
    await world.reconcile()
    assert world.serving()[revision_id(spec(replicas=1))] == (100, old)
    assert not any(c.method == "delete" for c in world.calls())


async def test_delete_publishes_the_tombstone_then_stops_everything_then_forgets(world: World) -> None:
    await world.running(spec(replicas=2))
    world.clear()

    world.delete()
    await world.reconcile()
    tombstone = world.assignment()
    assert (tombstone.deleted, tombstone.enabled, tombstone.targets, tombstone.spec_version) == (True, False, [], 1)
    first_delete = next(i for i, e in enumerate(world.timeline) if isinstance(e, Call) and e.method == "delete")
    assert world.timeline.index(tombstone) < first_delete
    assert {e.reason for e in world.of(ReplicaStopped)} == {"deployment deleted"}
    assert await world.runtime.workloads() == [] and world.status().phase == "Deleted"
    assert world.reconciler.held() == {"deployments": 0, "gone": 1, "locks": 0, "kicked": 0, "tasks": 0}

    world.apply(spec(replicas=2), version=1)  # a late redelivery of the spec must not bring it back
    await world.reconcile()
    assert await world.runtime.replicas() == []


async def test_adoption_serves_what_runs_without_starting_or_announcing_again(world: World) -> None:
    applied = world.apply(spec(replicas=2))
    shape = render(applied, ResolvedEnv({}, frozenset()), 2)
    replicas = world.runtime.adopt(shape, ["a", "b"])
    # What the bus held for them before this scheduler started: announced, ready, served at gen 7.
    serving_as = Serving(applied, "spec-1", 8000, health_checks_of(applied.spec), shape.revision_id)
    started = [started_event(r, serving_as) for r in replicas]
    reconciler = Reconciler(world.runtime, world.secrets, world.publish)
    last = TrafficAssigned(
        deployment_id=DID, project="default", slug="iris", name="iris", generation=7, spec_version=1,
    )
    reconciler.rebuild(
        specs=[applied], replicas=started, health=[World.health(r.replica_id, 0, True) for r in replicas],
        assignments=[last],
    )  # fmt: skip
    world.reconciler = reconciler
    await world.reconcile()

    assert world.calls() == []  # what runs is what should run
    assert [e.replica_id for e in world.of(ReplicaStarted)] == []  # with the ids the health-monitor knows
    assert world.assignment().generation == 8  # goes on from the stream's newest
    assert world.serving() == {shape.revision_id: (100, ["a", "b"])}
    assert world.status().phase == "Ready"


async def test_a_crashed_replica_leaves_the_assignment_and_comes_back_once_ready(world: World) -> None:
    a, b = await world.running(spec(replicas=2))
    rev = revision_id(spec(replicas=2))

    world.runtime.crash(b, exit_code=3)
    await world.reconcile()
    assert world.serving() == {rev: (100, [a])}
    (exited,) = world.of(ReplicaExited)
    assert (exited.replica_id, exited.exit_code, exited.revision_id) == (b, 3, rev)
    assert world.status().phase == "CrashLoopBackOff"

    world.runtime.recover(b)
    await world.reconcile()
    assert world.serving() == {rev: (100, [a])}  # the old process's "ready" is not about this one
    assert "replica " + b + " restarted: exited with code 3" in world.status().reason
    await world.ready(b)
    await world.reconcile()
    assert world.serving() == {rev: (100, [a, b])}


async def test_restart_request_reason_shows_in_status(world: World) -> None:
    (a,) = await world.running(spec(replicas=1))
    reason = "liveness probe failed 3 consecutive times"
    request = ReplicaRestartRequested(deployment_id=DID, project="default", slug="iris", replica_id=a, spec_id="x", reason=reason)
    assert await world.reconciler.restart(request)
    await world.reconcile()
    assert world.calls()[-1] == Call("restart", a)
    assert world.status().replicas[0].last_restart_reason == reason
    assert f"restarted: {reason}" in world.status().reason and "not ready" not in world.status().reason


async def test_stale_events_are_ignored(world: World) -> None:
    world.apply(spec(replicas=2), version=5)
    await world.reconcile()
    await world.ready()
    await world.reconcile()
    a, b = await world.replica_ids()
    assert not world.reconciler.spec_event(world.apply(spec(replicas=9), version=4))  # older version
    stale = World.health(a, 0, False).model_copy(update={"occurred_at": World.health(a, 0, True).occurred_at.replace(year=2000)})
    assert not world.reconciler.health_changed(stale)  # older than the ready one it holds
    world.clear()
    await world.reconcile()
    assert world.timeline == []
    assert len(await world.replica_ids()) == 2


async def test_missing_secret_is_terminal_failed_and_names_the_variable(world: World) -> None:
    world.apply(spec(replicas=1, env=[{"name": "API_KEY", "value": "secret:model-key"}]))
    await world.reconcile()
    assert world.calls() == [] and world.status().phase == "Failed"
    assert "API_KEY" in world.status().reason and world.reconciler._states[DID].requeue is None

    world.secrets.values["model-key"] = "s3cr3t"
    await world.reconcile()
    (workload,) = await world.runtime.workloads()
    assert workload.env["API_KEY"] == "s3cr3t" and workload.secret_env == frozenset({"API_KEY"})
    assert all("s3cr3t" not in e.model_dump_json() for e in world.timeline if isinstance(e, Event))


async def test_model_env_and_what_is_not_acted_on(world: World) -> None:
    world.runtime.lacks = ["image python:3.11 (the local runtime runs the command on this machine)"]
    world.apply(spec(
        replicas=1, model={"id": "iris", "version": "3"}, updateStrategy={"type": "canary", "canaryPercent": 10},
        loadBalancer={"enabled": False},
    ))  # fmt: skip
    await world.reconcile()
    (workload,) = await world.runtime.workloads()
    assert (workload.env["BERTH_MODEL_ID"], workload.env["BERTH_MODEL_VERSION"]) == ("iris", "3")
    not_provided = world.status().not_provided
    assert not_provided[0].startswith("image python:3.11")
    # integrations and updateStrategy are acted on (test_scheduler_strategies.py, the tests below): not listed
    assert [item.split(" ")[0] for item in not_provided[1:]] == ["loadBalancer.enabled:"]


WEIGHTS = {"type": "git-lfs", "name": "weights", "path": "/models", "url": "https://hf.co/iris"}


def integrations_outcome(applied: SpecApplied, ready: bool, reason: str = "") -> IntegrationsReady | IntegrationsFailed:
    ref = {"deployment_id": applied.deployment_id, "project": applied.project, "slug": applied.slug}
    revision = revision_id(applied.spec)
    if not ready:
        return IntegrationsFailed(**ref, revision_id=revision, spec_version=applied.spec_version, integration="weights", reason=reason)
    weights = MaterialisedIntegration(name="weights", type="git-lfs", mount="/models/weights", identity="c0ffee", local_path="/cache/git-c0ffee")
    return IntegrationsReady(**ref, revision_id=revision, spec_version=applied.spec_version, integrations=[weights])


async def test_replicas_wait_for_their_integrations_and_then_see_them(world: World) -> None:
    applied = world.apply(spec(replicas=1, integrations=[WEIGHTS]))
    await world.reconcile()
    assert world.calls() == [] and world.status().phase == "Provisioning"
    assert "waiting for integrations weights" in world.status().reason
    assert not any("integrations" in item for item in world.status().not_provided)

    assert world.reconciler.integrations_event(integrations_outcome(applied, ready=True))
    await world.reconcile()
    (workload,) = await world.runtime.workloads()
    assert workload.mounts == (Mount("weights", "/models/weights", "/cache/git-c0ffee"),)
    assert [(i.name, i.identity, i.mount) for i in world.status().integrations] == [("weights", "c0ffee", "/models/weights")]


async def test_failed_integrations_leave_replicas_unstarted_with_the_reason_then_a_ready_retry_starts_them(world: World) -> None:
    applied = world.apply(spec(replicas=1, integrations=[WEIGHTS]))
    world.reconciler.integrations_event(integrations_outcome(applied, ready=False, reason="integration weights: git fetch: authentication failed"))
    await world.reconcile()
    await world.reconcile()  # no crash loop, nothing started, however often it looks
    assert world.calls() == []
    assert (world.status().phase, world.status().reason) == ("Failed", "integration weights: git fetch: authentication failed")

    world.reconciler.integrations_event(integrations_outcome(applied, ready=True))
    await world.reconcile()
    assert len(await world.runtime.workloads()) == 1


async def test_a_new_revision_waiting_for_integrations_leaves_the_previous_one_serving(world: World) -> None:
    (serving,) = await world.running(spec(replicas=1))
    world.apply(spec(replicas=1, integrations=[WEIGHTS]))
    await world.reconcile()
    (workload,) = await world.runtime.workloads()
    assert workload.mounts == () and await world.replica_ids() == [serving]  # the previous revision still runs
    assert world.serving()[revision_id(spec(replicas=1))] == (100, [serving])
    assert "waiting for integrations weights" in world.status().reason


async def test_a_failed_reconcile_is_requeued_with_back_off(world: World) -> None:
    world.apply(spec(replicas=1))

    async def broken(event: Event) -> None:
        raise ConnectionError("bus away")

    world.reconciler._publish = broken
    with structlog.testing.capture_logs() as logs:
        await world.reconciler.reconcile_logged(DID)
        await world.reconciler.reconcile_logged(DID)
    assert [line["event"] for line in logs] == ["reconcile failed; requeued"] * 2
    state = world.reconciler._states[DID]
    assert state.failures == 2 and state.requeue is not None
    world.reconciler._publish = world.publish
    await world.reconciler.reconcile_logged(DID)
    assert state.failures == 0 and state.requeue is None
    await world.reconciler.shutdown()


async def test_a_restart_replaces_every_replica_through_the_update_strategy(world: World) -> None:
    """`berth secrets set --restart-users`: a version whose only change is restartedAt rolls the
    replicas like any new revision; the old ones serve until the new ones are ready."""
    old = await world.running(spec(replicas=1))
    restarted = world.apply(spec(replicas=1, restartedAt="2026-12-01T12:00:00Z"))
    new_rev = revision_id(restarted.spec)
    assert new_rev != revision_id(spec(replicas=1))
    await world.reconcile()
    new = await world.replica_ids(new_rev)
    assert len(new) == 1 and world.serving()[revision_id(spec(replicas=1))] == (100, old)
    await world.ready(*new)
    await world.reconcile()
    assert world.serving() == {new_rev: (100, new)}
    assert await world.replica_ids() == new


async def test_a_fetch_under_way_shows_its_progress_in_status_until_ready(world: World) -> None:
    applied = world.apply(spec(replicas=1, integrations=[WEIGHTS]))
    ref = {"deployment_id": applied.deployment_id, "project": applied.project, "slug": applied.slug}
    progress = IntegrationsProgress(**ref, revision_id=revision_id(applied.spec), spec_version=applied.spec_version,
                                    integration="weights", fetched_files=2, fetched_bytes=2048)  # fmt: skip
    assert world.reconciler.integrations_event(progress)
    await world.reconcile()
    assert world.calls() == []
    fetching = world.status().fetching
    assert fetching is not None and (fetching.fetched_files, fetching.fetched_bytes) == (2, 2048)
    assert "(weights: 2 files, 2048 bytes so far)" in world.status().reason
    world.reconciler.integrations_event(integrations_outcome(applied, ready=True))
    await world.reconcile()
    assert world.status().fetching is None and len(await world.runtime.workloads()) == 1
