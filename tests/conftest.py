"""Shared fixtures: a nats-server of the test's own on a free port, and settings pointing at it."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.bus import ensure_streams
from libs.config import Settings
from libs.natsd import free_port, start_nats_server
from tests.servers.switchable import Switch, SwitchableServer

# Secret values are sealed (libs/sealing.py): the services and the tests that write secrets share a key.
# Tests of `berth up` drop BERTH_* variables and so exercise the key file it makes.
os.environ.setdefault("BERTH_SECRETS_KEY", "m6Vd0S3HbIYqK0c1vJx1zPpYtBfQm3cFQ9y2n8rL0Ws=")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Shortly before pytest-timeout ends a stuck test, print where every asyncio task waits: its
    thread dump shows only the event loop in select(), not the coroutine that does not finish."""
    timeout = float(item.config.getini("timeout") or 0)
    watchdog = threading.Timer(max(timeout - 10, 1), _print_asyncio_tasks) if timeout else None
    if watchdog is not None:
        watchdog.daemon = True
        watchdog.start()
    yield
    if watchdog is not None:
        watchdog.cancel()


def _print_asyncio_tasks() -> None:
    tasks = [task for task in gc.get_objects() if isinstance(task, asyncio.Task) and not task.done()]
    print(f"\n--- {len(tasks)} asyncio tasks still running ---", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)


def processes_under(directory: Path) -> list[psutil.Process]:
    """Processes whose command line names `directory` (replica shims, services started by a test)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(directory) in arg for arg in process.info["cmdline"] or []):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """Every test cleans up what it started: a replica left running is a leak users would see too.
    Leftovers are killed (so one failure does not pile up processes on the machine) and fail the test."""
    yield
    left = [p for p in processes_under(tmp_path) if p.pid != os.getpid()]
    for process in left:
        try:
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
        except psutil.Error:
            continue
    if left:
        names = [" ".join(p.info["cmdline"] or [])[:160] for p in left]
        pytest.fail(f"{len(left)} process(es) left running after the test: {names}")


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_nats_server(tmp_path / "jetstream", port)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    await ensure_streams(client.jetstream())
    yield client
    await client.drain()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def settings(tmp_path: Path, nats_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "berth",
        nats_url=nats_url,
        api_port=free_port(),
        router_port=free_port(),
        log_json=True,
        _env_file=None,
    )


def postgres_url() -> str | None:
    """A PostgreSQL URL when one is reachable (BERTH_TEST_POSTGRES_URL, or the local server)."""
    url = os.environ.get("BERTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), connect_timeout=2):
            return url
    except Exception:
        return None


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or (indirect parameter "postgres") a fresh PostgreSQL database dropped after
    the test; skipped when no PostgreSQL is reachable."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'registry.db'}"
        return
    server = postgres_url()
    if server is None:
        pytest.skip("no PostgreSQL reachable")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"berth_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(server).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


StartSwitchable = Callable[..., Awaitable[SwitchableServer]]


@pytest.fixture
async def switchable() -> AsyncIterator[StartSwitchable]:
    """Start test replicas whose health the test switches (tests/servers/switchable.py); all are
    stopped after the test. `wait=False` returns before the server listens."""
    servers: list[SwitchableServer] = []

    async def start(port: int | None = None, wait: bool = True, **initial: Switch) -> SwitchableServer:
        server = SwitchableServer(port or free_port(), **initial)
        servers.append(server)
        if wait:
            await server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def server(switchable: StartSwitchable) -> SwitchableServer:
    """One switchable replica, every probe answering 200."""
    return await switchable()
