"""The router end to end over real HTTP: a real nats-server, the router in-process, real upstream
HTTP servers registered by publishing the events the scheduler and health-monitor would publish."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus import make_broker, publish
from libs.config import Settings
from libs.events import (
    LATENCY_BUCKETS_SECONDS,
    DeploymentDeleted,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaStopped,
    RequestMetricsReported,
    SpecApplied,
)
from libs.secrets import SecretStore
from libs.spec import validate_spec
from services.router import RouterHandle, start_router
from tests.helpers import eventually

PROJECT = "default"
BIG_BODY = 3 * 1024 * 1024 + 5  # above the size the router relays in one write: streamed


# -- upstream replicas -------------------------------------------------------------------------------


@dataclass
class Upstream:
    """An HTTP server standing in for one replica; `/echo` answers what it received."""

    name: str
    runner: web.AppRunner | None = None
    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # lets /hold answer
    held: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/created":
            return web.json_response({"id": 7}, status=201, headers={"X-Custom": "kept", "Location": "/items/7"})
        if request.path == "/hold":
            self.held += 1
            await self.release.wait()
            return web.Response(text=self.name)
        if request.path == "/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            for i in range(5):
                await response.write(f"chunk {i}\n".encode())
            await response.write_eof()
            return response
        if request.path == "/big":
            return web.Response(body=b"x" * BIG_BODY, content_type="application/octet-stream")
        if request.path == "/fail":
            return web.Response(status=500, text="boom")
        if request.path == "/nocontent":
            return web.Response(status=204)
        if request.path == "/notmodified":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        body = await request.read()
        seen = {
            "replica": self.name, "method": request.method, "path": request.path_qs,
            "headers": dict(request.headers), "body_length": len(body), "body_tail": body[-16:].decode(),
        }
        self.seen.append(seen)
        return web.json_response(seen)


class DropsKeptAlive(Upstream):
    """A replica that answers the first request on a connection and, like a server whose keep-alive
    timeout has just expired, closes the connection on the next one without answering."""

    server: asyncio.Server | None = None
    connections: int = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Connection: %d\r\n\r\nok" % self.connections)
            await reader.readuntil(b"\r\n\r\n")  # the next request: dropped
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    servers = [Upstream("a"), Upstream("b")]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        server.release.set()
        await server.stop()


# -- the bus, as the registry, scheduler and health-monitor use it ----------------------------------


class Bus:
    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    async def apply(
        self, deployment_id: str = "d1", version: int = 1, name: str = "iris", **fields: Any
    ) -> SpecApplied:
        spec = validate_spec({"name": name, "image": "python:3.11", "resources": {"ports": [8000]}, **fields})
        event = SpecApplied(
            deployment_id=deployment_id, project=PROJECT, slug=spec.slug, name=spec.name,
            spec_id=f"{deployment_id}-v{version}", spec_version=version, spec=spec,
        )
        await publish(self.broker, event)
        return event

    async def health(self, spec: SpecApplied, upstream: Upstream, ready: bool = True) -> None:
        await publish(self.broker, ReplicaHealthChanged(
            deployment_id=spec.deployment_id, project=spec.project, slug=spec.slug, spec_id=spec.spec_id,
            replica_id=upstream.name, address=upstream.address, started=True, ready=ready, live=True,
        ))

    async def stopped(self, spec: SpecApplied, upstream: Upstream) -> None:
        await publish(self.broker, ReplicaStopped(
            deployment_id=spec.deployment_id, project=spec.project, slug=spec.slug, spec_id=spec.spec_id,
            replica_id=upstream.name, reason="scale down",
        ))

    async def exited(self, spec: SpecApplied, upstream: Upstream) -> None:
        await publish(self.broker, ReplicaExited(
            deployment_id=spec.deployment_id, project=spec.project, slug=spec.slug, spec_id=spec.spec_id,
            replica_id=upstream.name, exit_code=1, restart_count=1,
        ))

    async def deleted(self, spec: SpecApplied) -> None:
        await publish(self.broker, DeploymentDeleted(deployment_id=spec.deployment_id, project=PROJECT, slug=spec.slug))


@pytest.fixture
async def bus(nats_url: str, js: JetStreamContext) -> AsyncIterator[Bus]:
    broker = make_broker(nats_url, "test")
    await broker.start()
    yield Bus(broker)
    await broker.stop()


@pytest.fixture
def router_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"router_metrics_interval_seconds": 0.3})


@pytest.fixture
async def router(router_settings: Settings, js: JetStreamContext) -> AsyncIterator[RouterHandle]:
    handle = await start_router(router_settings)
    yield handle
    await handle.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, str | None, str]:
    async with http.get(url, **kwargs) as response:
        return response.status, response.headers.get("X-Berth-Replica"), await response.text()


async def serving(http: aiohttp.ClientSession, url: str, replicas: set[str], **kwargs: Any) -> None:
    """Wait until requests to `url` are answered by exactly `replicas` (as the router has applied the
    events), sampling enough requests to see every replica of a round-robin."""

    async def answered() -> bool:
        seen = {(await get(http, url, **kwargs))[1] for _ in range(2 * len(replicas) + 2)}
        return seen == replicas

    await eventually(answered, timeout=10, what=f"{url} served by {sorted(replicas)}")


async def deployed(
    bus: Bus, http: aiohttp.ClientSession, router: RouterHandle, ready: list[Upstream], **fields: Any
) -> tuple[SpecApplied, str]:
    """Apply the spec, report `ready` ready, and wait until the router serves exactly them: the event
    and the deployment's base URL."""
    spec = await bus.apply(**fields)
    for upstream in ready:
        await bus.health(spec, upstream)
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}/", {upstream.name for upstream in ready})
    return spec, base


