"""The shared control-plane process (berth/plane.py): a service that fails takes the whole process
down (for the supervisor to restart it), never leaving the others running half-dead."""

from __future__ import annotations

import asyncio

import structlog

from berth.plane import run_plane
from libs.config import Settings


async def test_a_failing_service_stops_the_others_and_the_process_fails() -> None:
    stopped: list[str] = []

    async def steady(settings: Settings, stop: asyncio.Event) -> None:
        await stop.wait()
        stopped.append(structlog.contextvars.get_contextvars()["service"])

    async def failing(settings: Settings, stop: asyncio.Event) -> None:
        raise RuntimeError("lost its database")

    settings = Settings()
    code = await run_plane({"scheduler": (steady, settings), "metrics": (failing, settings), "alerting": (steady, settings)})

    assert code == 1
    # Each service was asked to stop, and its log lines named it, not its neighbours.
    assert sorted(stopped) == ["alerting", "scheduler"]


async def test_a_service_that_returns_unasked_fails_the_process_too() -> None:
    async def steady(settings: Settings, stop: asyncio.Event) -> None:
        await stop.wait()

    async def returns(settings: Settings, stop: asyncio.Event) -> None:
        return None

    settings = Settings()
    assert await run_plane({"scheduler": (steady, settings), "metrics": (returns, settings)}) == 1


async def test_a_stop_asked_for_stops_every_service_and_succeeds() -> None:
    stop = asyncio.Event()
    stopped: list[str] = []

    async def steady(settings: Settings, stop: asyncio.Event) -> None:
        await stop.wait()
        stopped.append(structlog.contextvars.get_contextvars()["service"])

    settings = Settings()
    plane = asyncio.create_task(run_plane({"scheduler": (steady, settings), "alerting": (steady, settings)}, stop))
    stop.set()

    assert await plane == 0
    assert sorted(stopped) == ["alerting", "scheduler"]
