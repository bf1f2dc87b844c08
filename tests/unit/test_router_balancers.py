from __future__ import annotations

from collections import Counter

from libs.spec import LoadBalancer
from services.router.balancers import (
    First,
    IpHash,
    LeastConnections,
    RequestKey,
    RoundRobin,
    Sticky,
    Weighted,
    balancer_for,
    hash_seed,
)
from services.router.table import Replica

KEY = RequestKey("10.0.0.1", None)


def replicas(*names: str) -> tuple[Replica, ...]:
    return tuple(Replica(name, "s1", f"http://127.0.0.1:{9000 + i}", hash_seed(name)) for i, name in enumerate(names))


def test_round_robin_takes_turns() -> None:
    pool, balancer = replicas("a", "b", "c"), RoundRobin()
    assert [balancer.pick(pool, KEY).replica_id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_connections_picks_the_least_busy_and_shares_ties() -> None:
    a, b, c = pool = replicas("a", "b", "c")
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    balancer = LeastConnections()
    assert {balancer.pick(pool, KEY).replica_id for _ in range(5)} == {"b"}
    a.in_flight = b.in_flight = c.in_flight = 0
    assert Counter(balancer.pick(pool, KEY).replica_id for _ in range(9)) == {"a": 3, "b": 3, "c": 3}


def test_ip_hash_is_stable_spread_and_moves_only_the_clients_of_a_leaving_replica() -> None:
    pool, balancer = replicas("a", "b", "c"), IpHash()
    clients = [RequestKey(f"192.168.{i // 250}.{i % 250}", None) for i in range(600)]
    before = {key: balancer.pick(pool, key).replica_id for key in clients}
    assert before == {key: IpHash().pick(pool, key).replica_id for key in clients}
    assert all(150 < n < 250 for n in Counter(before.values()).values()), Counter(before.values())
    after = {key: balancer.pick(pool[:2], key).replica_id for key in clients}
    moved = [key for key in clients if before[key] != after[key]]
    assert moved and all(before[key] == "c" for key in moved)


def test_sticky_follows_the_cookie_while_its_replica_is_in_the_pool() -> None:
    pool, balancer = replicas("a", "b"), Sticky(RoundRobin())
    assert {balancer.pick(pool, RequestKey("ip", "b")).replica_id for _ in range(4)} == {"b"}
    assert [balancer.pick(pool, RequestKey("ip", "gone")).replica_id for _ in range(2)] == ["a", "b"]


def test_spec_settings_choose_the_balancer() -> None:
    assert isinstance(balancer_for(LoadBalancer(algorithm="ip-hash")), IpHash)
    assert isinstance(balancer_for(LoadBalancer(enabled=False)), First)
    sticky = balancer_for(LoadBalancer(algorithm="least-connections", stickySessions=True))
    assert isinstance(sticky, Sticky) and isinstance(sticky.inner, LeastConnections)


def test_weighted_follows_the_percents_exactly_per_hundred_and_interleaves() -> None:
    old, new = replicas("o1"), replicas("n1", "n2")
    balancer = Weighted([(30, old), (70, new)], LoadBalancer())
    picks = [balancer.pick(old + new, KEY).replica_id for _ in range(200)]
    assert Counter(picks) == {"o1": 60, "n1": 70, "n2": 70}
    longest_run = max(len(run) for run in "".join("o" if p == "o1" else "n" for p in picks).split("o"))
    assert longest_run <= 3, "the old revision's share is spread out, not sent in one burst"


def test_weighted_under_ip_hash_keeps_each_client_on_one_revision_and_replica() -> None:
    old, new = replicas("o1", "o2"), replicas("n1", "n2")
    balancer = Weighted([(50, old), (50, new)], LoadBalancer(algorithm="ip-hash"))
    clients = [RequestKey(f"10.1.{i // 250}.{i % 250}", None) for i in range(400)]
    chosen = {key: balancer.pick(old + new, key).replica_id for key in clients}
    assert chosen == {key: balancer.pick(old + new, key).replica_id for key in clients}
    revisions = Counter(name[0] for name in chosen.values())
    assert 150 < revisions["o"] < 250, revisions


def test_weighted_sticky_keeps_a_session_on_its_replica_across_revisions() -> None:
    old, new = replicas("o1"), replicas("n1")
    balancer = Weighted([(10, old), (90, new)], LoadBalancer(stickySessions=True))
    assert {balancer.pick(old + new, RequestKey("ip", "o1")).replica_id for _ in range(20)} == {"o1"}
