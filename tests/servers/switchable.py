"""A replica whose health the test switches: `python tests/servers/switchable.py` (port from PORT).

GET /startup..., /readiness..., /liveness... answer according to a switch per kind (the first path
segment picks the switch, so `/readiness/a` and `/readiness/b` share one): "ok" (200), "fail" (503),
"hang" (never answers), or any status code (302, 404, 500...). Initial switches come from the env
vars STARTUP, READINESS, LIVENESS, PREDICT. GET / answers 200 with BERTH_REPLICA_ID. /predict (any
method) answers by the "predict" switch, with an X-Berth-Replica header (a model whose predictions
fail while its probes pass: a bad canary).

POST /_control {"readiness": "fail", ...} flips switches; GET /_control returns the switches, the
request count per path and the headers of the last request per path.

`SwitchableServer` starts one as a real process and talks to its control endpoint (tests, bench).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

KINDS = ("startup", "readiness", "liveness", "predict")
Switch = str | int


def _status_of(switch: Switch) -> int | None:
    """HTTP status for a switch; None means hang."""
    if switch == "hang":
        return None
    if switch == "ok":
        return 200
    if switch == "fail":
        return 503
    return int(switch)


def make_app(replica_id: str, switches: dict[str, Switch]) -> web.Application:
    counts: Counter[str] = Counter()
    headers: dict[str, dict[str, str]] = {}

    async def probe(request: web.Request) -> web.Response:
        counts[request.path] += 1
        headers[request.path] = dict(request.headers)
        status = _status_of(switches[request.match_info["kind"]])
        while status is None:  # hang until the prober gives up and the process ends
            await asyncio.Event().wait()
        answer = f"{request.match_info['kind']} {status}"
        return web.Response(status=status, text=answer, headers={"X-Berth-Replica": replica_id})

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            changes: dict[str, Switch] = await request.json()
            unknown = set(changes) - set(KINDS)
            if unknown:
                return web.json_response({"error": f"unknown switches {sorted(unknown)}"}, status=400)
            switches.update(changes)
        return web.json_response({"switches": switches, "counts": counts, "headers": headers})

    async def root(_: web.Request) -> web.Response:
        return web.Response(text=replica_id)

    app = web.Application()
    kinds = "|".join(KINDS)
    app.add_routes(
        [
            web.get("/", root),
            web.route("*", "/_control", control),
            web.route("*", f"/{{kind:{kinds}}}", probe),
            web.route("*", f"/{{kind:{kinds}}}/{{rest:.*}}", probe),
        ]
    )
    return app


def main() -> None:
    switches: dict[str, Switch] = {kind: os.environ.get(kind.upper(), "ok") for kind in KINDS}
    app = make_app(os.environ.get("BERTH_REPLICA_ID", "switchable"), switches)
    web.run_app(
        app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None, shutdown_timeout=0.5
    )


class SwitchableServer:
    """A switchable server process on `port`, and a client for its control endpoint."""

    def __init__(self, port: int, replica_id: str = "switchable", **initial: Switch) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PORT": str(port), "BERTH_REPLICA_ID": replica_id}
        env.update({kind.upper(): str(value) for kind, value in initial.items()})
        self.process = subprocess.Popen([sys.executable, str(Path(__file__))], env=env)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.state()
                return
            except aiohttp.ClientError:
                if asyncio.get_running_loop().time() > deadline or self.process.poll() is not None:
                    raise
                await asyncio.sleep(0.05)

    async def state(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/_control") as response:
            return await response.json()

    async def switch(self, **changes: Switch) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/_control", json=changes) as response,
        ):
            response.raise_for_status()

    async def count(self, path: str) -> int:
        return int((await self.state())["counts"].get(path, 0))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
