"""The router's HTTP/1.1 server: requests parsed by httptools (llhttp), handed to the handler as they
arrive, and responses written as the bytes the proxy prepares (most of them are the replica's, passed
through).

The handler is called straight from the parser's callback for a request without a body, and may
answer later from a callback of its own (the proxy answers most requests so, with no Task or Future
per request: those cost about a fifth of a proxied request). When it needs to wait it returns an
awaitable, which runs as the request's task; a request with a body is handed over from a task, once
the body that came with the head is buffered.

A general server (aiohttp's) decodes every header into multidicts, builds request and response
objects and encodes the headers again; for a proxy that is most of the cost of a request.

Keep-alive and pipelining: requests on one connection are answered in order, one at a time. A
connection is kept after a response only when the client wants it and the request was read to its
end; a connection idle for `keepalive_seconds` is closed.
"""

from __future__ import annotations

import asyncio
import http
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import httptools

from libs.logging import get_logger
from services.router.flow import WriteFlowControl

log = get_logger("router")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; beyond this the answer is 431
_PAUSE_READING_BYTES = 256 * 1024  # a request body buffered beyond this stops reading the client
_RESUME_READING_BYTES = 64 * 1024
_MAX_PIPELINED = 16  # requests waiting for their turn on one connection before reading stops
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}

Handler = Callable[["Request"], Awaitable[None] | None]


class HeadTooLarge(Exception):
    pass


