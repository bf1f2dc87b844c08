from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from libs.events import (
    DeploymentDeleted,
    ReplicaHealthChanged,
    ReplicaStopped,
    SpecApplied,
)
from libs.spec import validate_spec
from services.router.balancers import IpHash, RoundRobin
from services.router.table import RoutingTable

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(version: int, name: str = "iris", **fields: Any) -> SpecApplied:
    body = {"name": name, "image": "img", "resources": {"ports": [8000], "replicas": 2}, **fields}
    parsed = validate_spec(body)
    return SpecApplied(
        deployment_id="d1", project="p", slug=parsed.slug, name=parsed.name,
        spec_id=f"v{version}", spec_version=version, spec=parsed,
    )


def health(replica: str, version: int, ready: bool = True, at: int = 0, port: int = 9000) -> ReplicaHealthChanged:
    return ReplicaHealthChanged(
        deployment_id="d1", project="p", slug="iris", spec_id=f"v{version}", replica_id=replica,
        address=f"127.0.0.1:{port}", started=True, ready=ready, live=True, occurred_at=T0 + timedelta(seconds=at),
    )


def serving(table: RoutingTable, key: str = "p/iris") -> list[str]:
    return [r.replica_id for r in table.by_key[key].serving]


def test_ready_replicas_serve_and_unready_ones_do_not() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_health(health("a", 1, at=1))
    table.apply_health(health("b", 1, at=1))
    assert serving(table) == ["a", "b"]
    table.apply_health(health("a", 1, ready=False, at=2))
    assert serving(table) == ["b"]
    assert table.by_key["p/iris"].ready["b"].base_url == "http://127.0.0.1:9000"


def test_an_older_spec_version_only_teaches_its_spec_id() -> None:
    table = RoutingTable()
    assert table.apply_spec(spec(2, loadBalancer={"algorithm": "ip-hash"}), None)
    assert not table.apply_spec(spec(1), None)
    route = table.by_key["p/iris"]
    assert route.spec_version == 2 and isinstance(route.balancer, IpHash)
    table.apply_health(health("a", 1))
    assert list(route.by_version) == [1]


def test_a_deleted_deployment_stays_deleted_when_old_events_replay() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_deleted(DeploymentDeleted(deployment_id="d1", project="p", slug="iris"))
    table.apply_spec(spec(1), None)
    table.apply_health(health("a", 1))
    assert table.by_key == {} and table.routes() == []


def test_a_stale_ready_does_not_bring_back_a_stopped_replica() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_health(health("a", 1, at=1))
    table.apply_replica_gone(ReplicaStopped(
        deployment_id="d1", project="p", slug="iris", spec_id="v1", replica_id="a", reason="scale down",
        occurred_at=T0 + timedelta(seconds=5),
    ))
    table.apply_health(health("a", 1, at=3))  # redelivered late
    assert serving(table) == []
    table.apply_health(health("a", 1, at=9))  # restarted and ready again
    assert serving(table) == ["a"]


def test_a_replica_on_a_new_port_keeps_its_in_flight_count() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_health(health("a", 1, at=1))
    replica = table.by_key["p/iris"].ready["a"]
    replica.in_flight = 2
    table.apply_health(health("a", 1, at=2, port=9100))
    assert table.by_key["p/iris"].ready["a"] is replica and replica.base_url.endswith(":9100")


def test_a_rename_moves_the_endpoint_and_keeps_the_balancer() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    balancer = table.by_key["p/iris"].balancer
    table.apply_spec(spec(2, name="Iris Two"), None)
    assert list(table.by_key) == ["p/iris-two"]
    assert isinstance(balancer, RoundRobin) and table.by_key["p/iris-two"].balancer is balancer


def updating() -> RoutingTable:
    """Version 1 has two ready replicas; version 2 (2 desired) has one so far."""
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_health(health("old-a", 1))
    table.apply_health(health("old-b", 1))
    table.apply_spec(spec(2, image="img:2"), None)
    table.apply_health(health("new-a", 2))
    return table


def test_until_the_new_version_is_complete_every_ready_replica_serves() -> None:
    table = updating()
    assert serving(table) == ["new-a", "old-a", "old-b"]
    table.apply_health(health("new-b", 2))
    assert serving(table) == ["new-a", "new-b"]
    route = table.by_key["p/iris"]
    assert {v: [r.replica_id for r in rs] for v, rs in route.by_version.items()} == {
        1: ["old-a", "old-b"], 2: ["new-a", "new-b"],
    }


def test_replicas_kept_across_a_scale_up_keep_serving() -> None:
    table = RoutingTable()
    table.apply_spec(spec(1), None)
    table.apply_health(health("a", 1))
    table.apply_health(health("b", 1))
    table.apply_spec(spec(2, resources={"ports": [8000], "replicas": 3}), None)
    table.apply_health(health("c", 2))  # the scheduler scaled the running workload: a and b stay v1
    assert serving(table) == ["a", "b", "c"]