# -- proxying -------------------------------------------------------------------------------------------


async def test_get_and_streamed_post_are_proxied_with_headers(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams[:1])

    async with http.get(f"{base}/echo/x%2Fy?q=1&r=a%20b", headers={"X-Trace": "t1", "Cookie": "k=v"}) as response:
        seen = await response.json()
    assert seen["path"] == "/echo/x%2Fy?q=1&r=a%20b"
    assert seen["headers"]["X-Trace"] == "t1" and seen["headers"]["Cookie"] == "k=v"
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert seen["headers"]["X-Forwarded-Proto"] == "http"
    assert seen["headers"]["X-Forwarded-Host"] == router.url.removeprefix("http://")
    assert seen["headers"]["X-Forwarded-Prefix"] == "/default/iris"
    assert "Connection" not in seen["headers"] or seen["headers"]["Connection"] == "keep-alive"

    async def body() -> AsyncIterator[bytes]:  # chunked upload: the router must stream it
        for i in range(64):
            yield bytes([65 + i % 26]) * 16384
        yield b"the-end"

    async with http.post(f"{base}/echo", data=body()) as response:
        seen = await response.json()
    assert seen["method"] == "POST" and seen["body_length"] == 64 * 16384 + 7
    assert seen["body_tail"].endswith("the-end")

    async with http.put(f"{base}/echo", data=b"z" * 4096, expect100=True) as response:  # as curl does
        assert response.status == 200 and (await response.json())["body_length"] == 4096


async def test_status_headers_and_streamed_response_are_preserved(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams[:1])
    async with http.post(f"{base}/created", json={"x": 1}) as response:
        assert response.status == 201
        assert response.headers["X-Custom"] == "kept" and response.headers["Location"] == "/items/7"
        assert response.headers["X-Berth-Replica"] == "a"
        assert await response.json() == {"id": 7}
    async with http.get(f"{base}/stream") as response:
        assert [line async for line in response.content] == [f"chunk {i}\n".encode() for i in range(5)]
    async with http.get(f"{base}/fail") as response:
        assert response.status == 500 and await response.text() == "boom"
    async with http.get(f"{base}/big") as response:
        assert response.headers["Content-Length"] == str(BIG_BODY)
        assert len(await response.read()) == BIG_BODY
    async with http.head(f"{base}/big") as response:
        assert response.status == 200 and await response.read() == b""
        assert response.headers["Content-Length"] == str(BIG_BODY)
    async with http.get(f"{base}/nocontent") as response:
        assert response.status == 204 and await response.read() == b""
    async with http.get(f"{base}/notmodified") as response:
        assert response.status == 304 and response.headers["ETag"] == '"v1"' and await response.read() == b""
    async with http.get(f"{base}/created") as response:  # the connections after those are sound
        assert response.status == 201 and await response.json() == {"id": 7}


async def test_large_bodies_stream_both_ways(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams[:1])
    upload = b"u" * (BIG_BODY - 7) + b"the-end"  # of known length, beyond what is sent with the head
    for _ in range(2):  # and again on the kept-alive connections
        async with http.post(f"{base}/echo", data=upload) as response:
            seen = await response.json()
        assert seen["body_length"] == BIG_BODY and seen["body_tail"].endswith("the-end")
        async with http.get(f"{base}/big") as response:
            assert await response.read() == b"x" * BIG_BODY


