from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import pytest

from libs.events import RevisionTarget, ServingReplica, TrafficAssigned
from libs.spec import LoadBalancer
from services.router.auth import BasicAuth
from services.router.balancers import IpHash, RequestKey, RoundRobin, Weighted
from services.router.proxy import Reply, _pinned
from services.router.table import TOMBSTONE_SECONDS, RoutingTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def target(revision: str, percent: int, *replicas: str, versions: tuple[int, ...] = (), port: int = 9000) -> RevisionTarget:
    return RevisionTarget(
        revision_id=revision, percent=percent, spec_versions=list(versions),
        replicas=[ServingReplica(replica_id=r, address=f"127.0.0.1:{port + i}") for i, r in enumerate(replicas)],
    )


def assignment(generation: int, *targets: RevisionTarget, deployment: str = "d1", **fields: Any) -> TrafficAssigned:
    fields.setdefault("spec_version", max((v for t in targets for v in t.spec_versions), default=1))
    return TrafficAssigned(
        deployment_id=deployment, project="p", slug=fields.pop("slug", "iris"), generation=generation,
        targets=list(targets), **fields,
    )


def ids(replicas: tuple[Any, ...]) -> list[str]:
    return [r.replica_id for r in replicas]


def test_one_revision_serves_alone_with_the_plain_balancer() -> None:
    table = RoutingTable()
    table.apply(assignment(1, target("r1", 100, "b", "a", versions=(1,))), None)
    route = table.by_key["p/iris"]
    assert ids(route.serving) == ["a", "b"] and route.balancer is route.inner
    assert isinstance(route.inner, RoundRobin)
    assert route.replicas["a"].base_url == "http://127.0.0.1:9001"


def test_only_a_higher_generation_replaces_the_route_whole() -> None:
    table = RoutingTable()
    table.apply(assignment(2, target("r1", 100, "a", "b", versions=(1,))), None)
    table.apply(assignment(1, target("r0", 100, "old", versions=(1,))), None)  # late: ignored
    table.apply(assignment(2, target("r0", 100, "old", versions=(1,))), None)  # the same again: ignored
    assert ids(table.by_key["p/iris"].serving) == ["a", "b"]
    table.apply(assignment(3, target("r2", 100, "c", versions=(2,)), spec_version=2), None)
    route = table.by_key["p/iris"]
    assert ids(route.serving) == ["c"] and list(route.replicas) == ["c"] and list(route.by_version) == [2]


def test_a_kept_replica_keeps_its_object_and_in_flight_count() -> None:
    table = RoutingTable()
    table.apply(assignment(1, target("r1", 100, "a", "b")), None)
    kept = table.by_key["p/iris"].replicas["a"]
    kept.in_flight = 3
    table.apply(assignment(2, target("r1", 100, "a", port=9100)), None)  # b left; a moved port
    route = table.by_key["p/iris"]
    assert route.replicas["a"] is kept and kept.in_flight == 3 and kept.base_url == "http://127.0.0.1:9100"


def test_two_serving_revisions_split_by_percent_and_each_version_maps_to_its_revision() -> None:
    table = RoutingTable()
    table.apply(assignment(
        1, target("old", 25, "o1", versions=(1, 2)), target("new", 75, "n1", "n2", versions=(3,), port=9100),
    ), None)
    route = table.by_key["p/iris"]
    assert isinstance(route.balancer, Weighted) and ids(route.serving) == ["n1", "n2", "o1"]
    assert {v: ids(r) for v, r in route.by_version.items()} == {1: ["o1"], 2: ["o1"], 3: ["n1", "n2"]}
    picks = [route.balancer.pick(route.serving, RequestKey("ip", None)).replica_id for _ in range(400)]
    assert picks.count("o1") == 100 and picks.count("n1") == picks.count("n2") == 150


def test_a_revision_with_no_ready_replica_keeps_its_versions_but_gets_no_traffic() -> None:
    table = RoutingTable()
    table.apply(assignment(1, target("old", 100, "o1", versions=(1,)), target("new", 0, versions=(2,))), None)
    route = table.by_key["p/iris"]
    assert ids(route.serving) == ["o1"] and route.balancer is route.inner
    assert route.by_version[2] == () and ids(route.by_version[1]) == ["o1"]


def test_a_tombstone_drops_the_route_and_older_assignments_cannot_bring_it_back_until_it_expires() -> None:
    clock = Clock()
    table = RoutingTable(clock=clock)
    table.apply(assignment(1, target("r1", 100, "a")), None)
    table.apply(assignment(2, deleted=True), None)
    assert table.by_key == {} and table.routes() == []
    table.apply(assignment(1, target("r1", 100, "a")), None)  # a re-read that lagged behind the watch
    assert table.by_key == {}
    clock.now += TOMBSTONE_SECONDS + 1
    table.prune_tombstones()
    assert table.sizes() == {"routes": 0, "by_key": 0, "tombstones": 0, "addresses": 0}


def test_a_tombstone_for_a_deployment_never_held_is_not_remembered() -> None:
    table = RoutingTable()
    table.apply(assignment(5, deleted=True), None)
    assert table.sizes()["tombstones"] == 0


