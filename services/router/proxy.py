"""The data plane: one handler proxying `/<project>/<slug>/<rest>` (traffic split by the assignment's
percents) and `/<project>/<slug>@<version-or-alias>/<rest>` (pinned to the revision that version
runs) to a ready replica, streaming both bodies; the replica gets `/<rest>`. Also answers
`/_berth/healthz` and `/_berth/metrics`.

Hot path rules: dict lookups and string slicing only, no logging per request, everything derived
from events (ready tuples, balancers, resolved credentials) is prepared by the routing table. Headers
travel as the bytes they arrived as: the request's to the replica, the replica's to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.router.auth import CHALLENGE
from services.router.balancers import AFFINITY_COOKIE, Balancer, RequestKey
from services.router.server import Body, Request
from services.router.table import Replica, Route, RoutingTable
from services.router.upstream import (
    HOP_BY_HOP,
    SMALL_BODY_BYTES,
    ConnectFailed,
    Connection,
    ResponseTimeout,
    UpstreamError,
    UpstreamPools,
)

OPS_PREFIX = "_berth/"  # a reserved project name: the router's own endpoints

# Hop-by-hop headers (upstream.HOP_BY_HOP) are not passed on either way. Host is replaced by the
# replica's address; the client's Host travels in X-Forwarded-Host.
_HOP_BY_HOP_LOWER = HOP_BY_HOP
# The router writes Host and the X-Forwarded-* headers itself.
_SKIPPED_REQUEST_HEADERS = _HOP_BY_HOP_LOWER | {
    b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix",
}
REPLICA_HEADER = "X-Berth-Replica"
STOPPED_RETRY_AFTER = "30"
MAX_ALIAS_SHOWN = 63  # a longer `@<alias>` is not echoed whole in the 404
NOT_READY_RETRY_AFTER = "2"
MAX_HELD_PER_DEPLOYMENT = 1000  # requests held while a scaled-to-zero deployment brings a replica up


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer of the router's own."""

    status: int
    headers: bytes  # header lines, Content-Length included
    body: bytes

    def send(self, request: Request) -> int:
        request.respond(self.status, None, self.headers, self.body)
        return self.status


