"""compose.yaml validates against the Compose specification (compose-spec: bindings of the Rust
compose_spec parser, strict about unknown keys and value formats). YAML merge keys (`<<`) are resolved
first, as Docker Compose does; the parser itself does not take them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

SERVICES = {"spec-registry": "8080/healthz", "scheduler": "8091/healthz", "health-monitor": "8092/healthz",
            "router": "8000/_berth/healthz", "autoscaler": "8093/healthz",
            "integrations": "8093/healthz", "alerting": "8096/healthz"}


def test_compose_file_is_valid_and_every_service_has_a_health_check() -> None:
    document = yaml.safe_load(Path("compose.yaml").read_text())
    compose = PyCompose.from_yaml(yaml.safe_dump(document))
    assert set(SERVICES) | {"nats", "postgres"} <= set(compose.service_names())
    services = document["services"]
    for name, endpoint in SERVICES.items():
        assert endpoint in " ".join(services[name]["healthcheck"]["test"]), name
        assert services[name]["depends_on"]["nats"] == {"condition": "service_healthy"}
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_the_validator_rejects_what_compose_would() -> None:
    # The check above can fail: a misspelt key or a malformed duration is an error.
    for bad in ("services: {a: {image: x, helthcheck: {}}}", "services: {a: {image: x, healthcheck: {interval: ten}}}"):
        with pytest.raises(ValueError):
            PyCompose.from_yaml(bad)
