"""Load balancers: each picks one ready replica for a request, `pick(replicas, request_key)`.

`replicas` is never empty (the proxy answers 503 before asking) and is ordered by replica id, so a
choice that depends on position is the same in every router.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

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
        affinity = request_key.affinity
        if affinity:
            for replica in replicas:
                if replica.replica_id == affinity:
                    return replica
        return self.inner.pick(replicas, request_key)


_ALGORITHMS: dict[str, type[RoundRobin | LeastConnections | IpHash]] = {
    "round-robin": RoundRobin,
    "least-connections": LeastConnections,
    "ip-hash": IpHash,
}


def balancer_for(settings: LoadBalancer) -> Balancer:
    inner: Balancer = _ALGORITHMS[settings.algorithm]() if settings.enabled else First()
    return Sticky(inner) if settings.stickySessions else inner
