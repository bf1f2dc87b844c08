"""One probe against real HTTP servers: what counts as success, timeouts, refused connections, the
request the kubelet sends and how it follows redirects.

The expectations come from the kubelet's source, not from berth: pkg/probe/http/http.go (DoHTTPProbe:
200 <= status < 400; RedirectChecker: same host name followed, "stopped after 10 redirects", another
host is a "warning" that pkg/kubelet/prober/prober.go counts as success; maxRespBodyLength 10 KiB,
http.Client.Timeout over the whole exchange), pkg/probe/http/request.go (User-Agent, Accept, Host).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI, Response, status

from libs.events import ProbeResult
from libs.natsd import free_port
from services.health_monitor.prober import http_probe, tcp_probe
from tests.helpers import eventually
from tests.servers.switchable import SwitchableServer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("switch", "ok"), [("ok", True), (302, True), (399, True), (404, False), (500, False), ("fail", False)]
)
async def test_status_200_to_399_is_success_anything_else_failure(
    server: SwitchableServer, session: aiohttp.ClientSession, switch: str | int, ok: bool
) -> None:
    await server.switch(readiness=switch)
    result = await http_probe(session, "readiness", f"{server.url}/readiness", [], timeout_seconds=1)
    expected_status = {"ok": 200, "fail": 503}.get(str(switch), switch)
    assert (result.ok, result.status_code) == (ok, expected_status)
    assert result.error == (None if ok else f"HTTP {expected_status}")


async def test_headers_are_sent(server: SwitchableServer, session: aiohttp.ClientSession) -> None:
    await http_probe(session, "liveness", f"{server.url}/liveness", [("X-Probe", "berth")], timeout_seconds=1)
    assert (await server.state())["headers"]["/liveness"]["X-Probe"] == "berth"


async def test_a_hanging_replica_fails_after_the_timeout(
    server: SwitchableServer, session: aiohttp.ClientSession
) -> None:
    await server.switch(liveness="hang")
    began = time.monotonic()
    result = await http_probe(session, "liveness", f"{server.url}/liveness", [], timeout_seconds=1)
    assert not result.ok and result.error == "timed out after 1s"
    assert 0.9 <= time.monotonic() - began < 2.0


async def test_a_refused_connection_is_a_failure(session: aiohttp.ClientSession) -> None:
    closed = f"http://127.0.0.1:{free_port()}/readiness"
    result = await http_probe(session, "readiness", closed, [], timeout_seconds=1)
    assert not result.ok and result.status_code is None and result.error
    tcp = await tcp_probe("127.0.0.1", free_port(), timeout_seconds=1)
    assert not tcp.ok and tcp.probe == "tcp"


async def test_tcp_probe_succeeds_once_the_port_accepts(server: SwitchableServer) -> None:
    assert (await tcp_probe("127.0.0.1", server.port, timeout_seconds=1)).ok


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Site:
    """A real HTTP server in this process, on a free port, that counts the requests per path."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self.headers: dict[str, list[tuple[str, str]]] = {}
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> Site:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.hits[request.path] = self.hits.get(request.path, 0) + 1
            self.headers[request.path] = list(request.headers.items())
            handler = self.routes.get(request.path)
            return await handler(request) if handler else web.Response(status=404)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", dispatch)
        # Handlers that hang on purpose are cut short at cleanup, not waited for a minute.
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def answer(status_code: int, **headers: str) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status_code, headers=headers, text=f"{status_code}")

    return handler


def chain(site: Site, hops: int, final: int = 200) -> dict[str, Handler]:
    """/hop/0 redirects to /hop/1 ... /hop/<hops> answers `final`: exactly `hops` redirects."""
    routes = {f"/hop/{n}": answer(302, Location=f"/hop/{n + 1}") for n in range(hops)}
    return routes | {f"/hop/{hops}": answer(final)}


async def probe(
    session: aiohttp.ClientSession, url: str, headers: list[tuple[str, str]] | None = None
) -> ProbeResult:
    return await http_probe(session, "readiness", url, headers or [], timeout_seconds=2)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_a_relative_redirect_is_followed_and_the_final_answer_decides(
    session: aiohttp.ClientSession, code: int
) -> None:
    async with Site({"/ready": answer(code, Location="/ready/"), "/ready/": answer(503)}) as site:
        result = await probe(session, site.url("/ready"))
        assert (result.ok, result.status_code, result.error) == (False, 503, "HTTP 503")
        assert site.hits == {"/ready": 1, "/ready/": 1}


async def test_an_absolute_redirect_to_the_same_host_is_followed_even_to_another_port(
    session: aiohttp.ClientSession,
) -> None:
    async with Site({"/ok": answer(200)}) as other:
        routes = {"/a": answer(302, Location=other.url("/ok")), "/b": answer(307, Location="/a")}
        async with Site(routes) as site:
            result = await probe(session, site.url("/b"))
            assert (result.ok, result.status_code) == (True, 200)
            assert site.hits == {"/b": 1, "/a": 1} and other.hits == {"/ok": 1}


async def test_a_redirect_to_another_host_is_not_followed_and_counts_as_success(
    session: aiohttp.ClientSession,
) -> None:
    async with Site({"/broken": answer(503)}) as target:
        # "localhost" is another host name than the probed 127.0.0.1, though it is the same machine.
        async with Site({"/r": answer(302, Location=target.url("/broken", host="localhost"))}) as site:
            result = await probe(session, site.url("/r"))
            assert (result.ok, result.status_code, result.error) == (True, 302, None)
            assert target.hits == {}


