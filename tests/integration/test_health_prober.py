"""One probe against a real replica server: what counts as success, timeouts, refused connections."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from libs.natsd import free_port
from services.health_monitor.prober import http_probe, tcp_probe
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
    result = await http_probe(session, "readiness", f"{server.url}/readiness", {}, timeout_seconds=1)
    expected_status = {"ok": 200, "fail": 503}.get(str(switch), switch)
    assert (result.ok, result.status_code) == (ok, expected_status)
    assert result.error == (None if ok else f"HTTP {expected_status}")


async def test_headers_are_sent(server: SwitchableServer, session: aiohttp.ClientSession) -> None:
    await http_probe(session, "liveness", f"{server.url}/liveness", {"X-Probe": "berth"}, timeout_seconds=1)
    assert (await server.state())["headers"]["/liveness"]["X-Probe"] == "berth"


async def test_a_hanging_replica_fails_after_the_timeout(
    server: SwitchableServer, session: aiohttp.ClientSession
) -> None:
    await server.switch(liveness="hang")
    began = time.monotonic()
    result = await http_probe(session, "liveness", f"{server.url}/liveness", {}, timeout_seconds=1)
    assert not result.ok and result.error == "timed out after 1s"
    assert 0.9 <= time.monotonic() - began < 2.0


async def test_a_refused_connection_is_a_failure(session: aiohttp.ClientSession) -> None:
    closed = f"http://127.0.0.1:{free_port()}/readiness"
    result = await http_probe(session, "readiness", closed, {}, timeout_seconds=1)
    assert not result.ok and result.status_code is None and result.error
    tcp = await tcp_probe("127.0.0.1", free_port(), timeout_seconds=1)
    assert not tcp.ok and tcp.probe == "tcp"


async def test_tcp_probe_succeeds_once_the_port_accepts(server: SwitchableServer) -> None:
    assert (await tcp_probe("127.0.0.1", server.port, timeout_seconds=1)).ok