def test_a_rename_moves_the_endpoint_and_unchanged_balancing_keeps_its_turn() -> None:
    table = RoutingTable()
    table.apply(assignment(1, target("r1", 100, "a")), None)
    inner = table.by_key["p/iris"].inner
    table.apply(assignment(2, target("r1", 100, "a"), slug="iris-two"), None)
    assert list(table.by_key) == ["p/iris-two"] and table.by_key["p/iris-two"].inner is inner
    table.apply(assignment(3, target("r1", 100, "a"), slug="iris-two", load_balancer=LoadBalancer(algorithm="ip-hash")), None)
    assert isinstance(table.by_key["p/iris-two"].inner, IpHash)


def test_an_address_is_gone_when_no_route_has_a_replica_there() -> None:
    gone: list[str] = []
    table = RoutingTable(on_address_gone=gone.append)
    table.apply(assignment(1, target("r1", 100, "a", "b")), None)
    table.apply(assignment(1, target("r1", 100, "x"), deployment="d2", slug="other"), None)  # shares :9000
    table.apply(assignment(2, target("r1", 100, "a")), None)  # b (:9001) leaves
    assert gone == ["http://127.0.0.1:9001"]
    table.apply(assignment(3, deleted=True), None)  # a (:9000) goes, but d2's x is there too
    assert gone == ["http://127.0.0.1:9001"]
    table.apply(assignment(2, deleted=True, deployment="d2", slug="other"), None)
    assert gone == ["http://127.0.0.1:9001", "http://127.0.0.1:9000"]


def test_basic_auth_no_longer_referenced_is_handed_back() -> None:
    table = RoutingTable()
    first, second = BasicAuth("one"), BasicAuth("two")
    assert table.apply(assignment(1, basic_auth_key="secret:k"), first) == []
    assert table.apply(assignment(1, basic_auth_key="secret:k"), second) == [second]  # not applied
    assert table.apply(assignment(2, basic_auth_key="secret:k"), second) == [first]
    assert table.apply(assignment(3, deleted=True), None) == [second]


def test_a_reread_drops_routes_the_stream_no_longer_holds_but_not_newer_ones() -> None:
    clock = Clock()
    table = RoutingTable(clock=clock)
    table.apply(assignment(1, target("r1", 100, "a")), None)
    clock.now += 1
    began = table.now()
    clock.now += 1
    table.apply(assignment(1, target("r1", 100, "b"), deployment="d2", slug="new"), None)  # during the read
    dropped = table.forget(present=set(), read_since=began)
    assert [r.deployment_id for r in dropped] == ["d1"] and list(table.by_key) == ["p/new"]


@pytest.mark.parametrize(
    ("pin", "status", "detail"),
    [
        ("2", None, ["o1"]),  # shares the old revision with version 1 (changed only replicas)
        ("stable", None, ["o1"]),
        ("3", None, ["n1"]),
        ("4", 404, "deployment 'iris' has no version 4"),
        ("0", 404, "deployment 'iris' has no version 0"),
        ("canary", 404, "deployment 'iris' has no alias 'canary'"),
        ("1", 503, "version 1 of deployment 'iris' is not running"),
    ],
)
def test_a_pinned_version_or_alias_resolves_to_its_revision(pin: str, status: int | None, detail: Any) -> None:
    table = RoutingTable()
    table.apply(assignment(
        1, target("old", 50, "o1", versions=(2,)), target("new", 50, "n1", versions=(3,), port=9100),
        aliases={"stable": 2}, spec_version=3,
    ), None)
    resolved = _pinned(table.by_key["p/iris"], pin)
    if status is None:
        assert not isinstance(resolved, Reply) and ids(resolved) == detail
    else:
        assert isinstance(resolved, Reply) and resolved.status == status
        assert json.loads(resolved.body)["detail"] == detail


def test_churning_a_thousand_deployments_leaves_nothing_behind() -> None:
    clock, gone = Clock(), [0]

    def address_gone(base_url: str) -> None:
        gone[0] += 1

    table = RoutingTable(on_address_gone=address_gone, clock=clock)

    def churn(offset: int) -> None:
        for i in range(offset, offset + 1000):
            deployment = f"d{i}"
            table.apply(assignment(1, target("r1", 100, f"{deployment}-a", port=20000 + i), deployment=deployment, slug=deployment), None)
            table.apply(assignment(2, target("r1", 60, f"{deployment}-b", port=23000 + i), target("r2", 40, f"{deployment}-c", port=26000 + i), deployment=deployment, slug=deployment), None)
            table.apply(assignment(3, deleted=True, deployment=deployment, slug=deployment), None)
        clock.now += TOMBSTONE_SECONDS + 1
        table.prune_tombstones()

    churn(0)  # warm: interned strings, dict sizes, code objects
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        churn(1000)
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert table.sizes() == {"routes": 0, "by_key": 0, "tombstones": 0, "addresses": 0}
    assert end - start < 64 * 1024, f"{end - start} bytes kept after churning 1,000 deployments"
    assert gone[0] == 3 * 2000  # every replica address was handed to the pools to drop
