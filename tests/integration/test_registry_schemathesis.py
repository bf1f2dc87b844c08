"""Generated requests over the whole OpenAPI document (schemathesis) against a running registry (its
own process, SQLite, nats-server): no answer is a 5xx, and every 4xx is a problem naming a field.

Bounded and reproducible: a fixed number of examples per operation, derandomized (a fixed seed).
The number of requests and of 5xx answers is printed for the record."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from libs.natsd import free_port, start_nats_server
from tests.servers.registry import RegistryProcess

EXAMPLES_PER_OPERATION = 50  # about 1,000 requests, some 30 s on 2 cores
PROBLEM_JSON = "application/problem+json"
SPEC = {"name": "target", "image": "python:3.11", "resources": {"ports": [8000]}}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    port = free_port()
    nats = start_nats_server(tmp_path / "jetstream", port)
    process = RegistryProcess(tmp_path, f"nats://127.0.0.1:{port}")
    try:
        process.start()
        yield process
    finally:
        process.stop()
        nats.terminate()
        nats.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_generated_request_gets_a_5xx_and_every_4xx_names_a_field(registry: RegistryProcess) -> None:
    auth = {"Authorization": f"Bearer {registry.token()}"}
    with httpx.Client(base_url=registry.url, headers=auth) as client:
        # Something for the generated `ref`s to find now and then (`target` is a short string).
        assert client.post("/v1/deployments", json=SPEC).status_code == 201
        document = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/deployments/events":
            continue  # a stream that stays open (tests/integration/test_registry_events.py)

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            response = case.call(base_url=registry.url, headers=auth, timeout=10)
            statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                # schemathesis keeps every value of a header: a list
                problem = response.json() if response.headers.get("content-type") == [PROBLEM_JSON] else {}
                if not [e for e in problem.get("errors", []) if e.get("field") and e.get("rule")]:
                    failures.append(f"{where}: {response.status_code} without a field: {response.text[:200]}")

        exercise()

    total = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nschemathesis: {total} requests in {time.monotonic() - started:.0f} s, {server_errors} 5xx; "
        f"by status {dict(sorted(statuses.items()))}"
    )
    assert failures == []
