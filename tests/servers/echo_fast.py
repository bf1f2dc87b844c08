"""A fast upstream for benchmarks: answers every request with a small fixed body.

    python tests/servers/echo_fast.py PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

BODY = b'{"ok": true}'


async def answer(request: web.BaseRequest) -> web.Response:
    if request.body_exists:
        await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def serve(port: int) -> web.ServerRunner:
    runner = web.ServerRunner(web.Server(answer, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def main(port: int) -> None:
    runner = await serve(port)
    try:
        await asyncio.Event().wait()  # until the process is terminated
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
