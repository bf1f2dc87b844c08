"""Operations endpoints, without auth: /healthz (database and bus) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from services.spec_registry.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses={503: {"model": Health, "description": "The database is unreachable."}})
async def healthz(request: Request, response: Response) -> Health:
    """Healthy while the database answers. A lost bus is reported but keeps the registry healthy:
    specs are still accepted and their events wait in the outbox."""
    registry = getattr(request.app.state, "registry", None)
    bus = getattr(request.app.state, "bus", None)
    database = False
    if registry is not None:
        try:
            database = await asyncio.to_thread(registry.repo.ping)
        except SQLAlchemyError:
            database = False
    if not database:
        response.status_code = 503
    return Health(healthy=database, database=database, bus_connected=bool(bus and bus.is_connected))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
