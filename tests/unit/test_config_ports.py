"""`berth up` runs every service on one host: their default ports must not collide."""

from __future__ import annotations

from libs.config import Settings


def test_default_ports_are_distinct() -> None:
    settings = Settings(_env_file=None)
    ports = {name: value for name, value in settings.model_dump().items() if name.endswith("_port")}
    assert len(set(ports.values())) == len(ports), ports