async def test_a_kept_alive_connection_the_replica_drops_is_retried_afresh(
    router: RouterHandle, bus: Bus, http: aiohttp.ClientSession
) -> None:
    replica = DropsKeptAlive("flaky")
    await replica.start()
    try:
        spec = await bus.apply()
        await bus.health(spec, replica)
        url = f"{router.url}/default/iris/"
        await serving(http, url, {"flaky"})
        opened = replica.connections
        for i in range(1, 4):  # each request after the first meets a connection the replica drops
            async with http.get(url) as response:
                assert response.status == 200 and await response.read() == b"ok"
                assert response.headers["X-Connection"] == str(opened + i)
        async with http.post(url, data=b"payload") as response:  # a body is never sent twice
            assert response.status == 502
    finally:
        await replica.stop()


async def test_a_replica_that_does_not_answer_in_time_gets_504_and_is_not_sent_the_request_again(
    router_settings: Settings, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    handle = await start_router(router_settings.model_copy(update={"router_response_timeout_seconds": 1}))
    try:
        _, url = await deployed(bus, http, handle, upstreams)
        async with http.get(f"{url}/hold") as response:
            assert response.status == 504
            problem = await response.json()
        busy = next(u for u in upstreams if u.held)
        assert problem["detail"] == f"replica {busy.name} did not answer within 1s"
        assert sum(u.held for u in upstreams) == 1, "a request that may be in progress is never resent"
        busy.release.set()
        assert {(await get(http, f"{url}/echo"))[:2] for _ in range(4)} == {(200, "a"), (200, "b")}
    finally:
        await handle.stop()


async def test_round_robin_spreads_over_both_replicas(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams)
    answers = [(await get(http, f"{base}/"))[1] for _ in range(10)]
    assert answers.count("a") == answers.count("b") == 5


async def test_least_connections_prefers_the_idle_replica(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams, loadBalancer={"algorithm": "least-connections"})
    held = asyncio.create_task(get(http, f"{base}/hold"))  # keeps one replica busy
    await eventually(lambda: sum(u.held for u in upstreams) == 1)
    busy = next(u for u in upstreams if u.held)
    idle = next(u for u in upstreams if not u.held)
    answers = {(await get(http, f"{base}/"))[1] for _ in range(6)}
    assert answers == {idle.name}
    busy.release.set()
    assert (await held)[1] == busy.name


async def test_ip_hash_keeps_a_client_on_one_replica(
    router_settings: Settings, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    handle = await start_router(router_settings.model_copy(update={"router_trust_forwarded_for": True}))
    try:
        spec = await bus.apply(loadBalancer={"algorithm": "ip-hash"})
        for upstream in upstreams:
            await bus.health(spec, upstream)
        url = f"{handle.url}/default/iris/"
        await eventually(lambda: len(handle.table.by_key["default/iris"].serving) == 2)
        chosen = {}
        for client in (f"10.0.0.{i}" for i in range(12)):
            answers = {(await get(http, url, headers={"X-Forwarded-For": f"{client}, 10.9.9.9"}))[1] for _ in range(4)}
            assert len(answers) == 1, f"{client} moved between replicas: {answers}"
            chosen[client] = answers.pop()
        assert set(chosen.values()) == {"a", "b"}, "twelve clients should not all hash to one replica"
    finally:
        await handle.stop()


async def test_sticky_cookie_is_set_and_honoured(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    spec, base = await deployed(bus, http, router, upstreams, loadBalancer={"stickySessions": True})
    url = f"{base}/"
    async with http.get(url) as response:
        first = response.headers["X-Berth-Replica"]
        cookie = response.cookies["berth_affinity"]
    assert cookie.value == first and cookie["path"] == "/default/iris"
    for _ in range(6):
        status, replica, _ = await get(http, url, headers={"Cookie": f"berth_affinity={first}"})
        assert (status, replica) == (200, first)
    other = "b" if first == "a" else "a"
    assert (await get(http, url, headers={"Cookie": f"berth_affinity={other}"}))[1] == other
    # The cookie's replica becomes unready: the client moves, and gets a new cookie.
    await bus.health(spec, next(u for u in upstreams if u.name == first), ready=False)
    await serving(http, url, {other})
    async with http.get(url, headers={"Cookie": f"berth_affinity={first}"}) as response:
        assert response.cookies["berth_affinity"].value == other


async def test_unready_replica_gets_no_traffic_until_ready_again(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    spec, base = await deployed(bus, http, router, upstreams)
    a, b = upstreams
    url = f"{base}/"
    await bus.health(spec, b, ready=False)
    await serving(http, url, {"a"})
    await bus.health(spec, b)
    await serving(http, url, {"a", "b"})
    await bus.stopped(spec, a)
    await serving(http, url, {"b"})
    await bus.exited(spec, b)
    _, _, body = await eventually(lambda: _status_is(http, url, 503))
    assert json.loads(body)["detail"] == "no ready replica"


async def _status_is(http: aiohttp.ClientSession, url: str, status: int) -> tuple[int, str | None, str] | None:
    answer = await get(http, url)
    return answer if answer[0] == status else None


async def test_a_replica_that_died_since_its_probe_is_retried_on_another(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams)
    url = f"{base}/echo"
    await upstreams[0].stop()  # still "ready" on the bus
    for _ in range(4):
        assert (await get(http, url))[:2] == (200, "b")
        async with http.post(url, data=b"payload") as response:  # connect refused: nothing was sent
            assert response.status == 200 and (await response.json())["body_length"] == 7
    await upstreams[1].stop()
    status, _, body = await get(http, url)
    assert status == 502 and "did not answer" in json.loads(body)["detail"]
    await upstreams[0].start(upstreams[0].port)  # back on the same addresses
    await upstreams[1].start(upstreams[1].port)
    assert {(await get(http, url))[:2] for _ in range(4)} == {(200, "a"), (200, "b")}


async def test_stopped_deployment_answers_503_and_deleted_404(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    spec, base = await deployed(bus, http, router, upstreams[:1])
    url = f"{base}/"
    await bus.apply(version=2, enabled=False)
    await eventually(lambda: _status_is(http, url, 503))
    async with http.get(url) as response:
        assert response.headers["Retry-After"]
        assert response.content_type == "application/problem+json"
        assert (await response.json())["detail"] == "deployment is stopped"
    await bus.deleted(spec)
    status, _, body = await eventually(lambda: _status_is(http, url, 404))
    assert "iris" in json.loads(body)["detail"]
    status, _, body = await get(http, f"{router.url}/nope/thing/")
    assert status == 404 and "'thing'" in json.loads(body)["detail"] and "'nope'" in json.loads(body)["detail"]


async def test_basic_auth(
    router_settings: Settings,
    js: JetStreamContext,
    bus: Bus,
    upstreams: list[Upstream],
    http: aiohttp.ClientSession,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secrets = await SecretStore.open(js)
    await secrets.put(PROJECT, "iris_key", "hunter2-s3cret")
    await secrets.put(PROJECT, "admin_key", "alice:wonder-s3cret")
    router = await start_router(router_settings)
    try:
        spec = await bus.apply(basicAuthKey="secret:iris_key")
        await bus.health(spec, upstreams[0])
        url = f"{router.url}/default/iris/echo"
        # Wait for the replica's readiness, not only the spec: they arrive on separate streams.
        await eventually(lambda: "default/iris" in router.table.by_key and router.table.by_key["default/iris"].serving)

        async with http.get(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="berth"'
            assert "hunter2" not in await response.text()
        assert (await get(http, url, headers=_basic("anyone", "wrong")))[0] == 401
        status, _, body = await get(http, url, headers=_basic("anyone", "hunter2-s3cret"))
        assert status == 200
        assert "Authorization" not in json.loads(body)["headers"], "the router's credentials stay at the router"

        # A `user:password` secret needs both; a new spec version re-reads the secret.
        await bus.apply(version=2, basicAuthKey="secret:admin_key")
        await eventually(lambda: _auth_status(http, url, "alice", "wonder-s3cret", 200))
        assert (await get(http, url, headers=_basic("bob", "wonder-s3cret")))[0] == 401
        assert (await get(http, url, headers=_basic("alice", "hunter2-s3cret")))[0] == 401
    finally:
        await router.stop()
    logs = capfd.readouterr()
    assert "s3cret" not in logs.out + logs.err


async def _auth_status(http: aiohttp.ClientSession, url: str, user: str, password: str, status: int) -> bool:
    return (await get(http, url, headers=_basic(user, password)))[0] == status


async def test_version_segment_targets_that_versions_replicas(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    a, b = upstreams
    v1 = await bus.apply(version=1)
    await bus.health(v1, a)
    v2 = await bus.apply(version=2, image="python:3.12")
    await bus.health(v2, b)
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}/1/", {"a"})
    async with http.get(f"{base}/1/echo?x=1") as response:
        seen = await response.json()
    assert seen["path"] == "/echo?x=1" and seen["headers"]["X-Forwarded-Prefix"] == "/default/iris/1"
    await serving(http, f"{base}/2/echo", {"b"})
    await serving(http, f"{base}/echo", {"b"})  # the current version, which has all its replicas ready
    async with http.get(f"{base}/3/echo") as response:  # no such version: an ordinary path
        assert (await response.json())["path"] == "/3/echo"
    async with http.get(f"{base}/1") as response:
        seen = await response.json()
    assert seen["path"] == "/" and seen["headers"]["X-Forwarded-Prefix"] == "/default/iris/1"


async def test_ops_endpoints_on_the_router_port(router: RouterHandle, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{router.url}/_berth/healthz") as response:
        assert response.status == 200 and await response.json() == {"healthy": True, "bus_connected": True}
    await get(http, f"{router.url}/nope/nothing")
    async with http.get(f"{router.url}/_berth/metrics") as response:
        text = await response.text()
    assert "berth_router_unrouted_requests_total 1.0" in text


# -- metrics and restarts --------------------------------------------------------------------------------


async def test_request_metrics_are_published_per_window(
    router: RouterHandle, bus: Bus, nc: Client, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    reports: list[RequestMetricsReported] = []
    subscription = await nc.subscribe("berth.metrics.v1.requests.d1", cb=_collect(reports))
    _, url = await deployed(bus, http, router, upstreams[:1])
    await eventually(lambda: reports and reports[-1].requests == 0, what="traffic of the wait reported")
    reports.clear()
    for _ in range(5):
        await get(http, f"{url}/")
    for _ in range(2):
        await get(http, f"{url}/fail")
    await eventually(lambda: reports and reports[-1].requests == 0, what="a zero report after the traffic")
    await subscription.unsubscribe()
    busy = [r for r in reports if r.requests]
    assert sum(r.requests for r in busy) == 7 and sum(r.errors for r in busy) == 2
    assert all(len(r.latency_buckets) == len(LATENCY_BUCKETS_SECONDS) for r in reports)
    assert sum(sum(r.latency_buckets) for r in busy) == 7
    assert all(r.slug == "iris" and r.project == PROJECT for r in reports)
    last_busy = max(i for i, r in enumerate(reports) if r.requests)
    assert len(reports) - last_busy - 1 == 1, "a quiet deployment gets one zero report, then none"


def _collect(reports: list[RequestMetricsReported]) -> Any:
    async def callback(message: Any) -> None:
        reports.append(RequestMetricsReported.model_validate_json(message.data))

    return callback


async def test_restarted_router_rebuilds_its_table_from_the_bus(
    router_settings: Settings, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    a, b = upstreams
    first = await start_router(router_settings)
    v1 = await bus.apply(version=1)
    await bus.health(v1, a)
    await serving(http, f"{first.url}/default/iris/", {"a"})
    await first.stop()

    # While the router is down: a new version comes up, the old replica is stopped, a deployment goes.
    v2 = await bus.apply(version=2, image="python:3.12")
    await bus.health(v2, b)
    gone = await bus.apply(deployment_id="d2", name="gone")
    await bus.deleted(gone)

    second = await start_router(router_settings)
    try:
        # Serves at once: no waiting for events to trickle in.
        status, replica, _ = await get(http, f"{second.url}/default/iris/")
        assert (status, replica) == (200, "b")
        assert (await get(http, f"{second.url}/default/iris/1/"))[1] == "a"  # older versions are known
        assert (await get(http, f"{second.url}/default/gone/"))[0] == 404
        await bus.stopped(v1, a)
        await serving(http, f"{second.url}/default/iris/echo", {"b"})
        assert (await get(http, f"{second.url}/default/iris/1/echo"))[0] == 200
        assert json.loads((await get(http, f"{second.url}/default/iris/1/echo"))[2])["path"] == "/1/echo"
    finally:
        await second.stop()


async def test_a_stale_ready_event_does_not_resurrect_a_stopped_replica(
    router_settings: Settings, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    spec = await bus.apply()
    await bus.health(spec, upstreams[0])
    await bus.health(spec, upstreams[1])
    await bus.stopped(spec, upstreams[0])
    router = await start_router(router_settings)  # the snapshot holds "a ready" and "a stopped"
    try:
        await serving(http, f"{router.url}/default/iris/", {"b"})
    finally:
        await router.stop()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
