"""Keep-alive HTTP/1.1 connections to the replicas, the responses parsed by httptools (llhttp).

The router's hot path in a few syscalls: a request head (with a small body) goes out in one write,
and a small response is handed over once, complete. One exchange at a time per connection; a
connection goes back to its address's pool only when its response was read to the end and the
replica did not ask to close it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from services.router.flow import WriteFlowControl

SMALL_BODY_BYTES = 64 * 1024  # a response this small (and of known length) is read whole
_PAUSE_READING_BYTES = 256 * 1024  # a streamed body buffered beyond this stops reading the replica
_RESUME_READING_BYTES = 64 * 1024
SWEEP_SECONDS = 1.0
# Idle connections kept per replica address (nginx's `keepalive 32`). Beyond it, a connection unused
# for a sweep (SWEEP_SECONDS) is closed instead of lingering for the keep-alive time. Not at once, as
# nginx does: under a load above the bound that would close and reopen connections all the time, and
# opening one costs the router more than a request (measured: 30 % more CPU per request at 64
# connections, p99 up by half).
MAX_IDLE_PER_ADDRESS = 32
# Response headers that are the connection's business, not the client's (RFC 7230 section 6.1, and
# the pre-standard Proxy-Connection).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade",
})


class UpstreamError(Exception):
    """The replica did not give a complete answer."""


class ConnectFailed(UpstreamError):
    """No connection could be made: nothing of the request was sent."""


class ClosedBeforeResponse(UpstreamError):
    """The replica closed the connection before the first byte of a response."""


class BrokenResponse(UpstreamError):
    """The response was malformed, or the connection ended in the middle of it."""


class ResponseTimeout(UpstreamError):
    """No response head came within the response timeout; the replica may still be working on it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no response within {seconds:g}s")
        self.seconds = seconds


class Connection(WriteFlowControl):
    """One connection to a replica, carrying one exchange at a time.

    After `write`-ing a request, `await response()` returns once the status and headers are in: with
    the whole body in `body` if it is small and of known length, else the body is streamed by
    `read_chunk`. Or, without a coroutine, `expect(listener)`: the listener is called once, when the
    head is in (as `response()` would return) or the exchange failed.
    """

    def __init__(self, pool: AddressPool) -> None:
        self.pool = pool
        self.idle_since = 0.0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: bytes | None = None  # the whole body, when it was small enough to wait for
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed = False
        self._error: UpstreamError | None = None
        self._head_request = False
        self._started = False  # a byte of the response has arrived
        self._head_done = False
        self._complete = False
        self._keep_alive = False  # the replica's word, read with the head (llhttp forgets it after)
        self._length: int | None = None  # Content-Length
        self._delimited = False  # by a length or chunked framing (else the body ends with the connection)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._listener: Callable[[Connection], None] | None = None
        self._feeding = False  # inside the parser: a listener is called after it returns
        self._notify = False
        self.hop_by_hop = False  # the response has a header that is not passed on as it came
        self.deadline = 0.0  # loop time by which the response head must have come

    # -- the request ---------------------------------------------------------------------------------

    def begin(self, head_request: bool) -> None:
        """Reset for a new exchange; `head_request` because the answer to HEAD has no body."""
        self._head_request = head_request
        self._started = self._head_done = self._complete = self._delimited = False
        self._length = None
        self.hop_by_hop = False
        self.status, self.reason, self.headers, self.body = 0, b"", [], None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def length(self) -> int | None:
        """The response's Content-Length, if it has one."""
        return self._length

    def write(self, data: bytes) -> None:
        if not self._closed:
            assert self._transport is not None
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the replica reads the request body slower than the client sends it."""
        await self._wait_writable()

    # -- the response --------------------------------------------------------------------------------

    async def response(self) -> None:
        """Wait for the response head (and a small body); raise UpstreamError if it does not come, and
        ResponseTimeout when the pools' sweeper finds it overdue."""
        if not (self._head_done or self._error):
            loop = asyncio.get_running_loop()
            # No timer per request (it cost a fifth of the router's CPU): the sweeper checks deadlines.
            self.deadline = loop.time() + self.pool.response_timeout
            awaiting = self.pool.awaiting
            awaiting.add(self)
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                awaiting.discard(self)
        if not self._head_done:
            assert self._error is not None
            raise self._error

    def expect(self, listener: Callable[[Connection], None]) -> None:
        """Call `listener(self)` once the response head (and a small body) is in, or the exchange
        failed (`error` says why): `response()` without a Task or a Future, for the hot path."""
        pool = self.pool
        self.deadline = pool.loop.time() + pool.response_timeout
        pool.awaiting.add(self)
        self._listener = listener

    @property
    def error(self) -> UpstreamError | None:
        """Why the exchange failed before its response head, if it did."""
        return None if self._head_done else self._error

    async def read_chunk(self) -> bytes:
        """The next piece of a streamed body; b"" at its end."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _RESUME_READING_BYTES and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        """Read to the end, kept alive by the replica, and not an answer to HEAD (whose Content-Length
        the parser would still wait for)."""
        return self._complete and self._keep_alive and not self._closed and not self._head_request

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._closed = True

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._head_request and self._head_done:
            return  # a body a replica should not have sent; the connection is not reused
        self._started = True
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BrokenResponse("the replica switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BrokenResponse(f"malformed response: {exc}"))
        finally:
            self._feeding = False
        if self._notify:
            self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.pool.forget(self)
        if self._head_done and not self._delimited and not self._complete:
            self._complete = True  # a body without length or chunks ends with the connection
            self._wake()
        elif not self._complete:
            error = BrokenResponse if self._started else ClosedBeforeResponse
            self._fail(error("the replica closed the connection"))
        self._release_writers()

    # -- httptools callbacks -------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._length = int(value)
            self._delimited = True
        elif lowered in HOP_BY_HOP:
            self.hop_by_hop = True
            if lowered == b"transfer-encoding":
                self._delimited = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self.headers, self.reason, self._delimited, self._length = [], b"", False, None
            self.hop_by_hop = False
            return
        self.status = status
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_request or status in (204, 304):
            self._delimited = True
            self._finish()
        elif self._length is None or self._length > SMALL_BODY_BYTES:
            self._wake()  # streamed: the caller reads on while the body arrives

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_READING_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._head_done:
            self._finish()

    # -- helpers -------------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._complete = True
        if self._length is not None and self._length <= SMALL_BODY_BYTES:
            self.body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
            self._chunks.clear()
            self._buffered = 0
        elif self._head_request or self.status in (204, 304):
            self.body = b""
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_result(None)
        elif self._listener is not None:
            # Called once the parser is done with this piece of data: the listener may hand this
            # connection to the next request, which must not begin inside the parser's callback.
            self._notify = True
            if not self._feeding:
                self._deliver()

    def _deliver(self) -> None:
        listener, self._listener, self._notify = self._listener, None, False
        self.pool.awaiting.discard(self)
        if listener is not None:
            # After the loop has read every socket that is ready: the answers then go out together,
            # as they did when a task was woken per request (measured: without this, fewer requests
            # per second at 16 connections on a 2-core machine).
            self.pool.loop.call_soon(listener, self)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:  # the first says why; the connection_lost that closing brings does not
            self._error = error
        self.close()
        self._wake()

    def time_out(self) -> None:
        """The response is overdue: give up on it (closing the connection, which tells the replica)."""
        self._fail(ResponseTimeout(self.pool.response_timeout))


class AddressPool:
    """The idle connections to one replica address, most recently used first out."""

    def __init__(
        self, host: str, port: int, connect_timeout: float, response_timeout: float, awaiting: set[Connection]
    ) -> None:
        self.host, self.port = host, port
        self.host_header = f"Host: {host}:{port}\r\n".encode()
        self._connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.awaiting = awaiting  # every pool's connections waiting for a response head
        self._idle: list[Connection] = []
        self.loop = asyncio.get_running_loop()
        self.last_used = self.loop.time()  # when a connection last came back
        self.retired = False  # no replica is at this address any more: connections are not kept

    def take_idle(self) -> Connection | None:
        """The most recently used idle connection, if there is one."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection._closed:
                return connection
        return None

    async def acquire(self, fresh: bool = False) -> Connection:
        """An idle kept-alive connection, or a new one (always new when `fresh`)."""
        if not fresh:
            connection = self.take_idle()
            if connection is not None:
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect ({type(exc).__name__})") from exc
        return protocol

    def release(self, connection: Connection) -> None:
        if connection.reusable and not self.retired:
            connection.idle_since = self.last_used = self.loop.time()
            self._idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: Connection) -> None:
        """The replica closed `connection` (perhaps while idle)."""
        if connection in self._idle:
            self._idle.remove(connection)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close_idle(self, older_than: float, unused_since: float | None = None) -> None:
        """Close the connections idle since before `older_than`, and those beyond MAX_IDLE_PER_ADDRESS
        idle since before `unused_since`, longest idle first."""
        keep = []
        for connection in self._idle:  # longest idle first
            if connection.idle_since < older_than:
                connection.close()
            else:
                keep.append(connection)
        if unused_since is not None:
            extra = len(keep) - MAX_IDLE_PER_ADDRESS
            while extra > 0 and keep[0].idle_since < unused_since:
                keep.pop(0).close()
                extra -= 1
        self._idle = keep