def reply(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Reply:
    lines = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    lines += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return Reply(status, lines.encode(), body)


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return reply(status, json.dumps(body).encode(), "application/problem+json", headers)


# The router's fixed answers, built once: they are sent most when things go wrong under load.
UNAUTHORIZED = problem(401, "Unauthorized", "credentials required", {"WWW-Authenticate": CHALLENGE})
STOPPED = problem(503, "Deployment stopped", "deployment is stopped", {"Retry-After": STOPPED_RETRY_AFTER})
NO_READY_REPLICA = problem(503, "No ready replica", "no ready replica", {"Retry-After": NOT_READY_RETRY_AFTER})


class Proxy:
    def __init__(
        self,
        table: RoutingTable,
        pools: UpstreamPools,
        trust_forwarded_for: bool,
        registry: CollectorRegistry,
        bus_connected: Callable[[], bool],
    ) -> None:
        self._by_key = table.by_key
        self.pools = pools
        self.trust_forwarded_for = trust_forwarded_for
        self._registry = registry
        self._bus_connected = bus_connected
        self.unrouted = 0
        # Set when the router runs several workers: /_berth/metrics is all of theirs (peers.py).
        self.exposition: Callable[[], Awaitable[bytes]] | None = None

    def handle(self, request: Request) -> Awaitable[None] | None:
        """Answer `request`, at once or from a callback (None), or by the awaitable returned."""
        path, _, query = request.target.partition("?")
        first = path.find("/", 1)
        second = path.find("/", first + 1) if first > 0 else -1
        key = path[1:second] if second > 0 else path[1:]
        route = self._by_key.get(key)
        pin: str | None = None
        if route is None:  # not the plain form: perhaps `<slug>@<version-or-alias>` (slugs have no "@")
            base, at, pin = key.partition("@")
            route = self._by_key.get(base) if at else None
            if route is None:
                if self.exposition is not None and base == OPS_PREFIX + "metrics":
                    return self._all_workers_metrics(request, self.exposition)
                self._unrouted(base).send(request)
                return None
        rest = path[second:] if second > 0 else "/"
        target = f"{rest}?{query}" if query else rest
        exchange = _Exchange(self, request, route, path[: second if second > 0 else len(path)], target)
        try:
            return exchange.serve(pin)
        except BaseException:
            exchange.done()
            raise

    @staticmethod
    async def _all_workers_metrics(request: Request, exposition: Callable[[], Awaitable[bytes]]) -> None:
        reply(200, await exposition(), CONTENT_TYPE_LATEST).send(request)

    def _unrouted(self, key: str) -> Reply:
        if key.startswith(OPS_PREFIX):
            return self._ops(key.removeprefix(OPS_PREFIX))
        self.unrouted += 1
        project, _, slug = key.partition("/")
        if not slug:
            return problem(404, "Not Found", "endpoints are /<project>/<deployment>/... and /<project>/<deployment>@<version-or-alias>/...")
        return problem(404, "Not Found", f"no deployment {slug!r} in project {project!r}")

    def _ops(self, name: str) -> Reply:
        if name == "healthz":
            # Healthy while it serves: without the bus the table only goes stale, and the last known
            # routes beat none.
            body = json.dumps({"healthy": True, "bus_connected": self._bus_connected()}).encode()
            return reply(200, body, "application/json")
        if name == "metrics":
            return reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        return problem(404, "Not Found", "the router serves /_berth/healthz and /_berth/metrics")


class _Exchange:
    """One proxied request, from its route to its answer. The hot path (no body, or a small one all
    in; an idle connection to the replica) runs in callbacks: `forward` writes the request and the
    upstream connection calls `_on_response` with the answer, no Task, Future or coroutine involved.
    Whatever has to wait (a new connection, a body still arriving, a retry, a streamed response, a
    scaled-to-zero deployment) goes on in a coroutine. Every way ends in `done`, once: the route's
    in-flight count and its one Stats call."""

    __slots__ = (
        "affinity", "lines", "prefix", "proxy", "replica", "replicas", "request", "request_key", "tried", "answered",
        "route", "started", "status", "streamed", "target", "ended",
    )

    def __init__(self, proxy: Proxy, request: Request, route: Route, prefix: str, target: str) -> None:
        self.proxy = proxy
        self.request = request
        self.route = route
        self.prefix = prefix
        self.target = target
        self.status = 502  # what the client got (a failure before any answer counts as 502)
        self.tried: Replica | None = None  # the replica that answered, or was tried last
        self.answered = False  # False: the router answered for it (no replica reached, or a 502/504)
        self.ended = False
        route.stats.in_flight += 1
        self.started = time.perf_counter()

    def done(self) -> None:
        if self.ended:  # a failure on the way out may reach more than one handler
            return
        self.ended = True
        stats = self.route.stats
        stats.in_flight -= 1
        stats.observe(time.perf_counter() - self.started, self.status, self.tried, self.answered)

    def answer(self, reply: Reply) -> None:
        """A reply of the router's own ends the exchange."""
        try:
            self.status = reply.send(self.request)
        finally:
            self.done()

    def serve(self, pin: str | None) -> Awaitable[None] | None:
        route, request = self.route, self.request
        if route.auth is not None and not route.auth.allows(_header(request, b"authorization")):
            self.answer(UNAUTHORIZED)
            return None
        if not route.enabled:
            self.answer(STOPPED)
            return None
        balancer: Balancer = route.balancer
        replicas = route.serving
        if pin is not None:
            pinned = _pinned(route, pin)
            if isinstance(pinned, Reply):
                self.answer(pinned)
                return None
            replicas, balancer = pinned, route.inner
        if not replicas and pin is None and route.hold_seconds > 0:
            return self._held()
        if not replicas:
            self.answer(NO_READY_REPLICA)
            return None
        return self.forward(replicas, balancer)

    async def _held(self) -> None:
        try:
            replicas = await _held(self.route)  # scale to zero: wait for one
        except BaseException:
            self.done()
            raise
        if not replicas:
            self.answer(NO_READY_REPLICA)
            return
        try:
            answer = self.forward(replicas, self.route.balancer)
        except BaseException:
            self.done()
            raise
        if answer is not None:
            await answer

    def forward(self, replicas: tuple[Replica, ...], balancer: Balancer) -> Awaitable[None] | None:
        """Send the request to a replica: written at once when it can be, else by the coroutine
        returned."""
        request, route, proxy = self.request, self.route, self.proxy
        peer = request.peer
        headers = request.headers
        forwarded_for = _header(request, b"x-forwarded-for")
        client_ip = forwarded_for.partition(",")[0].strip() if forwarded_for and proxy.trust_forwarded_for else peer
        self.affinity = _cookie(headers.get(b"cookie"), AFFINITY_COOKIE) if route.sticky else None
        self.request_key = RequestKey(client_ip, self.affinity)
        self.replicas = replicas
        replica = self.replica = balancer.pick(replicas, self.request_key)

        body = request.body
        length = request.content_length
        expect_continue = body is not None and headers.get(b"expect", b"").lower() == b"100-continue"
        connection_header = headers.get(b"connection")
        skip = _SKIPPED_REQUEST_HEADERS
        if connection_header or route.auth is not None or expect_continue:
            skip = _request_skips(connection_header, route.auth is not None, expect_continue)
        host = _header(request, b"host") or ""
        lines = self.lines = [
            f"{request.method} {self.target} HTTP/1.1\r\n".encode("latin-1"),
            b"",  # the replica's Host line
            *[name + b": " + value + b"\r\n" for name, value in request.raw_headers if name.lower() not in skip],
            _forwarded(forwarded_for, peer, host, self.prefix),
        ]
        self.streamed = streamed = body is not None and (length is None or length > SMALL_BODY_BYTES)
        if streamed and length is None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        if body is not None and not streamed:
            whole = None if expect_continue else body.read_now()
            if whole is None:
                return self._forward_later(expect_continue, body)
            lines.append(whole)
        elif streamed:
            return self._forward_later(expect_continue, body)

        pool = proxy.pools.pool(replica.base_url)
        connection = pool.take_idle()
        if connection is None:
            return self._complete(None)  # a new connection to make
        replica.in_flight += 1
        connection.begin(request.method == "HEAD")
        lines[1] = pool.host_header
        pool.loop.call_soon(connection.write, b"".join(lines))  # with the others read in this turn
        connection.expect(self._on_response)
        return None

    async def _forward_later(self, expect_continue: bool, body: Body | None) -> None:
        if expect_continue:
            # The client waits for this before it sends the body; the replica gets the body at once.
            self.request.send_continue()
        if body is not None and not self.streamed:
            try:
                self.lines.append(await body.read())  # small: sent with the head, in one write
            except BaseException:
                self.done()
                raise
        await self._complete(None)

    def _on_response(self, upstream: Connection) -> None:
        """The replica's answer (or its failure) on the hot path."""
        error = upstream.error
        if error is not None:
            upstream.close()
            self.replica.in_flight -= 1
            self.request.spawn(self._complete(error))
            return
        if upstream.body is None:  # a body to stream
            self.request.spawn(self._relay_and_release(upstream))
            return
        try:
            self._respond(upstream)
        except Exception as exc:
            self.request.fail(exc)
        finally:
            upstream.pool.release(upstream)
            self.replica.in_flight -= 1
            self.done()

    async def _complete(self, error: UpstreamError | None) -> None:
        """Send the request (unless `error` says how the first attempt failed), retry once where that
        is safe, and relay the answer."""
        try:
            upstream = await self._answered(error)
        except BaseException:
            self.done()
            raise
        if upstream is None:
            self.done()
            return
        await self._relay_and_release(upstream)

    async def _answered(self, error: UpstreamError | None) -> Connection | None:
        """The connection with the replica's response head, or None when the client was answered
        502 or 504."""
        request, replica = self.request, self.replica
        if error is None:
            try:
                return await self._send(replica, fresh=False)
            except UpstreamError as exc:
                error = exc
        self.tried = replica
        if isinstance(error, ResponseTimeout):
            # It may be at work on it: not resent.
            self.status = _gateway_timeout(replica, error).send(request)
            return None
        # Retry once when nothing of the request can have been consumed: the connection was never made
        # (the replica died since its last probe: try another), or there is no body (also when a
        # kept-alive connection had been closed by the only replica: try it afresh).
        refused = isinstance(error, ConnectFailed)
        others = tuple(r for r in self.replicas if r is not replica)
        if not (refused or request.body is None) or (refused and not others):
            self.status = _bad_gateway(replica, error).send(request)
            return None
        if others:  # any other serving replica will do (within its revision, for a pinned version)
            replica = self.replica = self.route.inner.pick(others, self.request_key)
            self.tried = replica
        try:
            return await self._send(replica, fresh=True)
        except ResponseTimeout as timeout:
            self.status = _gateway_timeout(replica, timeout).send(request)
        except UpstreamError as retry_error:
            self.status = _bad_gateway(replica, retry_error).send(request)
        return None

    async def _send(self, replica: Replica, fresh: bool) -> Connection:
        """Send the request to `replica` and wait for its response head; the replica counts as busy
        from here until the caller has relayed the response."""
        request = self.request
        pool = self.proxy.pools.pool(replica.base_url)
        replica.in_flight += 1
        try:
            connection = await pool.acquire(fresh)
            try:
                connection.begin(request.method == "HEAD")
                self.lines[1] = pool.host_header
                connection.write(b"".join(self.lines))
                if self.streamed:
                    assert request.body is not None
                    await _send_body(request.body.chunks(), connection, request.content_length is None)
                await connection.response()
            except BaseException:
                connection.close()
                raise
            return connection
        except BaseException:
            replica.in_flight -= 1
            raise

    async def _relay_and_release(self, upstream: Connection) -> None:
        """Relay the answer, then give the connection back (or close it) and end the exchange."""
        try:
            if upstream.body is not None:
                self._respond(upstream)
            else:
                await self._stream(upstream)
        finally:
            upstream.pool.release(upstream)
            self.replica.in_flight -= 1
            self.done()

    def _head(self, upstream: Connection) -> bytes:
        replica = self.replica
        if upstream.hop_by_hop:
            headers = _response_headers(upstream.headers, replica.replica_id)
        else:  # the usual case: every header passes, as it came
            headers = b"".join([name + b": " + value + b"\r\n" for name, value in upstream.headers])
            headers += f"{REPLICA_HEADER}: {replica.replica_id}\r\n".encode()
        if self.route.sticky and self.affinity != replica.replica_id:
            headers += (
                f"Set-Cookie: {AFFINITY_COOKIE}={replica.replica_id}; HttpOnly; Path={self.prefix}; SameSite=Lax\r\n"
            ).encode()
        return headers

    def _respond(self, upstream: Connection) -> None:
        """A small body goes out with the head in one write (on loopback each send costs about as much
        as the rest of the request)."""
        self.request.respond(upstream.status, upstream.reason, self._head(upstream), upstream.body or b"")
        self.status, self.tried, self.answered = upstream.status, self.replica, True

    async def _stream(self, upstream: Connection) -> None:
        request = self.request
        request.start(upstream.status, upstream.reason, self._head(upstream), upstream.length is not None)
        self.status, self.tried, self.answered = upstream.status, self.replica, True
        try:
            while chunk := await upstream.read_chunk():
                await request.write(chunk)
        except UpstreamError:
            request.abort()  # the replica broke off: closing is how the client learns the body is cut
            raise
        except ConnectionResetError:
            return  # the client left; the replica's connection, not read to its end, is closed
        request.end()


def _pinned(route: Route, pin: str) -> tuple[Replica, ...] | Reply:
    """The replicas of the revision `@<pin>` names (digits: a spec version, else an alias), or the
    answer when there are none: 404 for a version or alias that does not exist, 503 for one whose
    revision is not running. A running revision without a ready replica gives an empty tuple (503)."""
    if pin.isascii() and pin.isdigit():
        version = int(pin)
    else:
        aliased = route.aliases.get(pin)
        if aliased is None:
            named = repr(pin) if len(pin) <= MAX_ALIAS_SHOWN else f"of {len(pin)} characters"
            return problem(404, "Not Found", f"deployment {route.slug!r} has no alias {named}")
        version = aliased
    if not 1 <= version <= route.spec_version:
        return problem(404, "Not Found", f"deployment {route.slug!r} has no version {version}")
    replicas = route.by_version.get(version)
    if replicas is None:
        return problem(503, "Version not running", f"version {version} of deployment {route.slug!r} is not running")
    return replicas


def _header(request: Request, name: bytes) -> str | None:
    value = request.headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _cookie(header: bytes | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header."""
    if not header:
        return None
    for pair in header.decode("latin-1").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


def _request_skips(connection: bytes | None, authenticated: bool, expect_continue: bool) -> frozenset[bytes]:
    """The request headers not forwarded, beyond the usual ones."""
    names = set(_SKIPPED_REQUEST_HEADERS)
    if connection:  # headers the sender declared hop-by-hop for this connection only
        names.update(token.strip().lower() for token in connection.split(b","))
    if authenticated:  # the router's credentials, not the replica's business
        names.add(b"authorization")
    if expect_continue:  # the router answered it
        names.add(b"expect")
    return frozenset(names)


def _forwarded(forwarded_for: str | None, peer: str, host: str, prefix: str) -> bytes:
    chain = f"{forwarded_for}, {peer}" if forwarded_for else peer
    return (
        f"X-Forwarded-For: {chain}\r\nX-Forwarded-Proto: http\r\n"
        f"X-Forwarded-Host: {host}\r\nX-Forwarded-Prefix: {prefix}\r\n"
    ).encode("latin-1")


def _response_headers(raw: list[tuple[bytes, bytes]], replica_id: str) -> bytes:
    """The replica's header lines for the client: hop-by-hop ones left out, X-Berth-Replica added."""
    skip = _HOP_BY_HOP_LOWER
    for name, value in raw:
        if name.lower() == b"connection":  # and the headers it declares hop-by-hop
            skip = skip | {token.strip().lower() for token in value.split(b",")}
    lines = [name + b": " + value + b"\r\n" for name, value in raw if name.lower() not in skip]
    lines.append(f"{REPLICA_HEADER}: {replica_id}\r\n".encode())
    return b"".join(lines)


async def _send_body(chunks: AsyncIterator[bytes], upstream: Connection, chunked: bool) -> None:
    """Stream the request body to the replica, as it arrives and no faster than the replica reads."""
    async for chunk in chunks:
        if upstream.closed:
            return  # the replica gave up on the request: its answer (or the lack of one) says why
        upstream.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await upstream.drain()
    if chunked:
        upstream.write(b"0\r\n\r\n")


async def _held(route: Route) -> tuple[Replica, ...]:
    """Hold a request while the deployment has no serving replica (scaled to zero, one coming up), at
    most `route.hold_seconds` and with at most MAX_HELD_PER_DEPLOYMENT waiting; the replicas serving
    when it wakes (none: answered 503 as before). The held request counts as in flight, which is what
    tells the autoscaler to bring a replica up."""
    if route.held >= MAX_HELD_PER_DEPLOYMENT:
        return ()
    route.held += 1
    deadline = time.monotonic() + route.hold_seconds
    try:
        while not route.serving and route.enabled and route.hold_seconds > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if route.serving_again is None:
                route.serving_again = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(route.serving_again.wait(), remaining)
        return route.serving
    finally:
        route.held -= 1


def _bad_gateway(replica: Replica, exc: Exception) -> Reply:
    reason = type(exc).__name__
    return problem(502, "Bad Gateway", f"replica {replica.replica_id} did not answer ({reason})")


def _gateway_timeout(replica: Replica, timeout: ResponseTimeout) -> Reply:
    detail = f"replica {replica.replica_id} did not answer within {timeout.seconds:g}s"
    return problem(504, "Gateway Timeout", detail)
