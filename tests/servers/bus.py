"""A nats-server with berth's users, set up as `berth up` sets it up (each service its own user,
the streams made by the spec-registry), for the tests of one service against the permissions it has
in production. The passwords live in `<directory>/nats`; a service's settings keep their data dir in
`<directory>/berth`, so the helpers below find the passwords from those settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from faststream.nats import NatsUserPassword

from berth.prepare import set_up_bus
from libs.bus import make_broker, publish
from libs.config import Settings
from libs.events import Event
from libs.natsd import free_port, service_passwords, start_nats_server
from libs.sealing import Sealer


@asynccontextmanager
async def authenticated_bus(directory: Path, sealer: Sealer | None = None) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The server's URL and every service's password, while it runs."""
    port = free_port()
    process = start_nats_server(directory / "jetstream", port, auth_dir=directory / "nats")
    url = f"nats://127.0.0.1:{port}"
    try:
        passwords = service_passwords(directory / "nats")
        await set_up_bus(url, NatsUserPassword("spec-registry", passwords["spec-registry"]), sealer)
        yield url, passwords
    finally:
        process.terminate()
        process.wait(10)


def user(settings: Settings, service: str) -> NatsUserPassword:
    """`service`'s credentials on the bus of a service's `settings`."""
    return NatsUserPassword(service, service_passwords(settings.data_dir.parent / "nats")[service])


async def publish_as(settings: Settings, service: str, *events: Event) -> None:
    """Publish `events` as `service` would, under its permissions."""
    broker = make_broker(settings.resolved_nats_url, service, user(settings, service))
    await broker.connect()
    try:
        for event in events:
            await publish(broker, event)
    finally:
        await broker.stop()
