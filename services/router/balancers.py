"""Load balancers: each picks one ready replica for a request, `pick(replicas, request_key)`.

`replicas` is never empty (the proxy answers 503 before asking) and is ordered by replica id, so a
choice that depends on position is the same in every router.

`Weighted` splits a deployment's requests across revisions by the percents of its traffic
assignment, then lets the deployment's balancer pick within the chosen revision's replicas. It is
built once per assignment, and only when more than one revision serves: a single revision costs the
hot path nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from libs.spec import LoadBalancer

if TYPE_CHECKING:
    from services.router.table import Replica

AFFINITY_COOKIE = "berth_affinity"
_MASK64 = (1 << 64) - 1


class RequestKey(NamedTuple):
    client_ip: str
    affinity: str | None  # the replica id in the client's `berth_affinity` cookie, if sticky


class Balancer(Protocol):
    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica: ...


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        turn = self._next
        self._next = turn + 1
        return replicas[turn % len(replicas)]


class LeastConnections:
    """The replica with the fewest requests in flight; ties go round the ring so idle replicas share."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        count = len(replicas)
        start = self._next % count
        self._next = start + 1
        best = replicas[start]
        for offset in range(1, count):
            candidate = replicas[(start + offset) % count]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best


def _mix(value: int) -> int:
    """splitmix64's finaliser: spreads every input bit over the whole word."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def hash_seed(replica_id: str) -> int:
    return zlib.crc32(replica_id.encode())


class IpHash:
    """Rendezvous hashing on the client IP: a client keeps its replica while that replica is ready,
    and a replica joining or leaving moves only the clients it gains or loses (stable across routers
    and restarts, unlike Python's salted `hash`)."""

    __slots__ = ()

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        client = zlib.crc32(request_key.client_ip.encode()) << 32
        return max(replicas, key=lambda replica: _mix(client | replica.hash_seed))


class First:
    """Load balancing turned off in the spec: every request goes to one replica (the first by id)."""

    __slots__ = ()

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        return replicas[0]


class Sticky:
    """Session affinity: the replica named by the client's cookie while it is ready, else `inner`'s."""

    __slots__ = ("inner",)

    def __init__(self, inner: Balancer) -> None:
        self.inner = inner

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        return _affine(replicas, request_key.affinity) or self.inner.pick(replicas, request_key)


def _affine(replicas: Sequence[Replica], affinity: str | None) -> Replica | None:
    """The replica the client's affinity cookie names, if it is among `replicas`."""
    if affinity:
        for replica in replicas:
            if replica.replica_id == affinity:
                return replica
    return None


class Weighted:
    """A revision by percent, then the deployment's balancer within its replicas (one balancer per
    revision, so that one revision's turns do not skew another's).

    The percents become a schedule of `sum(percents)` slots (smooth weighted round-robin, as nginx
    interleaves weighted upstreams), so every hundred requests follow the percents exactly and no
    revision gets a burst. Requests take the slots in turn, or by client IP hash under ip-hash (a
    client keeps its revision as it keeps its replica). A sticky client whose cookie names a replica
    of any serving revision stays on it: a session does not hop revisions during a rollout."""

    __slots__ = ("_by_client", "_next", "_slots")

    def __init__(self, targets: Sequence[tuple[int, tuple[Replica, ...]]], settings: LoadBalancer) -> None:
        revisions = [(percent, (replicas, balancer_for(settings))) for percent, replicas in targets]
        self._slots = _schedule(revisions)
        self._next = 0
        self._by_client = settings.enabled and settings.algorithm == "ip-hash"

    def pick(self, replicas: Sequence[Replica], request_key: RequestKey) -> Replica:
        """`replicas` are every serving revision's; the affinity cookie is looked for among them."""
        affine = _affine(replicas, request_key.affinity)
        if affine is not None:
            return affine
        slots = self._slots
        if self._by_client:
            turn = zlib.crc32(request_key.client_ip.encode())
        else:
            turn = self._next
            self._next = (turn + 1) % len(slots)
        members, balancer = slots[turn % len(slots)]
        return balancer.pick(members, request_key)


T = TypeVar("T")


def _schedule(targets: Sequence[tuple[int, T]]) -> tuple[T, ...]:
    """One slot per percent point, interleaved: each step takes the target furthest behind its share."""
    total = sum(percent for percent, _ in targets)
    current = [0] * len(targets)
    slots = []
    for _ in range(total):
        for index, (percent, _) in enumerate(targets):
            current[index] += percent
        best = max(range(len(targets)), key=current.__getitem__)
        current[best] -= total
        slots.append(targets[best][1])
    return tuple(slots)


_ALGORITHMS: dict[str, type[RoundRobin | LeastConnections | IpHash]] = {
    "round-robin": RoundRobin,
    "least-connections": LeastConnections,
    "ip-hash": IpHash,
}


def balancer_for(settings: LoadBalancer) -> Balancer:
    inner: Balancer = _ALGORITHMS[settings.algorithm]() if settings.enabled else First()
    return Sticky(inner) if settings.stickySessions else inner