class UpstreamPools:
    """An AddressPool per replica address; idle connections close after `keepalive_seconds`, and a
    response head not begun within `response_timeout` fails with ResponseTimeout (checked every
    SWEEP_SECONDS, so up to that much later).

    Pools are bounded by the addresses in use: `retire` drops an address no replica has any more (the
    routing table says so), and the sweep drops a pool with no idle connection left for
    `keepalive_seconds` (e.g. one a late request re-created for a retired address). A retired pool's
    connections still in use are closed when their exchange ends."""

    def __init__(self, connect_timeout: float, keepalive_seconds: float, response_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_seconds
        self._response_timeout = response_timeout
        self._pools: dict[str, AddressPool] = {}
        self._awaiting: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def pool(self, base_url: str) -> AddressPool:
        """The pool for `base_url` ("http://host:port")."""
        pool = self._pools.get(base_url)
        if pool is None:
            host, _, port = base_url.removeprefix("http://").rpartition(":")
            pool = self._pools[base_url] = AddressPool(
                host.strip("[]"), int(port), self._connect_timeout, self._response_timeout, self._awaiting
            )
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep())
        return pool

    def retire(self, base_url: str) -> None:
        """No replica is at `base_url` any more: close its idle connections and forget its pool."""
        pool = self._pools.pop(base_url, None)
        if pool is not None:
            pool.retired = True
            pool.close_idle(float("inf"))

    def __len__(self) -> int:
        return len(self._pools)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._pools.values():
            pool.close_idle(float("inf"))

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(SWEEP_SECONDS, self._keepalive / 2))
            now = loop.time()
            for connection in [c for c in self._awaiting if c.deadline <= now]:
                connection.time_out()
            expired = now - self._keepalive
            for base_url, pool in list(self._pools.items()):
                pool.close_idle(expired, unused_since=now - SWEEP_SECONDS)
                if not pool.idle and pool.last_used < expired:
                    self.retire(base_url)
