"""The router end to end over real HTTP: a real nats-server, the router in-process, real upstream
HTTP servers (in-process, and replica processes from tests/servers) registered by publishing the
traffic assignments the scheduler would publish."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus import TRAFFIC, make_broker, publish
from libs.config import Settings
from libs.events import (
    LATENCY_BUCKETS_SECONDS,
    RequestMetricsReported,
    RevisionTarget,
    ServingReplica,
    TrafficAssigned,
)
from libs.secrets import SecretStore
from libs.spec import LoadBalancer, slugify
from services.router import RouterHandle, start_router
from tests.conftest import StartSwitchable
from tests.helpers import eventually
from tests.servers.switchable import SwitchableServer

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


# -- the bus, as the scheduler uses it -----------------------------------------------------------------


def revision(revision_id: str, percent: int, ready: list[Upstream], versions: tuple[int, ...] = (1,)) -> RevisionTarget:
    """One revision's share of the traffic and its ready replicas (named as the upstreams are)."""
    return RevisionTarget(
        revision_id=revision_id, percent=percent, spec_versions=list(versions),
        replicas=[ServingReplica(replica_id=u.name, address=u.address) for u in ready],
    )


class Bus:
    """Publishes traffic assignments as the scheduler does: one generation higher each time."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self.generations: dict[str, int] = {}

    async def assign(
        self,
        *targets: RevisionTarget,
        serving: list[Upstream] | None = None,
        deployment_id: str = "d1",
        name: str = "iris",
        generation: int | None = None,
        **fields: Any,
    ) -> TrafficAssigned:
        """Publish the next assignment: `targets`, or one revision serving `serving` alone."""
        if serving is not None:
            targets = (revision("r1", 100 if serving else 0, serving),)
        if generation is None:
            generation = self.generations.get(deployment_id, 0) + 1
        self.generations[deployment_id] = max(generation, self.generations.get(deployment_id, 0))
        fields.setdefault("spec_version", max((v for t in targets for v in t.spec_versions), default=1))
        if isinstance(fields.get("load_balancer"), dict):
            fields["load_balancer"] = LoadBalancer(**fields["load_balancer"])
        event = TrafficAssigned(
            deployment_id=deployment_id, project=PROJECT, slug=slugify(name), name=name, generation=generation,
            targets=list(targets), **fields,
        )
        await publish(self.broker, event)
        return event

    async def deleted(self, deployment_id: str = "d1", name: str = "iris") -> TrafficAssigned:
        return await self.assign(deployment_id=deployment_id, name=name, deleted=True, enabled=False)


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
) -> tuple[TrafficAssigned, str]:
    """Assign `ready` the deployment's whole traffic and wait until the router serves exactly them: the
    assignment and the deployment's base URL."""
    assignment = await bus.assign(serving=ready, **fields)
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}/", {upstream.name for upstream in ready})
    return assignment, base


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
        await bus.assign(serving=[replica])
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