@pytest.mark.parametrize(("hops", "ok"), [(1, True), (9, True), (10, False), (11, False)])
async def test_the_tenth_redirect_is_a_failure(session: aiohttp.ClientSession, hops: int, ok: bool) -> None:
    site = Site({})
    site.routes = chain(site, hops)
    async with site:
        result = await probe(session, site.url("/hop/0"))
        assert result.ok is ok
        if not ok:
            assert result.error == "stopped after 10 redirects" and result.status_code is None
            assert sum(site.hits.values()) == 10  # Go's client sends 10 requests, then stops


async def test_a_redirect_loop_fails_within_the_timeout(session: aiohttp.ClientSession) -> None:
    async with Site({"/loop": answer(307, Location="/loop")}) as site:
        result = await probe(session, site.url("/loop"))
        assert not result.ok and result.error == "stopped after 10 redirects"
        assert site.hits == {"/loop": 10}


@pytest.mark.parametrize("code", [300, 304, 305])
async def test_a_3xx_that_go_does_not_follow_is_a_success_as_is(session: aiohttp.ClientSession, code: int) -> None:
    async with Site({"/x": answer(code, Location="/broken"), "/broken": answer(500)}) as site:
        result = await probe(session, site.url("/x"))
        assert (result.ok, result.status_code) == (True, code) and "/broken" not in site.hits


async def test_the_kubelet_default_headers_are_sent_unless_the_probe_sets_them(
    session: aiohttp.ClientSession,
) -> None:
    async with Site({"/h": answer(200)}) as site:
        await probe(session, site.url("/h"))
        sent = dict(site.headers["/h"])
        assert sent["User-Agent"].startswith("kube-probe/") and sent["Accept"] == "*/*"
        assert "Accept-Encoding" not in sent

        await probe(session, site.url("/h"), [("user-agent", "mine/1"), ("Accept", "")])
        sent = dict(site.headers["/h"])
        assert sent["User-Agent"] == "mine/1" and "Accept" not in sent  # Accept: "" means none

        await probe(session, site.url("/h"), [("X-Many", "a"), ("X-Many", "b"), ("Host", "model.example")])
        received = site.headers["/h"]
        assert [v for k, v in received if k == "X-Many"] == ["a", "b"]
        assert dict(received)["Host"] == "model.example"


async def test_a_custom_host_header_is_kept_through_a_relative_redirect_only(
    session: aiohttp.ClientSession,
) -> None:
    routes = {"/rel": answer(302, Location="/seen"), "/seen": answer(200), "/abs": answer(302)}
    async with Site(routes) as site:
        routes["/abs"] = answer(302, Location=site.url("/seen"))
        await probe(session, site.url("/rel"), [("Host", "model.example")])
        assert dict(site.headers["/seen"])["Host"] == "model.example"
        await probe(session, site.url("/abs"), [("Host", "model.example")])
        assert dict(site.headers["/seen"])["Host"] == f"127.0.0.1:{site.port}"


async def test_the_body_is_read_within_the_timeout_but_only_its_first_10_kib(
    session: aiohttp.ClientSession,
) -> None:
    async def stalls_in_the_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.Event().wait()  # the rest never comes
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        await response.write(b"x" * 11 * 1024)  # more than the kubelet reads ...
        await asyncio.Event().wait()  # ... and then nothing: a reader that wanted it all would time out
        return response

    async with Site({"/stall": stalls_in_the_body, "/endless": endless}) as site:
        began = time.monotonic()
        stalled = await http_probe(session, "liveness", site.url("/stall"), [], timeout_seconds=1)
        assert not stalled.ok and stalled.error == "timed out after 1s"
        assert time.monotonic() - began >= 0.9
        endless_result = await http_probe(session, "liveness", site.url("/endless"), [], timeout_seconds=1)
        assert endless_result.ok and endless_result.status_code == 200


def seed_003_app() -> FastAPI:
    """The FastAPI application of seeds/003, its model never loaded: its routes end in '/'."""
    app = FastAPI()

    @app.get("/readiness/", status_code=200)
    def readiness_check(response: Response) -> str:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return "Readiness check failed."

    @app.get("/liveness/", status_code=200)
    def liveness_check() -> str:
        return "Liveness check succeeded."

    return app


async def test_the_seed_003_example_is_not_ready_while_its_app_is_not(session: aiohttp.ClientSession) -> None:
    """seeds/003 probes /readiness while its app serves /readiness/: FastAPI answers 307 to the slash."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(seed_003_app(), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started, what="uvicorn serving")
        readiness = await http_probe(session, "readiness", f"http://127.0.0.1:{port}/readiness", [], 5)
        liveness = await http_probe(session, "liveness", f"http://127.0.0.1:{port}/liveness", [], 1)
    finally:
        server.should_exit = True
        await serving
    assert (readiness.ok, readiness.status_code) == (False, 503)
    assert (liveness.ok, liveness.status_code) == (True, 200)


async def test_a_header_that_cannot_be_sent_is_a_failure_not_a_crash(session: aiohttp.ClientSession) -> None:
    """The spec refuses CR/LF in headers; one that got onto the bus before still must not kill the loop."""
    async with Site({"/h": answer(200)}) as site:
        result = await probe(session, site.url("/h"), [("X-Token", "a\r\nX-Injected: 1")])
        assert not result.ok and result.error and "X-Injected" not in result.error
        assert site.hits == {}
