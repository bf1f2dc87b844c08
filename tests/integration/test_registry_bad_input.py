"""Bad input against a running registry (its own process, real uvicorn, SQLite, nats-server): every
case answers a 4xx problem naming the field and the rule, never echoing what was sent, in well under
a second, while /healthz keeps answering. The slowest case and the slowest /healthz are printed."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from libs.natsd import free_port, start_nats_server
from tests.servers.registry import RegistryProcess

MARKER = "zq-echo-marker"  # put into bad input; must never come back
SPEC: dict[str, Any] = {"name": "target", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 2}}
AUTOSCALED: dict[str, Any] = {
    "name": "autoscaled",
    "image": "python:3.11",
    "resources": {
        "ports": [8000],
        "replicas": 2,
        "autoscaling": {"enabled": True, "maxReplicas": 5, "metrics": [{"metric": "cpu", "value": 50}]},
    },
}


@dataclass
class Running:
    registry: RegistryProcess
    client: httpx.Client
    spec_id: str
    timings: dict[str, float] = field(default_factory=dict)
    health_worst: float = 0.0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("bad-input")
    port = free_port()
    nats = start_nats_server(root / "jetstream", port)
    registry = RegistryProcess(root, f"nats://127.0.0.1:{port}")
    try:
        registry.start()
        headers = {"Authorization": f"Bearer {registry.token()}"}
        with httpx.Client(base_url=registry.url, headers=headers, timeout=30) as client:
            created = client.post("/v1/deployments", json=SPEC)
            assert created.status_code == 201, created.text
            assert client.post("/v1/deployments", json=AUTOSCALED).status_code == 201
            state = Running(registry, client, created.json()["spec_id"])
            yield state
            # How quickly: a figure printed here (and bench/), never a timed assertion (the machine may be loaded).
            print(
                f"\nbad input: {len(state.timings)} cases, slowest {max(state.timings.values()):.3f} s "
                f"({max(state.timings, key=lambda k: state.timings[k])}); slowest /healthz meanwhile "
                f"{state.health_worst:.3f} s"
            )
    finally:
        registry.stop()
        nats.terminate()
        nats.wait(10)


class HealthWatch:
    """Polls /healthz on its own connection while a case runs; records failures and the slowest answer."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self.failures: list[str] = []
        self.worst = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                    if status != 200:
                        self.failures.append(f"/healthz answered {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"/healthz: {type(exc).__name__}")
                self.worst = max(self.worst, time.perf_counter() - started)
                self._stop.wait(0.05)


def deep_json(levels: int) -> str:
    return '{"name": "deep", "image": "i", "resources": {"ports": [8000]}, "command": ' + "[" * levels + "]" * levels + "}"


def crafted_cursor(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


YAML = {"Content-Type": "application/yaml"}
TARGET = "/v1/deployments/target"
BILLION_LAUGHS = "name: x\nimage: i\nresources: {ports: [8000]}\ncommand: &a ['lol', 'lol']\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    fields: tuple[str, ...]
    json: Any = None
    content: str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def spec_with(**changes: Any) -> dict[str, Any]:
    return {**SPEC, "name": f"other {MARKER}", **changes}


CASES: dict[str, Case] = {
    # One oversized spec blocked the outbox: now refused at the door.
    "spec of 700,000 ports (2.1 MB)": Case("POST", "/v1/deployments", 413, ("(body)",),
                                           json=spec_with(resources={"ports": [8000] * 700_000})),
    "50 MB YAML body": Case("POST", "/v1/deployments", 413, ("(body)",), content="#" * 50_000_000, headers=YAML),
    "secret value over 1 MB": Case("PUT", "/v1/secrets/big", 413, ("(body)",), json={"value": "x" * 1_100_000}),
    "secret value over 64 Ki characters": Case("PUT", "/v1/secrets/big", 422, ("value",), json={"value": "x" * 70_000}),
    "YAML alias bomb": Case("POST", "/v1/specs/validate", 422, ("(spec)",), content=BILLION_LAUGHS, headers=YAML),
    # 500s from input.
    "secret name ending in '.'": Case("PUT", "/v1/secrets/token.", 422, ("name",), json={"value": "v"}),
    "secret name with an empty word": Case("PUT", "/v1/secrets/a..b", 422, ("name",), json={"value": "v"}),
    "JSON nested 1,000 deep": Case("POST", "/v1/specs/validate", 422, ("(spec)",), content=deep_json(1000),
                                   headers={"Content-Type": "application/json"}),
    "YAML nested 1,000 deep": Case("POST", "/v1/specs/validate", 422, ("(spec)",),
                                   content="command: " + "[" * 1000 + "]" * 1000, headers=YAML),
    "YAML nested 100 deep, block style": Case("POST", "/v1/specs/validate", 422, ("(spec)",), headers=YAML,
                                              content="a:\n" + "".join(" " * n + f"k{n}:\n" for n in range(1, 100))),
    "integer of 5,000 digits in YAML": Case("POST", "/v1/specs/validate", 422, ("(spec)",), headers=YAML,
                                            content="resources: {replicas: " + "1" * 5000 + "}"),
    "integer of 5,000 digits in a JSON spec": Case("POST", "/v1/specs/validate", 422, ("(spec)",),
                                                   content='{"resources": {"replicas": 1' + "0" * 5000 + "}}",
                                                   headers={"Content-Type": "application/json"}),
    "integer of 5,000 digits in /scale": Case("POST", f"{TARGET}/scale", 400, ("(body)",),
                                              content='{"replicas": 1' + "0" * 5000 + "}",
                                              headers={"Content-Type": "application/json"}),
    "logs cursor with an infinite count": Case("GET", f"{TARGET}/logs", 422, ("since",),
                                               params={"since": crafted_cursor({"r": [1e999, "x"]})}),
    "logs cursor nested 5,000 deep": Case("GET", f"{TARGET}/logs", 422, ("since",),
                                          params={"since": crafted_cursor(json.loads("[" * 900 + "]" * 900))}),
    "logs cursor that is not one": Case("GET", f"{TARGET}/logs", 422, ("since",), params={"since": MARKER}),
    "logs cursor of 20,000 characters": Case("GET", f"{TARGET}/logs", 422, ("since",), params={"since": "A" * 20_000}),
    "metrics window that is not a duration": Case("GET", f"{TARGET}/metrics", 422, ("window",), params={"window": MARKER}),
    "metrics step that is not a duration": Case("GET", f"{TARGET}/metrics", 422, ("step",), params={"step": "-5m"}),
    "metrics version 0": Case("GET", f"{TARGET}/metrics", 422, ("version",), params={"version": 0}),
    "logs since_time that is no time": Case("GET", f"{TARGET}/logs", 422, ("since_time",), params={"since_time": MARKER}),
    "logs until of 10,000 characters": Case("GET", f"{TARGET}/logs", 422, ("until",), params={"until": "9" * 10_000}),
    "logs since_time before year 1": Case("GET", f"{TARGET}/logs", 422, ("since_time",), params={"since_time": "999999d"}),
    "logs grep of 10,000 characters": Case("GET", f"{TARGET}/logs", 422, ("grep",), params={"grep": MARKER * 500}),
    # Slow input.
    "8,000 repeated env names": Case("POST", "/v1/specs/validate", 422, ("env[4000].name",), headers=YAML,
                                      content=yaml.safe_dump({**SPEC, "env": [{"name": f"E{n % 4000}"} for n in range(8_000)]},
                                                             default_flow_style=True, width=10**9)),
    # Accepted but wrong.
    "scale to false": Case("POST", f"{TARGET}/scale", 422, ("replicas",), json={"replicas": False}),
    "scale to a string": Case("POST", f"{TARGET}/scale", 422, ("replicas",), json={"replicas": "3"}),
    "scale below the autoscaling minimum": Case("POST", "/v1/deployments/autoscaled/scale", 422, ("replicas",),
                                                json={"replicas": 0}),
    "rollback to version true": Case("POST", f"{TARGET}/rollback", 422, ("spec_version",), json={"spec_version": True}),
    "cpu .inf": Case("POST", "/v1/specs/validate", 422, ("resources.cpu",), headers=YAML,
                     content="name: n\nimage: i\nresources: {ports: [1], cpu: .inf}\n"),
    "memory .nan": Case("POST", "/v1/specs/validate", 422, ("resources.memory",), headers=YAML,
                        content="name: n\nimage: i\nresources: {ports: [1], memory: .nan}\n"),
    "autoscaling target .inf": Case("POST", "/v1/specs/validate", 422, ("resources.autoscaling.metrics[0].value",),
                                    headers=YAML, content="name: n\nimage: i\nresources: {ports: [1], autoscaling: "
                                    "{maxReplicas: 2, metrics: [{metric: requestDuration, value: .inf}]}}\n"),
    "integration names and paths repeated": Case(
        "POST", "/v1/specs/validate", 422, ("integrations[1].name", "integrations[1].path"),
        json=spec_with(integrations=[{"type": "git-lfs", "name": "m", "path": "/m", "url": "https://h/x"}] * 2)),
    "name with a bidi override": Case("POST", "/v1/deployments", 422, ("name",), json=spec_with(name="ab\u202ecd")),
    "name with a zero-width space": Case("POST", "/v1/deployments", 422, ("name",), json=spec_with(name="tar\u200bget")),
    # Errors that echoed input.
    "unknown integration type": Case("POST", "/v1/specs/validate", 422, ("integrations[0]",),
                                     json=spec_with(integrations=[{"type": MARKER, "name": "a", "path": "/a"}])),
    "git password given as a literal token": Case(
        "POST", "/v1/deployments", 422, ("integrations[0].password",), json=spec_with(integrations=[
            {"type": "git-lfs", "name": "a", "path": "/a", "url": "https://h/x", "password": f"hf_{MARKER}"}])),
    "git password over ssh": Case(
        "POST", "/v1/specs/validate", 422, ("integrations[0].password",), json=spec_with(integrations=[
            {"type": "git-lfs", "name": "a", "path": "/a", "url": "ssh://h/x", "password": f"secret:{MARKER}"}])),
    "unknown content type": Case("POST", "/v1/deployments", 415, ("Content-Type",), content="x",
                                 headers={"Content-Type": f"text/{MARKER}"}),
    "unknown deployment": Case("GET", f"/v1/deployments/{MARKER}", 404, ("ref",)),
    "unknown secret": Case("DELETE", f"/v1/secrets/{MARKER}", 404, ("name",)),
    "malformed JSON body": Case("POST", f"{TARGET}/scale", 400, ("(body)",), content=f'{{"replicas": {MARKER}',
                                headers={"Content-Type": "application/json"}),
    "body that is not UTF-8": Case("POST", f"{TARGET}/scale", 400, ("(body)",), content=b'{"replicas": "\xff"}',
                                   headers={"Content-Type": "application/json"}),
    "update without If-Match": Case("PUT", TARGET, 428, ("If-Match",), json=SPEC),
    "method not allowed": Case("PATCH", TARGET, 405, ("(method)",)),
    "no such route": Case("GET", f"/v1/{MARKER}", 404, ("(path)",)),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_a_4xx_naming_the_field(running: Running, case: Case, request: pytest.FixtureRequest) -> None:
    with HealthWatch(running.registry.url) as health:
        started = time.perf_counter()
        response = running.client.request(
            case.method, case.path, json=case.json, content=case.content, headers=case.headers, params=case.params
        )
        elapsed = time.perf_counter() - started
    running.timings[request.node.callspec.id] = elapsed
    running.health_worst = max(running.health_worst, health.worst)

    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert set(case.fields) <= {e["field"] for e in problem["errors"]}, problem
    assert all(e["rule"] for e in problem["errors"])
    assert MARKER not in response.text
    assert health.failures == []
    if case.status == 405:
        assert set(response.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}


def test_accepted_as_meant(running: Running) -> None:
    """Numbers in free-text fields are text; names in any script get slugs of their own."""
    machine = running.client.post("/v1/specs/validate", content="name: m\nimage: i\nresources: {ports: [1], machineType: 12}\n",
                                  headers=YAML)
    assert machine.status_code == 200, machine.text
    slugs = []
    for name in ("Модель", "模型", "نموذج", "🚀"):
        created = running.client.post("/v1/deployments", json={**SPEC, "name": name})
        assert created.status_code == 201, created.text
        slugs.append(created.json()["slug"])
    assert len(set(slugs)) == 4 and slugs[:2] == ["model", "mo-xing"]


def test_the_connection_is_kept_after_a_4xx(running: Running, tmp_path: Path) -> None:
    """A keep-alive connection survives bad input: the next request goes on the same connection."""
    peers: list[object] = []
    with httpx.Client(base_url=running.registry.url, headers=running.client.headers) as client:
        for _ in range(3):
            response = client.post(f"{TARGET}/scale", content="{", headers={"Content-Type": "application/json"})
            assert response.status_code == 400 and "close" not in response.headers.get("connection", "")
            stream = response.extensions["network_stream"]
            peers.append(stream.get_extra_info("client_addr"))
    assert len(set(peers)) == 1, f"reconnected: {peers}"