async def test_a_request_under_way_when_the_router_stops_is_answered_then_the_connection_closed(
    router_settings: Settings, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    """The answer comes from a callback (no task per request): stopping waits for it all the same."""
    handle = await start_router(router_settings)
    stopped = False
    try:
        _, url = await deployed(bus, http, handle, upstreams)
        pending = asyncio.ensure_future(http.get(f"{url}/hold"))
        await eventually(lambda: sum(u.held for u in upstreams) == 1, what="the request at the replica")
        stopping = asyncio.ensure_future(handle.stop())
        stopped = True

        async def refused() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", handle.port)
            except OSError:
                return True
            writer.close()
            return False

        await eventually(refused, what="the router no longer taking connections")
        assert not stopping.done()
        for upstream in upstreams:
            upstream.release.set()
        async with await pending as response:
            assert response.status == 200 and response.headers["Connection"] == "close"
            assert await response.text() in ("a", "b")
        await stopping
    finally:
        if not stopped:
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
    _, base = await deployed(bus, http, router, upstreams, load_balancer={"algorithm": "least-connections"})
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
        await bus.assign(serving=upstreams, load_balancer={"algorithm": "ip-hash"})
        url = f"{handle.url}/default/iris/"
        await eventually(lambda: (route := handle.table.by_key.get("default/iris")) and len(route.serving) == 2)
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
    _, base = await deployed(bus, http, router, upstreams, load_balancer={"stickySessions": True})
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
    # The cookie's replica leaves the assignment (unready): the client moves, and gets a new cookie.
    await bus.assign(serving=[u for u in upstreams if u.name != first], load_balancer={"stickySessions": True})
    await serving(http, url, {other})
    async with http.get(url, headers={"Cookie": f"berth_affinity={first}"}) as response:
        assert response.cookies["berth_affinity"].value == other


async def test_unready_replica_gets_no_traffic_until_ready_again(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams)
    a, b = upstreams
    url = f"{base}/"
    await bus.assign(serving=[a])  # b unready
    await serving(http, url, {"a"})
    await bus.assign(serving=[a, b])  # ready again
    await serving(http, url, {"a", "b"})
    await bus.assign(serving=[b])  # a stopped
    await serving(http, url, {"b"})
    await bus.assign(serving=[])  # b exited: the revision stays, with no ready replica
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
    _, base = await deployed(bus, http, router, upstreams[:1])
    url = f"{base}/"
    await bus.assign(serving=[], enabled=False, spec_version=2)
    await eventually(lambda: _status_is(http, url, 503))
    async with http.get(url) as response:
        assert response.headers["Retry-After"]
        assert response.content_type == "application/problem+json"
        assert (await response.json())["detail"] == "deployment is stopped"
    await bus.deleted()
    status, _, body = await eventually(lambda: _status_is(http, url, 404))
    assert "iris" in json.loads(body)["detail"]
    assert router.table.sizes() == {"routes": 0, "by_key": 0, "tombstones": 1, "addresses": 0}
    assert len(router.pools) == 0, "the deleted deployment's replica connections are gone too"
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
        await bus.assign(serving=upstreams[:1], basic_auth_key="secret:iris_key")
        url = f"{router.url}/default/iris/echo"
        await eventually(lambda: "default/iris" in router.table.by_key)

        async with http.get(url) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == 'Basic realm="berth"'
            assert "hunter2" not in await response.text()
        assert (await get(http, url, headers=_basic("anyone", "wrong")))[0] == 401
        status, _, body = await get(http, url, headers=_basic("anyone", "hunter2-s3cret"))
        assert status == 200
        assert "Authorization" not in json.loads(body)["headers"], "the router's credentials stay at the router"

        # A `user:password` secret needs both; an assignment naming another key reads that one.
        await bus.assign(serving=upstreams[:1], basic_auth_key="secret:admin_key")
        await eventually(lambda: _auth_status(http, url, "alice", "wonder-s3cret", 200))
        assert (await get(http, url, headers=_basic("bob", "wonder-s3cret")))[0] == 401
        assert (await get(http, url, headers=_basic("alice", "hunter2-s3cret")))[0] == 401
        assert len(router.secrets) == 1, "the key no route uses any more is not kept"
    finally:
        await router.stop()
    logs = capfd.readouterr()
    assert "s3cret" not in logs.out + logs.err


async def test_a_rotated_or_deleted_basic_auth_secret_takes_effect_as_the_watch_delivers_it(
    router: RouterHandle, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    secrets = await SecretStore.open(js)
    await secrets.put(PROJECT, "iris_key", "first-s3cret")
    await bus.assign(serving=upstreams[:1], basic_auth_key="secret:iris_key")
    url = f"{router.url}/default/iris/echo"
    await eventually(lambda: _auth_status(http, url, "u", "first-s3cret", 200))

    async def changed(change: Awaitable[None]) -> float:
        """Make the change; the seconds until the router holds it (the bound the docs state)."""
        before = router.secrets.revision(PROJECT, "iris_key")
        began = time.monotonic()
        await change
        await eventually(lambda: router.secrets.revision(PROJECT, "iris_key") > before, timeout=5, interval=0.005)
        return time.monotonic() - began

    delay = await changed(secrets.put(PROJECT, "iris_key", "second-s3cret"))
    assert (await get(http, url, headers=_basic("u", "first-s3cret")))[0] == 401  # the very next request
    assert (await get(http, url, headers=_basic("u", "second-s3cret")))[0] == 200
    delay = max(delay, await changed(secrets.delete(PROJECT, "iris_key")))
    assert (await get(http, url, headers=_basic("u", "second-s3cret")))[0] == 401, "a deleted key lets no one in"
    assert delay < 2.0, f"a secret change took {delay:.3f}s to reach the router"
    await bus.deleted()
    await eventually(lambda: len(router.secrets) == 0, what="the secret of a deleted deployment is not kept")


async def _auth_status(http: aiohttp.ClientSession, url: str, user: str, password: str, status: int) -> bool:
    return (await get(http, url, headers=_basic(user, password)))[0] == status


# -- versions, aliases and paths ---------------------------------------------------------------------


async def test_a_path_beginning_with_a_number_goes_to_the_model_unchanged(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    a, b = upstreams
    await bus.assign(revision("r1", 50, [a], versions=(1,)), revision("r2", 50, [b], versions=(2,)))
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}/", {"a", "b"})
    for _ in range(2):  # whichever revision answers, the path is the model's own
        async with http.get(f"{base}/1/x?q=1") as response:
            seen = await response.json()
        assert seen["path"] == "/1/x?q=1" and seen["headers"]["X-Forwarded-Prefix"] == "/default/iris"
    async with http.get(f"{base}@1/123/x") as response:
        seen = await response.json()
    assert (seen["replica"], seen["path"]) == ("a", "/123/x")
    assert seen["headers"]["X-Forwarded-Prefix"] == "/default/iris@1"
    async with http.get(f"{base}@2") as response:
        seen = await response.json()
    assert (seen["replica"], seen["path"]) == ("b", "/")


async def test_a_version_that_changed_only_replicas_is_served_by_its_revisions_replicas(
    router: RouterHandle, bus: Bus, switchable: StartSwitchable, http: aiohttp.ClientSession
) -> None:
    """Versions 1 and 2 run one revision (2 changed only the replica count); version 3 changed the
    template, and its revision is rolling out next to the old one."""
    old = [await switchable(replica_id=f"old-{i}") for i in range(2)]
    new = [await switchable(replica_id="new-0")]
    await bus.assign(
        revision("r-old", 67, [replica(s, f"old-{i}") for i, s in enumerate(old)], versions=(1, 2)),
        revision("r-new", 33, [replica(new[0], "new-0")], versions=(3,)),
        aliases={"stable": 2, "canary": 3},
    )
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}/", {"old-0", "old-1", "new-0"})
    for pin in ("1", "2", "stable"):
        await serving(http, f"{base}@{pin}/", {"old-0", "old-1"})
    for pin in ("3", "canary"):
        await serving(http, f"{base}@{pin}/", {"new-0"})
    async with http.get(f"{base}@2/") as response:  # answered by the replica process itself
        assert response.status == 200 and (await response.text()).startswith("old-")


async def test_unknown_versions_and_aliases_are_404_and_a_version_not_running_503(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    await bus.assign(revision("r3", 100, upstreams[:1], versions=(3,)), aliases={"stable": 3, "old": 1})
    base = f"{router.url}/default/iris"
    await serving(http, f"{base}@3/", {"a"})
    upstreams[0].seen.clear()
    expected = {
        "4": (404, "deployment 'iris' has no version 4"),
        "0": (404, "deployment 'iris' has no version 0"),
        "nightly": (404, "deployment 'iris' has no alias 'nightly'"),
        "1": (503, "version 1 of deployment 'iris' is not running"),
        "old": (503, "version 1 of deployment 'iris' is not running"),
    }
    for pin, (status, detail) in expected.items():
        async with http.get(f"{base}@{pin}/echo") as response:
            assert (response.status, response.content_type) == (status, "application/problem+json"), pin
            assert (await response.json())["detail"] == detail
    assert sum(len(u.seen) for u in upstreams) == 0, "no unknown or stopped version reached a replica"
    status, _, body = await get(http, f"{router.url}/default/nope@3/")
    assert status == 404 and json.loads(body)["detail"] == "no deployment 'nope' in project 'default'"


async def test_requests_split_across_revisions_by_percent(
    router: RouterHandle, bus: Bus, switchable: StartSwitchable, http: aiohttp.ClientSession
) -> None:
    old, new = await switchable(replica_id="old"), await switchable(replica_id="new")
    await bus.assign(revision("r-old", 30, [replica(old, "old")]), revision("r-new", 70, [replica(new, "new")], versions=(2,)))
    url = f"{router.url}/default/iris/readiness/split"
    await serving(http, url, {"old", "new"})
    before = {"old": await old.count("/readiness/split"), "new": await new.count("/readiness/split")}
    requests = 400
    for _ in range(requests):
        assert (await get(http, url))[0] == 200
    share = (await old.count("/readiness/split") - before["old"]) / requests  # counted at the replicas
    assert (await new.count("/readiness/split") - before["new"]) + share * requests == requests
    # The split is a fixed interleaved schedule (30 of every 100); the bound leaves room for the
    # requests of other clients, of which there are none here.
    assert 0.25 <= share <= 0.35, share


async def test_under_load_no_request_reaches_a_replica_after_the_assignment_that_removed_it(
    router: RouterHandle, bus: Bus, switchable: StartSwitchable, http: aiohttp.ClientSession
) -> None:
    """A template change under load: revision A serves, then A and B, then B alone; the replicas
    record every request they get. Each request carries the time the client sent it: a request sent
    after the router applied the assignment without A cannot have been routed by the one before."""
    a = [await switchable(replica_id=f"a{i}") for i in range(2)]
    b = [await switchable(replica_id=f"b{i}") for i in range(2)]
    a_target = [replica(s, f"a{i}") for i, s in enumerate(a)]
    b_target = [replica(s, f"b{i}") for i, s in enumerate(b)]
    await bus.assign(revision("A", 100, a_target))
    base = f"{router.url}/default/iris/readiness"
    await serving(http, f"{base}/warm", {"a0", "a1"})

    sent: dict[int, float] = {}
    failures: list[tuple[int, int | str]] = []
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        n = 0
        while not stop.is_set():
            seq = worker * 1_000_000 + n
            n += 1
            sent[seq] = time.time()
            try:
                async with http.get(f"{base}/{seq}") as response:
                    await response.read()
                    if response.status != 200:
                        failures.append((seq, response.status))
            except aiohttp.ClientError as exc:
                failures.append((seq, repr(exc)))

    async def applied(generation: int) -> float:
        route = await eventually(lambda: (r := router.table.by_key.get("default/iris")) and r.generation >= generation and r)
        return route.applied_at

    async def requests_at(servers: list[SwitchableServer]) -> set[int]:
        return {int(path.rpartition("/")[2]) for s in servers for path in (await s.state())["counts"] if path[11:].isdigit()}

    workers = [asyncio.create_task(client(i)) for i in range(6)]
    try:
        await eventually(lambda: len(sent) > 100, what="load under way")
        generation = (await bus.assign(revision("A", 50, a_target), revision("B", 50, b_target, versions=(2,)))).generation
        await applied(generation)
        mark = len(sent)
        await eventually(lambda: len(sent) > mark + 200, what="load on both revisions")
        generation = (await bus.assign(revision("B", 100, b_target, versions=(2,)))).generation
        removed_at = await applied(generation)
        mark = len(sent)
        await eventually(lambda: len(sent) > mark + 200, what="load after A was removed")
        at_a = await requests_at(a)
        for server in a:  # the scheduler stops A once the assignment without it is out
            server.stop()
        mark = len(sent)
        await eventually(lambda: len(sent) > mark + 100, what="load after A stopped")
    finally:
        stop.set()
        await asyncio.gather(*workers)
    at_b = await requests_at(b)
    assert not failures, failures[:5]
    late = sorted(seq for seq in at_a if sent[seq] > removed_at)
    assert not late, f"{len(late)} requests sent after A's removal reached A"
    assert any(sent[seq] > removed_at for seq in at_b), "B took the traffic after A's removal"
    assert len(at_a) > 100 and len(at_b) > 100
    assert at_a.isdisjoint(at_b) and len(at_a | at_b) == len(sent), "every request was served exactly once"


def replica(server: SwitchableServer, name: str) -> Upstream:
    """A replica process as the assignment lists it."""
    return Upstream(name, port=server.port)


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
    await bus.assign(revision("r1", 100, [a], versions=(1,)))
    await serving(http, f"{first.url}/default/iris/", {"a"})
    await first.stop()

    # While the router is down: a new revision takes over, a deployment comes and goes.
    await bus.assign(revision("r1", 50, [a], versions=(1,)), revision("r2", 50, [b], versions=(2,)))
    await bus.assign(revision("r2", 100, [b], versions=(2,)))
    await bus.assign(serving=[a], deployment_id="d2", name="gone")
    await bus.deleted(deployment_id="d2", name="gone")

    second = await start_router(router_settings)
    try:
        # Serves at once: no waiting for events to trickle in.
        status, replica_id, _ = await get(http, f"{second.url}/default/iris/")
        assert (status, replica_id) == (200, "b")
        assert (await get(http, f"{second.url}/default/iris@2/"))[1] == "b"
        assert (await get(http, f"{second.url}/default/iris@1/"))[0] == 503  # its revision stopped
        assert (await get(http, f"{second.url}/default/gone/"))[0] == 404
        assert second.table.sizes()["tombstones"] == 0, "a deployment deleted before the start is not remembered"
    finally:
        await second.stop()


async def test_a_late_older_assignment_does_not_bring_back_a_removed_replica(
    router: RouterHandle, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    a, b = upstreams
    await bus.assign(serving=[a, b], generation=4)
    await bus.assign(serving=[b], generation=5)
    url = f"{router.url}/default/iris/"
    await serving(http, url, {"b"})
    await bus.assign(serving=[a, b], generation=3)  # redelivered late: now the newest in the stream
    await bus.assign(serving=[a], deployment_id="d2", name="barrier")  # the watch delivers in order:
    await eventually(lambda: "default/barrier" in router.table.by_key)  # once this is in, so was that
    assert router.table.by_key["default/iris"].generation == 5
    assert {(await get(http, url))[1] for _ in range(4)} == {"b"}


async def test_the_periodic_reread_drops_a_deployment_the_stream_no_longer_holds(
    router: RouterHandle, js: JetStreamContext, bus: Bus, upstreams: list[Upstream], http: aiohttp.ClientSession
) -> None:
    _, base = await deployed(bus, http, router, upstreams[:1])
    await js.purge_stream(TRAFFIC.name, subject="berth.traffic.v1.d1")  # as if its assignment were never published
    await router.feed.resync()  # what runs every RESYNC_SECONDS
    assert (await get(http, f"{base}/"))[0] == 404
    assert router.table.sizes()["routes"] == 0 and len(router.pools) == 0


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
