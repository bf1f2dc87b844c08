"""The live feed behind `GET /v1/deployments/events`: every change of a deployment this registry
instance sees (its writes through the API, and the status events it folds into the read model) is
handed to the connected clients of the deployment's project.

In-process on purpose: a client is connected to one registry instance, and the status consumer is a
durable pull consumer shared by the instances, so with several instances a client sees its own
writes and the status events its instance happened to fold (docs/console.md says so; one instance is
what `berth up` runs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from services.spec_registry.repository import StoredDeployment

# Changes kept for a client that reads slower than they come; past it the client is dropped (its
# stream ends) and reconnects, reading the list afresh, rather than the registry buffering without bound.
QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Changed:
    stored: StoredDeployment


@dataclass(frozen=True)
class Deleted:
    deployment_id: str
    name: str


FeedItem = Changed | Deleted | None  # None: the client fell behind; its stream ends


class DeploymentFeed:
    def __init__(self) -> None:
        self._clients: dict[str, set[asyncio.Queue[FeedItem]]] = {}

    @contextlib.contextmanager
    def subscribe(self, project: str) -> Iterator[asyncio.Queue[FeedItem]]:
        queue: asyncio.Queue[FeedItem] = asyncio.Queue(QUEUE_LIMIT + 1)
        self._clients.setdefault(project, set()).add(queue)
        try:
            yield queue
        finally:
            clients = self._clients.get(project, set())
            clients.discard(queue)
            if not clients:
                self._clients.pop(project, None)

    def changed(self, stored: StoredDeployment) -> None:
        if not stored.unchanged:
            self._send(stored.row.project, Changed(stored))

    def deleted(self, project: str, deployment_id: str, name: str) -> None:
        self._send(project, Deleted(deployment_id, name))

    def clients(self, project: str) -> int:
        return len(self._clients.get(project, ()))

    def _send(self, project: str, item: FeedItem) -> None:
        for queue in list(self._clients.get(project, ())):
            if queue.qsize() >= QUEUE_LIMIT:
                queue.put_nowait(None)  # the one slot kept free for this
                self._clients[project].discard(queue)
            else:
                queue.put_nowait(item)
