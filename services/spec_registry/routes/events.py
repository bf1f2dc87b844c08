"""`GET /v1/deployments/events`: the changes of the caller's project's deployments as Server-Sent
Events, for the console's live list and details (contract C in docs/console.md). Declared before
`/v1/deployments/{ref}`, which would otherwise take `events` for a deployment's name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from libs.config import Settings
from services.spec_registry.auth import Caller
from services.spec_registry.alerts import AlertBoard
from services.spec_registry.live import Changed, FeedItem
from services.spec_registry.problems import Unauthorized, responses
from services.spec_registry.registry import Registry
from services.spec_registry.routes.deployments import present
from services.spec_registry.routes.deps import RegistryDep, SettingsDep

# A comment line this often keeps idle connections open through proxies (which close quiet ones) and
# lets the server notice a client that went away.
KEEPALIVE_SECONDS = 15.0
router = APIRouter(prefix="/v1", responses=responses(Unauthorized))
STREAM = {
    200: {
        "description": "`event: deployment` with the deployment as GET /v1/deployments/{ref} answers it, "
        'or `event: deleted` with {"id", "name"}; a comment line every 15 s while nothing changes.',
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/deployments/events", tags=["deployments"], response_class=StreamingResponse, responses=STREAM)
async def deployment_events(caller: Caller, registry: RegistryDep, settings: SettingsDep) -> StreamingResponse:
    """Changes of the project's deployments from now on (read the list first, or after reconnecting:
    changes made while disconnected are not replayed). Authenticated like the rest of the API, so a
    browser reads it with fetch(), since EventSource cannot send an Authorization header."""
    return StreamingResponse(
        _stream(registry, caller.project, settings),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(registry: Registry, project: str, settings: Settings) -> AsyncIterator[str]:
    with registry.feed.subscribe(project) as queue:
        yield ": subscribed\n\n"  # at once: the client knows from here on it misses nothing
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                return  # fell behind: the client reconnects and reads the list again
            yield _event(item, settings, registry.alerts)


def _event(item: FeedItem, settings: Settings, alerts: AlertBoard) -> str:
    if isinstance(item, Changed):
        return f"event: deployment\ndata: {present(item.stored, settings, alerts).model_dump_json()}\n\n"
    assert item is not None
    return f"event: deleted\ndata: {json.dumps({'id': item.deployment_id, 'name': item.name})}\n\n"
