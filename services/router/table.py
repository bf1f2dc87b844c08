"""The routing table: which replicas serve each endpoint, built from bus events (no I/O here).

Events may arrive twice, late, or out of order across streams (a snapshot read on start overlaps
what the durable consumers deliver). Applying them is therefore idempotent and ordered:
- a SpecApplied older than the version held only teaches the table that version's spec_id;
- a deleted deployment stays deleted (ids are never reused);
- per replica, an event older (`occurred_at`) than the last one applied is ignored, across the
  health and replica streams, so a stale "ready" cannot resurrect a stopped replica.
Whatever changes, the per-route tuples the proxy reads are rebuilt here, never on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from libs.events import (
    DeploymentDeleted,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaStopped,
    SpecApplied,
)
from libs.spec import DeploymentSpec
from services.router.auth import BasicAuth
from services.router.balancers import Balancer, RoundRobin, balancer_for, hash_seed
from services.router.metrics import Stats


@dataclass(slots=True, eq=False)
class Replica:
    replica_id: str
    spec_id: str
    base_url: str  # http://host:port
    hash_seed: int
    in_flight: int = 0


@dataclass(slots=True, eq=False)
class Route:
    """One deployment as the proxy sees it."""

    deployment_id: str
    project: str = ""
    slug: str = ""
    spec: DeploymentSpec | None = None  # None until its SpecApplied arrives: not routable yet
    spec_id: str = ""
    spec_version: int = 0
    auth: BasicAuth | None = None
    balancer: Balancer = field(default_factory=RoundRobin)
    sticky: bool = False
    versions: dict[str, int] = field(default_factory=dict)  # spec_id -> spec_version, every one seen
    ready: dict[str, Replica] = field(default_factory=dict)  # by replica id, every version
    seen: dict[str, datetime] = field(default_factory=dict)  # replica id -> last event applied
    # Derived by `refresh`, read by the proxy:
    serving: tuple[Replica, ...] = ()
    by_version: dict[int, tuple[Replica, ...]] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    @property
    def key(self) -> str:
        return f"{self.project}/{self.slug}"

    @property
    def enabled(self) -> bool:
        return self.spec is not None and self.spec.enabled

    def refresh(self) -> None:
        """Recompute who serves. The current version serves alone once it has all its replicas ready;
        until then every ready replica serves. A replica keeps the spec_id of the version that started
        it, so "not current" means either an old version being replaced (the scheduler stops it once
        the new version is ready) or a replica the new version kept (a change of only replicas or
        description): both must keep serving."""
        ready = sorted(self.ready.values(), key=lambda r: r.replica_id)
        current = tuple(r for r in ready if r.spec_id == self.spec_id)
        desired = self.spec.resources.replicas if self.spec else 1
        self.serving = current if current and len(current) >= desired else tuple(ready)
        by_version: dict[int, list[Replica]] = {}
        for replica in ready:
            version = self.versions.get(replica.spec_id)
            if version is not None:
                by_version.setdefault(version, []).append(replica)
        self.by_version = {version: tuple(replicas) for version, replicas in by_version.items()}


class RoutingTable:
    def __init__(self) -> None:
        self.by_key: dict[str, Route] = {}  # "project/slug" -> route; only routes with a spec
        self._routes: dict[str, Route] = {}  # deployment id -> route
        self._deleted: set[str] = set()

    def routes(self) -> list[Route]:
        return [route for route in self._routes.values() if route.spec is not None]

    def _route(self, deployment_id: str) -> Route | None:
        if deployment_id in self._deleted:
            return None
        route = self._routes.get(deployment_id)
        if route is None:
            route = self._routes[deployment_id] = Route(deployment_id)
        return route

    def apply_spec(self, event: SpecApplied, auth: BasicAuth | None) -> bool:
        """Make `event` the deployment's current spec unless a newer one is held; True if applied."""
        route = self._route(event.deployment_id)
        if route is None:
            return False
        route.versions[event.spec_id] = event.spec_version
        if route.spec is not None and event.spec_version < route.spec_version:
            route.refresh()  # the version may name replicas already ready
            return False
        if route.spec is None or route.spec.loadBalancer != event.spec.loadBalancer:
            route.balancer = balancer_for(event.spec.loadBalancer)
        self.by_key.pop(route.key, None)  # the slug follows the name, which may have changed
        route.project, route.slug = event.project, event.slug
        route.spec, route.spec_id, route.spec_version = event.spec, event.spec_id, event.spec_version
        route.auth, route.sticky = auth, event.spec.loadBalancer.stickySessions
        route.refresh()
        self.by_key[route.key] = route
        return True

    def note_version(self, event: SpecApplied) -> None:
        """Learn an older version's spec_id (for `/<project>/<slug>/<version>/`) without applying it."""
        route = self._route(event.deployment_id)
        if route is not None:
            route.versions.setdefault(event.spec_id, event.spec_version)

    def apply_deleted(self, event: DeploymentDeleted) -> None:
        self._deleted.add(event.deployment_id)
        route = self._routes.pop(event.deployment_id, None)
        if route is not None and self.by_key.get(route.key) is route:
            del self.by_key[route.key]

    def apply_health(self, event: ReplicaHealthChanged) -> None:
        route = self._route(event.deployment_id)
        if route is None or not _is_newest(route, event.replica_id, event.occurred_at):
            return
        if not event.ready:
            self._drop(route, event.replica_id)
            return
        base_url = f"http://{event.address}"
        replica = route.ready.get(event.replica_id)
        if replica is not None and replica.base_url == base_url and replica.spec_id == event.spec_id:
            return
        if replica is None:
            route.ready[event.replica_id] = Replica(event.replica_id, event.spec_id, base_url, hash_seed(event.replica_id))
        else:  # same replica on a new port: keep the object so its in-flight count stays right
            replica.base_url, replica.spec_id = base_url, event.spec_id
        route.refresh()

    def apply_replica_gone(self, event: ReplicaExited | ReplicaStopped) -> None:
        route = self._route(event.deployment_id)
        if route is not None and _is_newest(route, event.replica_id, event.occurred_at):
            self._drop(route, event.replica_id)

    def _drop(self, route: Route, replica_id: str) -> None:
        if route.ready.pop(replica_id, None) is not None:
            route.refresh()


def _is_newest(route: Route, replica_id: str, occurred_at: datetime) -> bool:
    """Record `occurred_at` as the replica's latest event unless a later one was applied already."""
    seen = route.seen.get(replica_id)
    if seen is not None and occurred_at < seen:
        return False
    route.seen[replica_id] = occurred_at
    return True
