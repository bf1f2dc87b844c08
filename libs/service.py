"""Run one service process: settings, logs, tracing, and a clean stop on SIGTERM or Ctrl-C.

Every `services/<name>/__main__.py` is `run_service("<name>", main)`, where `main(settings, stop)`
runs until the `stop` event is set and then releases what it holds.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from libs.config import Settings, get_settings
from libs.logging import configure_logging, get_logger
from libs.telemetry import configure_tracing

ServiceMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


def run_service(name: str, main: ServiceMain, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(name, settings.log_level, settings.log_json)
    configure_tracing(name)
    asyncio.run(_run(name, main, settings))


async def _run(name: str, main: ServiceMain, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log = get_logger(name)
    log.info("service starting")
    await main(settings, stop)
    log.info("service stopped")
