"""The routing table: each deployment's newest traffic assignment, prepared for the proxy (no I/O).

The router decides nothing about who serves. The scheduler publishes one `TrafficAssigned` per change
with a `generation` one higher than the last; the table replaces what it holds for the deployment
with any assignment of a higher generation, whole (as Ray Serve's proxies replace their route table
from the controller's snapshots), and ignores the rest (the watch and the periodic re-read deliver
some twice, or late). Everything the proxy reads per request (replica tuples, the weighted choice
across revisions, the balancer) is built here once per assignment, never on the hot path.

What survives an assignment is what counts requests: the `Route` object of the deployment (its
request statistics, its balancer's turn when the load-balancer settings are unchanged) and the
`Replica` object of every replica the new assignment keeps (its in-flight count).

Bounded state: a deleted deployment's route goes at once, and its tombstone (the generation that
deleted it, so a late older assignment cannot bring it back) is kept for `TOMBSTONE_SECONDS` only;
an address no route uses any more is handed to `on_address_gone` (the connection pools drop it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from libs.events import TrafficAssigned
from libs.spec import LoadBalancer
from services.router.auth import BasicAuth
from services.router.balancers import Balancer, RoundRobin, Weighted, balancer_for, hash_seed
from services.router.metrics import Stats

TOMBSTONE_SECONDS = 600.0  # far longer than a re-read of the traffic stream can lag behind the watch


@dataclass(slots=True, eq=False)
class Replica:
    replica_id: str
    revision_id: str
    base_url: str  # http://host:port
    hash_seed: int
    in_flight: int = 0


@dataclass(slots=True, eq=False)
class Route:
    """One deployment as the proxy sees it: its newest assignment, prepared."""

    deployment_id: str
    project: str = ""
    slug: str = ""
    generation: int = 0
    spec_version: int = 0
    enabled: bool = True
    auth: BasicAuth | None = None
    load_balancer: LoadBalancer | None = None
    inner: Balancer = field(default_factory=RoundRobin)  # within one revision's replicas
    balancer: Balancer = field(default_factory=RoundRobin)  # `inner`, or Weighted when revisions split
    sticky: bool = False
    replicas: dict[str, Replica] = field(default_factory=dict)  # every listed replica, by id
    serving: tuple[Replica, ...] = ()  # replicas of the revisions with a percent, ordered by id
    by_version: dict[int, tuple[Replica, ...]] = field(default_factory=dict)  # running versions only
    aliases: dict[str, int] = field(default_factory=dict)
    hold_seconds: float = 0.0  # with no serving replica, how long a request waits for one (scale to zero)
    held: int = 0  # requests waiting now
    serving_again: asyncio.Event | None = None  # set when replicas serve again (held requests wake)
    applied_at: float = 0.0  # wall clock when this generation was applied
    applied_monotonic: float = 0.0
    stats: Stats = field(default_factory=Stats)

    @property
    def key(self) -> str:
        return f"{self.project}/{self.slug}"


def wake(route: Route) -> None:
    """Let the requests held for the route look again."""
    if route.serving_again is not None:
        route.serving_again.set()
        route.serving_again = None


class RoutingTable:
    def __init__(
        self,
        on_address_gone: Callable[[str], None] = lambda base_url: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_key: dict[str, Route] = {}  # "project/slug" -> route (what the proxy reads)
        self._routes: dict[str, Route] = {}  # deployment id -> route
        self._tombstones: dict[str, tuple[int, float]] = {}  # deployment id -> (generation, when)
        self._addresses: dict[str, int] = {}  # base URL -> replicas of all routes there
        self._on_address_gone = on_address_gone
        self._clock = clock

    def now(self) -> float:
        """The table's clock (monotonic seconds), for `forget`'s `read_since`."""
        return self._clock()

    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def get(self, deployment_id: str) -> Route | None:
        return self._routes.get(deployment_id)

    def generation(self, deployment_id: str) -> int:
        """The highest generation applied (or deleted at) for the deployment; 0 when none."""
        route = self._routes.get(deployment_id)
        if route is not None:
            return route.generation
        tombstone = self._tombstones.get(deployment_id)
        return tombstone[0] if tombstone is not None else 0

    def apply(self, event: TrafficAssigned, auth: BasicAuth | None) -> list[BasicAuth]:
        """Make `event` the deployment's assignment if its generation is higher than held. Returns the
        BasicAuths no longer referenced (the previous one, or `auth` itself when not applied)."""
        if event.generation <= self.generation(event.deployment_id):
            return [auth] if auth is not None else []
        unused = [auth] if auth is not None and event.deleted else []
        if event.deleted:
            route = self.drop(event.deployment_id)
            if route is not None:  # remembered only for what was held: a re-read holds the rest
                self._tombstones[event.deployment_id] = (event.generation, self._clock())
                unused += [route.auth] if route.auth is not None else []
            return unused
        route = self._routes.get(event.deployment_id)
        if route is None:
            route = self._routes[event.deployment_id] = Route(event.deployment_id)
        previous_auth = route.auth
        if self.by_key.get(route.key) is route:  # the slug follows the name, which may have changed
            del self.by_key[route.key]
        route.project, route.slug = event.project, event.slug
        route.generation, route.spec_version, route.enabled = event.generation, event.spec_version, event.enabled
        route.auth, route.aliases = auth, dict(event.aliases)
        if route.load_balancer != event.load_balancer:  # unchanged settings keep the balancer's turn
            route.load_balancer, route.inner = event.load_balancer, balancer_for(event.load_balancer)
        route.sticky = event.load_balancer.stickySessions
        route.hold_seconds = event.hold_seconds
        self._replace_replicas(route, event)
        if route.serving or not route.enabled:
            wake(route)
        route.applied_at, route.applied_monotonic = time.time(), self._clock()
        self.by_key[route.key] = route
        return [previous_auth] if previous_auth is not None else []

    def drop(self, deployment_id: str) -> Route | None:
        """Forget a deployment (no tombstone); the route it had."""
        route = self._routes.pop(deployment_id, None)
        if route is None:
            return None
        if self.by_key.get(route.key) is route:
            del self.by_key[route.key]
        self._count_addresses((), [r.base_url for r in route.replicas.values()])
        route.serving, route.hold_seconds = (), 0.0
        wake(route)  # held requests answer at once: the deployment is gone
        return route

    def forget(self, present: Collection[str], read_since: float) -> list[Route]:
        """After a re-read of the stream: drop the routes it no longer holds (applied before the read
        began, so not merely newer than it) and the tombstones past their time. The routes dropped."""
        gone = [
            deployment_id for deployment_id, route in self._routes.items()
            if deployment_id not in present and route.applied_monotonic < read_since
        ]
        dropped = [route for route in map(self.drop, gone) if route is not None]
        self.prune_tombstones()
        return dropped

    def prune_tombstones(self) -> None:
        expired = self._clock() - TOMBSTONE_SECONDS
        for deployment_id in [d for d, (_, when) in self._tombstones.items() if when < expired]:
            del self._tombstones[deployment_id]

    def sizes(self) -> dict[str, int]:
        """How much the table holds (tests and diagnostics: every map here must stay bounded)."""
        return {
            "routes": len(self._routes), "by_key": len(self.by_key),
            "tombstones": len(self._tombstones), "addresses": len(self._addresses),
        }

    def _replace_replicas(self, route: Route, event: TrafficAssigned) -> None:
        previous = route.replicas
        previous_urls = [replica.base_url for replica in previous.values()]
        replicas: dict[str, Replica] = {}
        weighted: list[tuple[int, tuple[Replica, ...]]] = []
        by_version: dict[int, tuple[Replica, ...]] = {}
        for target in event.targets:
            members = []
            for listed in sorted(target.replicas, key=lambda r: r.replica_id):
                replica = previous.get(listed.replica_id)
                base_url = f"http://{listed.address}"
                if replica is None:
                    replica = Replica(listed.replica_id, target.revision_id, base_url, hash_seed(listed.replica_id))
                else:  # kept: the same object, so its in-flight count stays right
                    replica.revision_id, replica.base_url = target.revision_id, base_url
                replicas[listed.replica_id] = replica
                members.append(replica)
            revision = tuple(members)
            by_version.update((version, revision) for version in target.spec_versions)
            if target.percent > 0 and revision:
                weighted.append((target.percent, revision))
        route.replicas, route.by_version = replicas, by_version
        if len(weighted) > 1:
            route.serving = tuple(sorted((r for _, revision in weighted for r in revision), key=lambda r: r.replica_id))
            route.balancer = Weighted(weighted, event.load_balancer)
        else:
            route.serving = weighted[0][1] if weighted else ()
            route.balancer = route.inner
        self._count_addresses([replica.base_url for replica in replicas.values()], previous_urls)

    def _count_addresses(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """Keep the count of replicas per address; an address whose count reaches 0 is gone."""
        counts = self._addresses
        for base_url in added:
            counts[base_url] = counts.get(base_url, 0) + 1
        for base_url in removed:
            left = counts.get(base_url, 0) - 1
            if left > 0:
                counts[base_url] = left
            else:
                counts.pop(base_url, None)
                self._on_address_gone(base_url)
