"""The router's HTTP/1.1 server on loopback, spoken to in raw bytes: keep-alive, pipelining,
request bodies, streamed and bodiless answers, bad requests and a graceful close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import uvloop

from services.router.server import MAX_HEAD_BYTES, Request, Server
from tests.helpers import eventually


async def handler(request: Request, release: asyncio.Event) -> None:
    """Answers the method, target and body it got; /stream streams three pieces, /boom fails and
    /slow waits for `release`."""
    path = request.target.partition("?")[0]
    if path == "/stream":
        request.start(200, None, b"Content-Type: text/plain\r\n", length_known=False)
        for piece in (b"one ", b"two ", b"three"):
            await request.write(piece)
        request.end()
        return
    if path == "/boom":
        raise RuntimeError("a bug in the handler")
    if path == "/slow":
        await release.wait()
    body = await request.body.read() if request.body is not None else b""
    answer = b"%s %s %d:" % (request.method.encode(), request.target.encode(), len(body)) + body[-8:]
    request.respond(200, None, b"Content-Length: %d\r\n" % len(answer), answer)


@dataclass
class Serving:
    server: Server
    port: int
    release: asyncio.Event  # lets /slow answer


@asynccontextmanager
async def serving() -> AsyncIterator[Serving]:
    release = asyncio.Event()
    server = Server(lambda request: handler(request, release), keepalive_seconds=30.0)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Serving(server, port, release)
    finally:
        release.set()
        await server.close(1.0)


@pytest.fixture
async def server() -> AsyncIterator[Serving]:
    async with serving() as running:
        yield running


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Status line, headers (lower-cased names) and body of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, *lines = head[:-4].split(b"\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.read()
    return status, headers, body


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_requests_on_a_kept_alive_connection_and_pipelined_ones_are_answered_in_order(
    server: Serving,
) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader))[2] == b"GET /a?x=1 0:"
    writer.write(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\nPOST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert (await read_response(reader))[2] == b"GET /b 0:"
    assert (await read_response(reader))[2] == b"POST /c 3:abc"
    writer.close()


async def test_request_bodies_of_every_framing_are_read(server: Serving) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert (await read_response(reader))[2] == b"POST /e 7:abcdefg"
    big = 3 * 1024 * 1024  # beyond what is buffered before reading the client pauses
    writer.write(b"PUT /e HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % big)
    for _ in range(big // 65536):
        writer.write(b"z" * 65536)
        await writer.drain()
    assert (await read_response(reader))[2] == b"PUT /e %d:zzzzzzzz" % big
    writer.close()


async def test_http10_clients_get_the_connection_they_ask_for(server: Serving) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    _, headers, _ = await read_response(reader)
    assert headers[b"connection"] == b"keep-alive"
    writer.write(b"GET /stream HTTP/1.0\r\n\r\n")  # no chunked encoding for 1.0: the body ends with the connection
    _, headers, body = await read_response(reader)
    assert b"transfer-encoding" not in headers and headers[b"connection"] == b"close" and body == b"one two three"
    writer.close()


async def test_a_streamed_answer_is_chunked_and_head_gets_no_body(server: Serving) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
    _, headers, body = await read_response(reader)
    assert headers[b"transfer-encoding"] == b"chunked" and body == b"one two three"
    writer.write(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 10\r\n" in head  # the length a GET would have had ("HEAD /x 0:"), and no body
    assert (await read_response(reader))[2] == b"GET /y 0:"
    writer.close()


async def test_client_closing_asks_for_close(server: Serving) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    _, headers, body = await read_response(reader)
    assert headers[b"connection"] == b"close" and body == b"GET /c 0:"
    assert await reader.read() == b""
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", b"431"),
    ],
)
async def test_a_bad_request_is_refused_and_the_connection_closed(
    server: Serving, request_bytes: bytes, status: bytes
) -> None:
    reader, writer = await connect(server.port)
    writer.write(request_bytes)
    response = await reader.read()
    assert response.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in response
    writer.close()


async def test_a_failing_handler_answers_500_and_the_server_keeps_serving(server: Serving) -> None:
    reader, writer = await connect(server.port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader))[0].startswith(b"HTTP/1.1 500")
    writer.write(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader))[2] == b"GET /after 0:"
    writer.close()


async def test_close_lets_a_request_under_way_finish_and_closes_idle_connections(
    server: Serving
) -> None:
    instance, port = server.server, server.port
    idle_reader, idle_writer = await connect(port)
    idle_writer.write(b"GET /i HTTP/1.1\r\nHost: h\r\n\r\n")
    await read_response(idle_reader)
    busy_reader, busy_writer = await connect(port)
    busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
    await eventually(lambda: any(not connection.idle for connection in instance.connections))
    closing = asyncio.create_task(instance.close(5.0))
    assert await idle_reader.read() == b""  # the idle connection is closed at once
    server.release.set()
    _, headers, body = await read_response(busy_reader)
    assert body == b"GET /slow 0:" and headers[b"connection"] == b"close"
    await closing
    with pytest.raises(OSError):
        await connect(port)
    idle_writer.close()
    busy_writer.close()


@pytest.mark.parametrize(
    "scenario",
    [
        test_requests_on_a_kept_alive_connection_and_pipelined_ones_are_answered_in_order,
        test_request_bodies_of_every_framing_are_read,
        test_a_streamed_answer_is_chunked_and_head_gets_no_body,
        test_close_lets_a_request_under_way_finish_and_closes_idle_connections,
    ],
)
def test_the_same_on_uvloop(scenario: Callable[[Serving], Awaitable[None]]) -> None:
    """The router process runs on uvloop, whose transports differ from asyncio's in details."""

    async def run() -> None:
        async with serving() as running:
            await scenario(running)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
