import asyncio
import sys

import uvloop

from libs.config import get_settings
from libs.logging import configure_logging
from libs.service import run_service
from services.router.app import main
from services.router.workers import run_workers, worker_count

if __name__ == "__main__":
    # The data plane runs on uvloop: its C event loop and transports take a sixth off the router's
    # CPU per request (bench/bench_router.py).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    settings = get_settings()
    workers = worker_count(settings)
    if workers == 1:
        run_service("router", main, settings)
    else:
        configure_logging("router", settings.log_level, settings.log_json)
        sys.exit(run_workers(settings, workers))