class Body:
    """A request body as it arrives: read whole (`read`) or piece by piece (`chunks`)."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def read_now(self) -> bytes | None:
        """The whole body if it has all arrived (taken: not to be read again), else None."""
        if not self.complete or self._error is not None:
            return None
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self._connection.sync_reading()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self.buffered -= len(chunk)
                self._connection.sync_reading()
                yield chunk
            elif self.complete:
                return
            else:
                await self._wait()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._connection.sync_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._wake()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self.complete:
            raise self._error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Request:
    """One request: what the client sent (headers by lower-cased name, first value, as bytes) and
    the calls that answer it, either whole (`respond`) or streamed (`start`, `write`, `end`)."""

    __slots__ = (
        "_chunked",
        "_connection",
        "body",
        "finished",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "peer",
        "raw_headers",
        "started",
        "target",
    )

    def __init__(
        self,
        connection: _Connection,
        method: str,
        target: str,
        raw_headers: list[tuple[bytes, bytes]],
        peer: str,
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self._connection = connection
        self.method = method
        self.target = target  # as sent: path and query, percent-escapes kept
        self.raw_headers = raw_headers
        self.headers = {name.lower(): value for name, value in reversed(raw_headers)}
        self.peer = peer
        self.http11 = http11
        self.keep_alive = keep_alive
        self.body: Body | None = None  # None when the request has no body
        self.started = self.finished = False
        self._chunked = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get(b"content-length")
        return int(value) if value is not None else None

    def send_continue(self) -> None:
        """Tell a client waiting with `Expect: 100-continue` to send its body."""
        self._connection.write(CONTINUE)

    def respond(self, status: int, reason: bytes | None, headers: bytes, body: bytes = b"") -> None:
        """The whole response in one write. `headers` are complete header lines, framing included
        (Content-Length); the body is left out for HEAD."""
        keep = self._keeps_connection()
        self._connection.write(
            b"".join((
                b"HTTP/1.1 %d %s\r\n" % (status, reason if reason is not None else _REASONS.get(status, b"")),
                headers,
                b"" if keep else b"Connection: close\r\n",
                b"Connection: keep-alive\r\n\r\n" if keep and not self.http11 else b"\r\n",
                b"" if self.method == "HEAD" else body,
            ))
        )
        self.started = True
        self._finish(keep)

    def start(self, status: int, reason: bytes | None, headers: bytes, length_known: bool) -> None:
        """Send the response head; the body follows by `write` and `end`, chunked unless its
        Content-Length is among `headers` (or, for an HTTP/1.0 client, up to the connection's end)."""
        self._chunked = not length_known and self.http11 and self.method != "HEAD"
        keep = self._keeps_connection() and (length_known or self._chunked)
        self._connection.write(
            b"".join((
                b"HTTP/1.1 %d %s\r\n" % (status, reason if reason is not None else _REASONS.get(status, b"")),
                headers,
                b"Transfer-Encoding: chunked\r\n" if self._chunked else b"",
                b"" if keep else b"Connection: close\r\n",
                b"Connection: keep-alive\r\n\r\n" if keep and not self.http11 else b"\r\n",
            ))
        )
        self.started = True
        self.keep_alive = keep

    async def write(self, chunk: bytes) -> None:
        """Send a piece of a started body, no faster than the client reads; ConnectionResetError
        once the client has gone."""
        if self.method == "HEAD" or not chunk:
            return
        self._connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        await self._connection.drain()

    def end(self) -> None:
        if self._chunked:
            self._connection.write(b"0\r\n\r\n")
        self._finish(self.keep_alive)

    def abort(self) -> None:
        """Give up on a started response: only closing the connection tells the client."""
        self.finished = True
        self._connection.close()

    def fail(self, exc: Exception) -> None:
        """The handler failed while answering from a callback: 500 if nothing was sent yet (the
        client having left is no failure), and the connection closed if the answer was cut."""
        self._connection.failed(self, exc)

    def spawn(self, answer: Awaitable[None]) -> None:
        """Go on answering in a task (for a handler that answered from a callback until it had to
        wait): a failure is answered 500 and an answer left unfinished is aborted, as for an
        awaitable the handler returns."""
        self._connection.run(self, answer)

    def _keeps_connection(self) -> bool:
        return self.keep_alive and (self.body is None or self.body.complete) and not self._connection.server.closing

    def _finish(self, keep: bool) -> None:
        self.finished = True
        self._connection.finished(self, keep)


class _Connection(WriteFlowControl):
    def __init__(self, server: Server) -> None:
        self.server = server
        self._loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.task: asyncio.Task[None] | None = None  # answering the current request
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._parsing: Request | None = None  # whose head or body is arriving
        self._current: Request | None = None  # being answered
        self._waiting: deque[Request] = deque()
        self._paused = False
        self._upgraded = False
        self._closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self.idle_since = asyncio.get_running_loop().time()
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The router does not proxy protocol switches (the Upgrade header is not forwarded):
            # the request is answered as a plain one, and the connection closed after it.
            self._upgraded = True
            self._transport.pause_reading()  # type: ignore[union-attr]
        except httptools.HttpParserCallbackError as exc:
            too_large = isinstance(exc.__context__, HeadTooLarge)
            self._reject(431 if too_large else 400)
        except httptools.HttpParserError:
            self._reject(400)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.forget(self)
        for request in (self._parsing, self._current):
            if request is not None and request.body is not None and not request.body.complete:
                request.body.fail(ConnectionResetError("the client closed the connection"))
        self._release_writers()

    # -- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._head_bytes = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = Request(
            self, parser.get_method().decode(), self._url.decode("latin-1"), self._headers, self._peer,
            parser.get_http_version() == "1.1", parser.should_keep_alive(),
        )
        headers = request.headers
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            request.body = Body(self)
        self._parsing = request
        if self._current is None:
            self._answer(request)
        else:
            self._waiting.append(request)
            self.sync_reading()

    def on_body(self, body: bytes) -> None:
        assert self._parsing is not None and self._parsing.body is not None
        self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.finish()
        self._parsing = None

    # -- for Request and Body ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        await self._wait_writable()
        if self._closed:
            raise ConnectionResetError("the client closed the connection")

    def finished(self, request: Request, keep: bool) -> None:
        if not keep or (self._upgraded and not self._waiting):
            self.close()
            return
        self._current = None
        if self._waiting:
            self._answer(self._waiting.popleft())
            self.sync_reading()
        else:
            self.idle_since = self._loop.time()

    def sync_reading(self) -> None:
        """Read from the client unless a body or waiting requests pile up unread."""
        parsing = self._parsing
        pause = len(self._waiting) >= _MAX_PIPELINED or (
            parsing is not None and parsing.body is not None and parsing.body.buffered > _PAUSE_READING_BYTES
        )
        if pause == self._paused or self._transport is None or self._closed:
            return
        if not pause and parsing is not None and parsing.body is not None and parsing.body.buffered > _RESUME_READING_BYTES:
            return
        self._paused = pause
        if pause:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    @property
    def idle(self) -> bool:
        return self._current is None and self._parsing is None

    @property
    def answered(self) -> bool:
        """No request is being answered."""
        return self._current is None

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    # -- helpers -------------------------------------------------------------------------------------

    def _answer(self, request: Request) -> None:
        self._current = request
        if request.body is not None:
            self.run(request, None)  # after this data is parsed: a small body is then all in
            return
        try:
            answer = self.server.handler(request)
        except Exception as exc:
            self.failed(request, exc)
            return
        if answer is not None:
            self.run(request, answer)

    def run(self, request: Request, answer: Awaitable[None] | None) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(request, answer))

    async def _run(self, request: Request, answer: Awaitable[None] | None) -> None:
        answering_later = False
        try:
            if answer is None:
                answer = self.server.handler(request)
                answering_later = answer is None
            if answer is not None:
                await answer
        except Exception as exc:
            self.failed(request, exc)
        finally:
            if not request.finished and not answering_later:
                request.abort()

    def failed(self, request: Request, exc: Exception) -> None:
        if not isinstance(exc, ConnectionResetError):  # that one: the client left
            log.error("request failed", method=request.method, exc_info=exc)
            if not request.started and not self._closed:
                request.respond(500, None, b"Content-Length: 0\r\n")
        if not request.finished:
            request.abort()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge()

    def _reject(self, status: int) -> None:
        """A request that cannot be parsed: answered (unless another answer is under way) and the
        connection closed."""
        if self._current is None and not self._closed:
            self.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (status, _REASONS[status]))
        self.close()


class Server:
    """Listens on host:port and hands every request to `handler`."""

    def __init__(self, handler: Handler, keepalive_seconds: float) -> None:
        self.handler = handler
        self.connections: set[_Connection] = set()
        self.closing = False
        self._keepalive = keepalive_seconds
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._busy: set[_Connection] = set()  # when closing: the connections answering a request
        self._drained: asyncio.Future[None] | None = None  # set when closing and none is left

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Start listening; the port (the one chosen when `port` is 0). `reuse_port`: share the port
        with the other workers of the router (SO_REUSEPORT: the kernel spreads connections over them)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_port=reuse_port or None)
        self._sweeper = asyncio.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_seconds: float) -> None:
        """Stop listening, let requests under way finish for up to `grace_seconds`, close the rest."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        # A connection answering a request closes after its response (no keep-alive while closing).
        self._busy = {c for c in self.connections if not c.answered}
        if self._busy:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._drained], timeout=grace_seconds)
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        self._busy.discard(connection)
        if self._drained is not None and not self._busy and not self._drained.done():
            self._drained.set_result(None)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._keepalive / 2)
            older = loop.time() - self._keepalive
            for connection in list(self.connections):
                if connection.idle and connection.idle_since < older:
                    connection.close()
