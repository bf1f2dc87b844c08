"""Operations endpoints, without auth: /healthz (database and bus) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from services.spec_registry.repository import Repository
from services.spec_registry.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses={503: {"model": Health, "description": "The database is unreachable."}})
async def healthz(request: Request, response: Response) -> Health:
    """Healthy while the database answers. A lost bus is reported but keeps the registry healthy:
    specs are still accepted and their events wait in the outbox. So are events set aside (they need
    an operator, not a restart): `outbox_set_aside` counts them."""
    registry = getattr(request.app.state, "registry", None)
    bus = getattr(request.app.state, "bus", None)
    outbox: tuple[int, int] | None = None
    if registry is not None:
        try:
            outbox = await asyncio.to_thread(_outbox_counts, registry.repo)
        except SQLAlchemyError:
            outbox = None
    if outbox is None:
        response.status_code = 503
    pending, set_aside = outbox or (0, 0)
    return Health(
        healthy=outbox is not None,
        database=outbox is not None,
        bus_connected=bool(bus and bus.is_connected),
        outbox_pending=pending,
        outbox_set_aside=set_aside,
    )


def _outbox_counts(repo: Repository) -> tuple[int, int]:
    return repo.outbox_lag(), repo.set_aside_count()


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
