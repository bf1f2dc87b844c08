"""The router's upstream connections against a scripted HTTP server on loopback: each test says
exactly which bytes the replica answers, so framing, keep-alive and failures are what the test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from services.router.upstream import (
    MAX_IDLE_PER_ADDRESS,
    SMALL_BODY_BYTES,
    BrokenResponse,
    ClosedBeforeResponse,
    ConnectFailed,
    Connection,
    UpstreamPools,
)
from tests.helpers import eventually

# The answer to the n-th request head on a connection (from 0): bytes to send, or None to close
# the connection without answering.
Script = Callable[[bytes, int], bytes | None]


@dataclass
class Replica:
    script: Script
    close_after_answer: bool = False
    server: asyncio.Server | None = None
    base_url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for nth in range(1_000_000):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                answer = self.script(head, nth)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def replica_with() -> AsyncIterator[Callable[[Script], asyncio.Future[Replica]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script, close_after_answer: bool = False) -> Replica:
        replica = Replica(script, close_after_answer)
        replica.server = await asyncio.start_server(replica.serve, "127.0.0.1", 0)
        replica.base_url = f"http://127.0.0.1:{replica.server.sockets[0].getsockname()[1]}"
        servers.append(replica.server)
        return replica

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.fixture
async def pools() -> AsyncIterator[UpstreamPools]:
    pools = UpstreamPools(connect_timeout=2.0, keepalive_seconds=30.0, response_timeout=30.0)
    yield pools
    await pools.close()


async def exchange(pools: UpstreamPools, replica: Replica, method: str = "GET") -> tuple[Connection, bytes]:
    """One request; the connection (not yet released) and the whole body, streamed or not."""
    pool = pools.pool(replica.base_url)
    connection = await pool.acquire()
    connection.begin(method == "HEAD")
    connection.write(f"{method} / HTTP/1.1\r\n".encode() + pool.host_header + b"\r\n")
    await connection.response()
    if connection.body is not None:
        return connection, connection.body
    chunks = []
    while chunk := await connection.read_chunk():
        chunks.append(chunk)
    return connection, b"".join(chunks)


def fixed(head: str, body: bytes = b"") -> Script:
    return lambda _head, _nth: head.replace("\n", "\r\n").encode() + b"\r\n" + body


async def test_a_small_response_is_read_whole_and_the_connection_kept(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(fixed("HTTP/1.1 201 Made\nContent-Length: 5\nX-A: 1\n", b"hello"))
    for _ in range(3):
        connection, body = await exchange(pools, replica)
        assert (connection.status, connection.reason, body) == (201, b"Made", b"hello")
        assert (b"X-A", b"1") in connection.headers
        pools.pool(replica.base_url).release(connection)
    assert replica.connections == 1


async def test_a_chunked_response_is_streamed_and_the_connection_kept(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    chunks = b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    replica = await replica_with(fixed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", chunks))
    for _ in range(2):
        connection, body = await exchange(pools, replica)
        assert connection.body is None and body == b"hello world"
        assert connection.reusable
        pools.pool(replica.base_url).release(connection)
    assert replica.connections == 1


async def test_a_large_response_streams_in_full(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    size = 3 * 1024 * 1024 + 7  # beyond the read buffer: reading pauses and resumes
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    replica = await replica_with(fixed(f"HTTP/1.1 200 OK\nContent-Length: {size}\n", payload))
    connection, body = await exchange(pools, replica)
    assert body == payload and connection.reusable


async def test_a_body_without_length_ends_with_the_connection(
    replica_with: Callable[..., asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(
        lambda _head, _nth: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", close_after_answer=True
    )
    connection, body = await exchange(pools, replica)
    assert body == b"until the end" and not connection.reusable


async def test_connection_close_is_honoured(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(fixed("HTTP/1.1 200 OK\nContent-Length: 2\nConnection: close\n", b"ok"))
    connection, body = await exchange(pools, replica)
    assert body == b"ok" and not connection.reusable
    pools.pool(replica.base_url).release(connection)
    await exchange(pools, replica)
    assert replica.connections == 2


@pytest.mark.parametrize(
    ("method", "answer", "reusable"),
    [
        ("HEAD", "HTTP/1.1 200 OK\nContent-Length: 1000\n", False),  # the parser would wait for 1000 bytes
        ("GET", "HTTP/1.1 204 No Content\n", True),
        ("GET", 'HTTP/1.1 304 Not Modified\nETag: "v1"\nContent-Length: 1000\n', True),
    ],
)
async def test_answers_without_a_body(
    replica_with: Callable[[Script], asyncio.Future[Replica]],
    pools: UpstreamPools,
    method: str,
    answer: str,
    reusable: bool,
) -> None:
    replica = await replica_with(fixed(answer))
    connection, body = await exchange(pools, replica, method)
    assert body == b"" and connection.body == b"" and connection.reusable is reusable
    pools.pool(replica.base_url).release(connection)
    connection, body = await exchange(pools, replica, method)  # the next exchange is not confused
    assert connection.status == int(answer.split()[1]) and body == b""


async def test_an_interim_answer_is_skipped(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(lambda _head, _nth: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    connection, body = await exchange(pools, replica)
    assert (connection.status, body, connection.headers) == (200, b"ok", [(b"Content-Length", b"2")])


async def test_a_connection_the_replica_closes_while_idle_is_not_reused(
    replica_with: Callable[..., asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(fixed("HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"), close_after_answer=True)
    connection, _ = await exchange(pools, replica)
    pools.pool(replica.base_url).release(connection)
    await eventually(lambda: connection.closed)
    _, body = await exchange(pools, replica)
    assert body == b"ok" and replica.connections == 2


async def test_a_kept_alive_connection_closed_on_the_next_request_fails_before_any_response(
    replica_with: Callable[..., asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    """The race a retry covers: the replica drops a kept-alive connection as a request goes out."""
    replica = await replica_with(lambda _head, nth: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if nth == 0 else None)
    connection, _ = await exchange(pools, replica)
    pools.pool(replica.base_url).release(connection)
    with pytest.raises(ClosedBeforeResponse):
        await exchange(pools, replica)
    pool = pools.pool(replica.base_url)
    fresh = await pool.acquire(fresh=True)
    assert fresh is not connection and replica.connections == 2


async def test_failures_before_and_during_a_response(
    replica_with: Callable[..., asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    silent = await replica_with(lambda _head, _nth: None)
    with pytest.raises(ClosedBeforeResponse):
        await exchange(pools, silent)
    cut = await replica_with(lambda _head, _nth: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True)
    with pytest.raises(BrokenResponse):
        await exchange(pools, cut)
    big_cut = await replica_with(
        lambda _head, _nth: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nabc" % (SMALL_BODY_BYTES + 1), True
    )
    with pytest.raises(BrokenResponse):
        await exchange(pools, big_cut)
    garbage = await replica_with(lambda _head, _nth: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(BrokenResponse):
        await exchange(pools, garbage)
    assert silent.server is not None
    silent.server.close()
    await silent.server.wait_closed()
    with pytest.raises(ConnectFailed):
        await exchange(pools, silent)


async def test_a_retired_address_closes_its_connections_and_is_forgotten(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    replica = await replica_with(fixed("HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"))
    idle, _ = await exchange(pools, replica)
    busy, _ = await exchange(pools, replica)  # still in use when its replica leaves
    pool = pools.pool(replica.base_url)
    pool.release(idle)
    pools.retire(replica.base_url)  # the routing table: no replica at this address any more
    assert len(pools) == 0 and idle.closed
    pool.release(busy)  # its exchange ends: not kept for an address nobody uses
    assert busy.closed


async def test_the_sweep_forgets_a_pool_left_without_connections(
    replica_with: Callable[[Script], asyncio.Future[Replica]]
) -> None:
    pools = UpstreamPools(connect_timeout=2.0, keepalive_seconds=0.2, response_timeout=30.0)
    try:
        replica = await replica_with(fixed("HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"))
        connection, _ = await exchange(pools, replica)
        pools.pool(replica.base_url).release(connection)
        assert len(pools) == 1
        await eventually(lambda: len(pools) == 0, timeout=5, what="the idle pool swept away")
        assert connection.closed
    finally:
        await pools.close()


async def test_after_a_burst_at_most_the_idle_bound_is_kept_and_reused_before_opening(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    """As nginx's `keepalive N`: a burst opens what it needs, then only N stay open for reuse (the
    rest close at the next sweep, once unused for one)."""
    replica = await replica_with(fixed("HTTP/1.1 200 OK\nContent-Length: 2\n", b"ok"))
    burst = MAX_IDLE_PER_ADDRESS + 8
    connections = [connection for connection, _ in await asyncio.gather(*(exchange(pools, replica) for _ in range(burst)))]
    pool = pools.pool(replica.base_url)
    for connection in connections:
        pool.release(connection)
    assert replica.connections == burst
    await eventually(lambda: pool.idle == MAX_IDLE_PER_ADDRESS, timeout=10, what="the idle connections trimmed")
    assert sum(c.closed for c in connections) == burst - MAX_IDLE_PER_ADDRESS
    for _ in range(3):  # one at a time: the most recently used idle connection, no new one
        connection, body = await exchange(pools, replica)
        pool.release(connection)
        assert body == b"ok"
    assert replica.connections == burst


async def test_expect_calls_back_once_with_the_answer_or_the_failure(
    replica_with: Callable[[Script], asyncio.Future[Replica]], pools: UpstreamPools
) -> None:
    """The hot path's way to wait for a response: a callback, no coroutine."""
    replica = await replica_with(lambda _head, nth: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if nth == 0 else None)
    pool = pools.pool(replica.base_url)
    called: list[tuple[int, bytes | None, object]] = []
    connection = await pool.acquire()
    for _ in range(2):  # the second time the replica closes the connection instead of answering
        connection.begin(False)
        connection.write(b"GET / HTTP/1.1\r\n" + pool.host_header + b"\r\n")
        connection.expect(lambda c: called.append((c.status, c.body, c.error)))
        count = len(called)
        await eventually(lambda: len(called) > count, what="the callback")
    assert called[0] == (200, b"ok", None)
    assert called[1][0] == 0 and isinstance(called[1][2], ClosedBeforeResponse) and len(called) == 2
