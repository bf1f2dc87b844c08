"""The permission table and the nats-server config built from it (the integration tests in
tests/integration/test_bus_auth.py hold a real server to it)."""

from __future__ import annotations

from pathlib import Path

from libs.busauth import PERMISSIONS, nats_permissions, render_config

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_nats_config_is_the_one_the_table_gives() -> None:
    assert (REPO / "nats-auth.conf").read_text() == render_config(), (
        "nats-auth.conf is stale: run `python -m libs.busauth > nats-auth.conf`"
    )


def test_only_the_registry_writes_specs_secrets_and_streams() -> None:
    for service in PERMISSIONS:
        allowed = nats_permissions(service)["publish"]["allow"]
        writes = {
            "specs": "berth.spec.v1.>" in allowed,
            "secrets": any(s.startswith("$KV.") for s in allowed),
            "streams": any(".STREAM.CREATE." in s or ".STREAM.UPDATE." in s for s in allowed),
        }
        assert writes == dict.fromkeys(writes, service == "spec-registry"), service
