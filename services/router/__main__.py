import asyncio

import uvloop

from libs.service import run_service
from services.router.app import main

if __name__ == "__main__":
    # The data plane runs on uvloop: its C event loop and transports take a sixth off the router's
    # CPU per request (bench/bench_router.py).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    run_service("router", main)
