"""The spec-registry's REST API against a real SQLite file (and PostgreSQL when reachable) and a real
nats-server: what a CLI or an API gateway sees."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.bus import LOGS_RPC, METRICS_RPC, SECRETS_BUCKET, all_events
from libs.config import Settings
from libs.logcursor import encode_cursor
from libs.events import (
    DeploymentMetricsSummarized,
    MetricsSummary,
    DeploymentAliasSet,
    DeploymentDeleted,
    DeploymentPromoted,
    DeploymentScaled,
    DeploymentStatusChanged,
    Event,
    IntegrationsRetryRequested,
    ReplicaStatus,
    SpecApplied,
    decode_event,
)
from services.spec_registry.app import create_app
from tests.conftest import SQL_BACKENDS
from tests.helpers import eventually

SPEC: dict[str, Any] = {
    "name": "my cool deployment",
    "image": "python:3.11",
    "environment": "staging",
    "resources": {"ports": [8000], "replicas": 2},
}
BOTH_DATABASES = pytest.mark.parametrize(
    "database_url", SQL_BACKENDS, indirect=True
)


def spec(**changes: Any) -> dict[str, Any]:
    return {**SPEC, **changes}


@dataclass
class Registry:
    app: FastAPI
    settings: Settings
    admin: httpx.AsyncClient

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(self.app),
            base_url="http://registry",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def project_client(self, project: str) -> httpx.AsyncClient:
        response = await self.admin.post("/v1/projects", json={"name": project})
        assert response.status_code == 201, response.text
        return self.client(response.json()["token"])


@pytest.fixture
async def registry(settings: Settings, database_url: str, nc: Client) -> AsyncIterator[Registry]:
    settings = settings.model_copy(update={"database_url": database_url})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = settings.token_file.read_text().strip()
        registry = Registry(app, settings, httpx.AsyncClient())
        async with registry.client(token) as admin:
            registry.admin = admin
            yield registry


@pytest.fixture
def api(registry: Registry) -> httpx.AsyncClient:
    return registry.admin


async def create(api: httpx.AsyncClient, document: dict[str, Any]) -> dict[str, Any]:
    response = await api.post("/v1/deployments", json=document)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def put(api: httpx.AsyncClient, ref: str, document: dict[str, Any], spec_id: str | None) -> httpx.Response:
    headers = {"If-Match": f'"{spec_id}"'} if spec_id else {}
    return await api.put(f"/v1/deployments/{ref}", json=document, headers=headers)


async def snapshot(api: httpx.AsyncClient, ref: str) -> tuple[Any, Any]:
    """What a user can see of the project: the list and the deployment's history."""
    listing = (await api.get("/v1/deployments")).json()
    history = (await api.get(f"/v1/deployments/{ref}/history")).json()
    return listing, history


# -- the core suite, on SQLite and PostgreSQL ------------------------------------------------------


@BOTH_DATABASES
async def test_create_get_and_list_by_environment(api: httpx.AsyncClient, registry: Registry) -> None:
    created = await create(api, spec())
    await create(api, spec(name="bert-api-v1", environment="production"))

    assert created["slug"] == "my-cool-deployment"
    assert created["project"] == "default" and created["spec_version"] == 1
    assert created["spec"] == spec()  # as submitted: no defaults filled in
    port = registry.settings.router_port
    assert created["endpoint"] == f"http://127.0.0.1:{port}/default/my-cool-deployment/"
    assert created["status"]["phase"] == "Pending"
    for ref in (created["deployment_id"], "my-cool-deployment"):
        got = await api.get(f"/v1/deployments/{ref}")
        assert got.status_code == 200 and got.json() == created
        assert got.headers["etag"] == f'"{created["spec_id"]}"'

    everything = (await api.get("/v1/deployments")).json()["items"]
    staging = (await api.get("/v1/deployments", params={"environment": "staging"})).json()["items"]
    assert [d["name"] for d in everything] == ["bert-api-v1", "my cool deployment"]
    assert [d["name"] for d in staging] == ["my cool deployment"]


@BOTH_DATABASES
async def test_update_needs_the_current_spec_id_in_if_match(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())

    missing = await put(api, "my-cool-deployment", spec(image="python:3.12"), None)
    assert missing.status_code == 428
    assert missing.headers["content-type"] == "application/problem+json"

    updated = await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])
    assert updated.status_code == 200, updated.text
    assert updated.json()["spec_version"] == 2 and updated.json()["spec_id"] != created["spec_id"]
    assert updated.json()["spec"]["image"] == "python:3.12"

    stale = await put(api, "my-cool-deployment", spec(image="python:3.13"), created["spec_id"])
    assert stale.status_code == 409
    assert stale.json()["status"] == 409 and updated.json()["spec_id"] in stale.json()["detail"]
    assert (await api.get("/v1/deployments/my-cool-deployment")).json()["spec"]["image"] == "python:3.12"


@BOTH_DATABASES
async def test_history_keeps_every_version_newest_first(api: httpx.AsyncClient) -> None:
    first = await create(api, spec())
    second = (await put(api, first["deployment_id"], spec(image="python:3.12"), first["spec_id"])).json()

    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]

    assert [(v["spec_version"], v["spec_id"]) for v in history] == [(2, second["spec_id"]), (1, first["spec_id"])]
    assert history[0]["spec"]["image"] == "python:3.12" and history[1]["spec"]["image"] == "python:3.11"


async def pages(api: httpx.AsyncClient, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a list, following `next`."""
    found, after = [], None
    while True:
        response = await api.get(path, params=params | ({"after": after} if after else {}))
        assert response.status_code == 200, response.text
        found.append(response.json()["items"])
        if (after := response.json()["next"]) is None:
            return found


@BOTH_DATABASES
async def test_lists_and_history_come_in_pages_that_survive_changes_between_calls(api: httpx.AsyncClient) -> None:
    for name in ("e", "b", "d", "a", "c"):
        await create(api, spec(name=name, environment="production" if name in "bcd" else "staging"))

    assert [[d["name"] for d in page] for page in await pages(api, "/v1/deployments", limit=2)] == [
        ["a", "b"], ["c", "d"], ["e"],
    ]
    production = await pages(api, "/v1/deployments", limit=2, environment="production")
    assert [[d["name"] for d in page] for page in production] == [["b", "c"], ["d"]]

    # A deployment created, and one deleted, between two calls: the next page neither repeats nor skips.
    first = (await api.get("/v1/deployments", params={"limit": 2})).json()
    await create(api, spec(name="aa"))
    assert (await api.delete("/v1/deployments/c")).status_code == 204
    rest = (await api.get("/v1/deployments", params={"limit": 10, "after": first["next"]})).json()
    assert [d["name"] for d in first["items"] + rest["items"]] == ["a", "b", "d", "e"] and rest["next"] is None

    deployment = await create(api, spec())
    spec_id = deployment["spec_id"]
    for replicas in (3, 4, 5, 6):
        spec_id = (await put(api, "my-cool-deployment", spec(resources={"ports": [8000], "replicas": replicas}), spec_id)).json()["spec_id"]
    history = await pages(api, "/v1/deployments/my-cool-deployment/history", limit=2)
    assert [[v["spec_version"] for v in page] for page in history] == [[5, 4], [3, 2], [1]]


async def test_a_bad_page_request_names_the_parameter(api: httpx.AsyncClient) -> None:
    await create(api, spec())
    for path in ("/v1/deployments", "/v1/deployments/my-cool-deployment/history"):
        for params, field in (({"after": "not-a-cursor"}, "after"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit")):
            response = await api.get(path, params=params)
            assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
            assert [e["field"] for e in response.json()["errors"]] == [field], (path, params)
    await create(api, spec(name="other"))
    list_cursor = (await api.get("/v1/deployments", params={"limit": 1})).json()["next"]
    response = await api.get("/v1/deployments/my-cool-deployment/history", params={"after": list_cursor})
    assert response.status_code == 422, "a cursor of the list (after a name) is not one of a history (a version)"


@BOTH_DATABASES
async def test_stop_start_and_rollback_are_new_versions(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])
    stopped = (await api.post("/v1/deployments/my-cool-deployment/stop")).json()
    started = (await api.post("/v1/deployments/my-cool-deployment/start")).json()
    rolled = await api.post("/v1/deployments/my-cool-deployment/rollback", json={"spec_version": 1})

    assert rolled.status_code == 200, rolled.text
    assert (stopped["spec_version"], stopped["spec"]["enabled"], stopped["status"]["desired_replicas"]) == (3, False, 0)
    assert stopped["status"]["desired_source"] == "stopped"
    assert (started["spec_version"], started["spec"]["enabled"]) == (4, True)
    assert rolled.json()["spec_version"] == 5 and rolled.json()["spec"] == spec()
    assert not any(answer["unchanged"] for answer in (stopped, started, rolled.json()))
    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    assert len({v["spec_id"] for v in history}) == 5

    unknown = await api.post("/v1/deployments/my-cool-deployment/rollback", json={"spec_version": 9})
    assert unknown.status_code == 404
    typo = await api.post("/v1/deployments/my-cool-deployment/scale", json={"replica": 3})
    assert (
        typo.status_code == 422
        and {"field": "replica", "rule": "unknown field (not part of the spec; check its spelling)"}
        in typo.json()["errors"]
    )


def replicas(count: int, **resources: Any) -> dict[str, Any]:
    return spec(resources={"ports": [8000], "replicas": count, **resources})


@BOTH_DATABASES
async def test_scale_is_a_decision_not_a_version_and_holds_until_the_spec_sets_another_count(
    api: httpx.AsyncClient,
) -> None:
    created = await create(api, spec())
    assert created["scale"] is None and created["status"]["desired_source"] == "spec"

    scaled = await api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 5})
    assert scaled.status_code == 200, scaled.text
    body = scaled.json()
    assert (body["spec_version"], body["spec_id"], body["spec"]) == (1, created["spec_id"], spec())
    assert body["scale"]["replicas"] == 5 and (body["scale"]["spec_version"], body["scale"]["spec_replicas"]) == (1, 2)
    assert (body["status"]["desired_replicas"], body["status"]["desired_source"]) == (5, "user")
    assert body["unchanged"] is False
    got = (await api.get("/v1/deployments/my-cool-deployment")).json()
    status = (await api.get("/v1/deployments/my-cool-deployment/status")).json()
    assert got["scale"] == body["scale"] and (status["desired_replicas"], status["desired_source"]) == (5, "user")
    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    assert [v["spec_version"] for v in history] == [1], "a scale adds no history entry"

    # A spec version that keeps resources.replicas keeps the decision ...
    kept = (await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])).json()
    assert (kept["spec_version"], kept["status"]["desired_replicas"], kept["scale"]["replicas"]) == (2, 5, 5)
    # ... one that sets another count supersedes it.
    superseded = (await put(api, "my-cool-deployment", replicas(3), kept["spec_id"])).json()
    assert superseded["scale"] is None
    assert (superseded["status"]["desired_replicas"], superseded["status"]["desired_source"]) == (3, "spec")
    # Back to the count the old decision was made against: the spec's count, not the old decision.
    back = (await put(api, "my-cool-deployment", replicas(2), superseded["spec_id"])).json()
    assert (back["scale"], back["status"]["desired_replicas"]) == (None, 2)


@BOTH_DATABASES
async def test_writes_that_change_nothing_answer_unchanged(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    scaled = (await api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 4})).json()
    before = await snapshot(api, "my-cool-deployment")
    # The same spec written another way: keys reordered, defaults spelled out, sent as YAML.
    same = {"resources": {"replicas": 2, "ports": [8000]}, "enabled": True, "apiVersion": "v1", **spec()}
    answers = [
        await put(api, "my-cool-deployment", same, created["spec_id"]),
        await api.put(
            "/v1/deployments/my-cool-deployment",
            content=yaml.safe_dump(spec()),
            headers={"Content-Type": "application/yaml", "If-Match": f'"{created["spec_id"]}"'},
        ),
        await api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 4}),
        await api.post("/v1/deployments/my-cool-deployment/rollback", json={"spec_version": 1}),
        await api.post("/v1/deployments/my-cool-deployment/start"),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["unchanged"], body["spec_version"], body["spec_id"]) == (True, 1, created["spec_id"])
        assert body["spec"] == spec() and body["scale"] == scaled["scale"]
        assert answer.headers["etag"] == f'"{created["spec_id"]}"'
    assert await snapshot(api, "my-cool-deployment") == before


@BOTH_DATABASES
async def test_history_shows_which_versions_share_a_revision(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    spec_id = (await put(api, "my-cool-deployment", replicas(4), created["spec_id"])).json()["spec_id"]
    spec_id = (await put(api, "my-cool-deployment", replicas(4, machineType="A100-80G"), spec_id)).json()["spec_id"]
    current = (await put(api, "my-cool-deployment", replicas(1, machineType="A100-80G"), spec_id)).json()

    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    v4, v3, v2, v1 = (v["revision_id"] for v in history)
    assert v1 == v2 and v3 == v4 and v2 != v3  # a replica count is no new revision; a machine type is
    assert current["revision_id"] == v4 and len(v4) == 16


@BOTH_DATABASES
async def test_invalid_spec_names_every_field_and_changes_nothing(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    before = await snapshot(api, "my-cool-deployment")
    broken = spec(replica=3, resources={"ports": [0], "replicas": -1})

    on_create = await api.post("/v1/deployments", json={**broken, "name": "other"})
    on_update = await put(api, "my-cool-deployment", broken, created["spec_id"])

    for response in (on_create, on_update):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        fields = {e["field"] for e in response.json()["errors"]}
        assert fields == {"replica", "resources.ports[0]", "resources.replicas"}
    assert await snapshot(api, "my-cool-deployment") == before


async def test_probes_that_could_never_run_are_refused_naming_field_and_rule(api: httpx.AsyncClient) -> None:
    """Accepted before, these left a deployment Provisioning for ever: its probes could not be sent."""
    probes = {
        "readiness": {"path": "/", "headers": [{"name": "Authorization", "value": "tok3n\r\nX-Evil: 1"}]},
        "liveness": {"path": "/live", "port": 9999, "successThreshold": 2},
        "startup": {"path": "/start", "periodSeconds": 1e20},
    }
    response = await api.post("/v1/deployments", json=spec(healthChecks=probes))
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    rules = {e["field"]: e["rule"] for e in response.json()["errors"]}
    assert rules == {
        "healthChecks.readiness.headers[0].value": "must not contain control characters such as CR or LF",
        "healthChecks.startup.periodSeconds": "Input should be a valid integer",
    }
    assert "tok3n" not in response.text
    # The rules between fields are checked once every field is valid on its own.
    del probes["readiness"], probes["startup"]
    rules = {e["field"]: e["rule"] for e in (await api.post("/v1/deployments", json=spec(healthChecks=probes))).json()["errors"]}
    assert rules == {"healthChecks.liveness.successThreshold": "must be 1 for liveness and startup probes"}
    probes["liveness"]["successThreshold"] = 1  # type: ignore[index]
    rules = {e["field"]: e["rule"] for e in (await api.post("/v1/deployments", json=spec(healthChecks=probes))).json()["errors"]}
    assert rules == {"healthChecks.liveness.port": "must be one of resources.ports (8000)"}


@BOTH_DATABASES
async def test_name_is_unique_in_project_and_cannot_be_edited(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    other = await create(api, spec(name="other"))

    same_slug = await api.post("/v1/deployments", json=spec(name="My Cool Deployment!"))
    renamed = await put(api, "my-cool-deployment", spec(name="new name"), created["spec_id"])
    taken = await put(api, "my-cool-deployment", spec(name="other"), created["spec_id"])

    assert same_slug.status_code == 409
    assert renamed.status_code == 422
    (error,) = renamed.json()["errors"]
    assert error["field"] == "name" and error["rule"].startswith("deployment name cannot be edited: create a deployment")
    assert taken.status_code == 409
    assert (await api.get(f"/v1/deployments/{other['deployment_id']}")).json()["name"] == "other"


@BOTH_DATABASES
async def test_deleted_deployment_is_gone_and_its_name_reusable(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())

    assert (await api.delete("/v1/deployments/my-cool-deployment")).status_code == 204

    assert (await api.get(f"/v1/deployments/{created['deployment_id']}")).status_code == 404
    assert (await api.delete("/v1/deployments/my-cool-deployment")).status_code == 404
    again = await create(api, spec())
    assert again["deployment_id"] != created["deployment_id"] and again["spec_version"] == 1


@BOTH_DATABASES
async def test_a_project_cannot_see_or_touch_another_projects_deployments(
    api: httpx.AsyncClient, registry: Registry
) -> None:
    mine = await create(api, spec())
    async with await registry.project_client("team-b") as other:
        ref = mine["deployment_id"]
        assert (await other.get(f"/v1/deployments/{ref}")).status_code == 404
        assert (await put(other, ref, spec(), mine["spec_id"])).status_code == 404
        assert (await other.post(f"/v1/deployments/{ref}/scale", json={"replicas": 1})).status_code == 404
        assert (await other.delete(f"/v1/deployments/{ref}")).status_code == 404
        assert (await other.get("/v1/deployments")).json()["items"] == []
        assert (await other.get("/v1/deployments", params={"project": "default"})).status_code == 403
        theirs = await create(other, spec())  # the same name is free in another project
        assert theirs["endpoint"].endswith("/team-b/my-cool-deployment/")
        assert (await other.post("/v1/projects", json={"name": "team-c"})).status_code == 403

    listed = (await api.get("/v1/deployments", params={"project": "team-b"})).json()["items"]
    assert [d["deployment_id"] for d in listed] == [theirs["deployment_id"]]
    assert (await api.get(f"/v1/deployments/{ref}")).json()["spec_version"] == 1


@BOTH_DATABASES
async def test_concurrent_updates_from_one_version_accept_exactly_one(api: httpx.AsyncClient) -> None:
    created = await create(api, spec())
    answers = await asyncio.gather(
        *[put(api, "my-cool-deployment", spec(image=f"python:3.{n}"), created["spec_id"]) for n in range(6)]
    )
    assert sorted(a.status_code for a in answers) == [200] + [409] * 5
    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    assert [v["spec_version"] for v in history] == [2, 1]


# -- SQLite only ----------------------------------------------------------------------------------


async def test_tokens_are_required_and_the_admin_token_is_private(registry: Registry) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(registry.app), base_url="http://registry") as anon:
        assert (await anon.get("/v1/deployments")).status_code == 401
        assert (await anon.get("/healthz")).status_code == 200
    async with registry.client("not-a-token") as wrong:
        assert (await wrong.get("/v1/deployments")).status_code == 401
    assert stat.S_IMODE(registry.settings.token_file.stat().st_mode) == 0o600
    token = await registry.admin.post("/v1/projects/default/tokens")
    assert token.status_code == 201
    async with registry.client(token.json()["token"]) as second:
        assert (await second.get("/v1/deployments")).status_code == 200
    assert (await registry.admin.post("/v1/projects/nope/tokens")).status_code == 404
    assert (await registry.admin.post("/v1/projects", json={"name": "default"})).status_code == 409
    assert (await registry.admin.post("/v1/projects", json={"name": "Not A Label"})).status_code == 422


async def test_yaml_body_and_validate_endpoint(api: httpx.AsyncClient) -> None:
    as_yaml = {"Content-Type": "application/yaml"}
    valid = await api.post("/v1/specs/validate", content=yaml.safe_dump(spec()), headers=as_yaml)
    invalid = await api.post("/v1/specs/validate", content="name: [unclosed", headers=as_yaml)
    created = await api.post("/v1/deployments", content=yaml.safe_dump(spec()), headers=as_yaml)
    other_type = await api.post("/v1/deployments", content=b"x", headers={"Content-Type": "image/png"})

    assert valid.json() == {"valid": True}
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "(spec)"
    assert created.status_code == 201 and created.json()["spec"] == spec()
    assert created.headers["location"] == f"/v1/deployments/{created.json()['deployment_id']}"
    assert other_type.status_code == 415
    assert (await api.get("/v1/deployments")).json()["items"] == [created.json()]


async def test_secret_refs_are_checked_and_values_never_shown(
    api: httpx.AsyncClient, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, js: JetStreamContext
) -> None:
    value = "s3cr3t-" + uuid.uuid4().hex
    document = spec(
        env=[{"name": "plain", "value": "x"}, {"name": "TOKEN", "value": "secret:hf_token"}],
        basicAuthKey="secret:gate",
    )

    missing = await api.post("/v1/deployments", json=document)
    assert missing.status_code == 422
    assert missing.json()["errors"] == [
        {"field": "env[1].value", "rule": "names the secret 'hf_token', which does not exist in the project"},
        {"field": "basicAuthKey", "rule": "names the secret 'gate', which does not exist in the project"},
    ]
    assert (await api.get("/v1/deployments")).json()["items"] == []

    responses = [await api.put(f"/v1/secrets/{name}", json={"value": value}) for name in ("hf_token", "gate")]
    responses.append(await api.put("/v1/secrets/bad name", json={"value": value}))
    responses.append(await api.get("/v1/secrets"))
    responses.append(created := await api.post("/v1/deployments", json=document))
    responses.append(await api.get("/v1/deployments/my-cool-deployment"))
    responses.append(used := await api.get("/v1/secrets"))
    responses.append(await api.delete("/v1/secrets/gate"))
    responses.append(await put(api, "my-cool-deployment", document, created.json()["spec_id"]))

    statuses = [r.status_code for r in responses]
    assert statuses == [204, 204, 422, 200, 201, 200, 200, 204, 422]
    assert used.json()["used_by"] == {"gate": ["my cool deployment"], "hf_token": ["my cool deployment"]}
    assert responses[3].json() == {"names": ["gate", "hf_token"], "used_by": {"gate": [], "hf_token": []}}
    assert created.json()["spec"]["env"][1]["value"] == "secret:hf_token"
    events = await all_events(js, "berth.spec.v1.*")
    output = capfd.readouterr()
    for text in (
        [r.text for r in responses] + [e.model_dump_json() for e in events] + [output.out, output.err, caplog.text]
    ):
        assert value not in text
    bucket = await js.key_value(SECRETS_BUCKET)  # read raw, as any client of the bus could
    stored = (await bucket.get("default.hf_token")).value or b""
    assert stored and value.encode() not in stored, "the bucket holds only the sealed value"


async def test_every_version_and_deletion_reaches_the_spec_stream_once(
    api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    created = await create(api, spec())
    updated = (await put(api, "my-cool-deployment", replicas(3), created["spec_id"])).json()
    await api.delete("/v1/deployments/my-cool-deployment")
    subject = f"berth.spec.v1.{created['deployment_id']}"

    async def stream_holds_three() -> bool:
        info = await js.stream_info("BERTH_SPECS", subjects_filter=subject)
        return info.state.messages == 3

    await eventually(stream_holds_three, what="two versions and a deletion published")
    events = await all_events(js, subject)
    assert [type(e) for e in events] == [SpecApplied, SpecApplied, DeploymentDeleted]
    first, second = events[0], events[1]
    assert isinstance(first, SpecApplied) and isinstance(second, SpecApplied)
    assert (first.event_id, first.spec_version) == (created["spec_id"], 1)
    assert (second.spec_id, second.spec.resources.replicas) == (updated["spec_id"], 3)
    assert first.slug == "my-cool-deployment" and first.project == "default"


async def test_a_scale_is_published_once_and_writes_that_change_nothing_publish_nothing(
    api: httpx.AsyncClient, nc: Client
) -> None:
    published: list[Event] = []

    async def record(msg: Msg) -> None:
        published.append(decode_event(msg.data))

    # Everything the relay publishes, as it is published (a stream keeps only the newest scale).
    subscriptions = [await nc.subscribe(subject, cb=record) for subject in ("berth.spec.v1.>", "berth.scale.v1.>")]
    await nc.flush()  # subscribed at the server before anything is published
    created = await create(api, spec())
    assert (await api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 5})).json()["unchanged"] is False
    for no_op in (
        api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 5}),
        put(api, "my-cool-deployment", spec(), created["spec_id"]),
        api.post("/v1/deployments/my-cool-deployment/rollback", json={"spec_version": 1}),
    ):
        assert (await no_op).json()["unchanged"] is True
    # The relay publishes in commit order: once this version is out, so is all that came before.
    marker = (await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])).json()
    await eventually(lambda: any(getattr(e, "spec_id", None) == marker["spec_id"] for e in published), what="marker")
    for subscription in subscriptions:
        await subscription.unsubscribe()

    assert [type(e) for e in published] == [SpecApplied, DeploymentScaled, SpecApplied]
    scaled = published[1]
    assert isinstance(scaled, DeploymentScaled)
    assert (scaled.deployment_id, scaled.source, scaled.replicas) == (created["deployment_id"], "user", 5)
    assert (scaled.spec_version, scaled.spec_replicas) == (1, 2)
    assert scaled.subject() == f"berth.scale.v1.{created['deployment_id']}.user"


async def test_a_spec_with_another_count_replaces_the_users_decision_on_the_bus(
    api: httpx.AsyncClient, js: JetStreamContext
) -> None:
    created = await create(api, spec())
    await api.post("/v1/deployments/my-cool-deployment/scale", json={"replicas": 5})
    applied = (await put(api, "my-cool-deployment", replicas(3), created["spec_id"])).json()
    subject = f"berth.scale.v1.{created['deployment_id']}.user"

    async def newest() -> DeploymentScaled | None:
        events = await all_events(js, subject)
        latest = events[-1] if events else None
        return latest if isinstance(latest, DeploymentScaled) and latest.spec_version == 2 else None

    decision = await eventually(newest, what="the superseding decision published")
    # It follows the new spec, so a later spec going back to 2 replicas does not revive the scale to 5.
    assert (decision.replicas, decision.spec_replicas) == (3, 3) and applied["spec_version"] == 2
    assert "superseded by spec version 2" in decision.reason


async def test_status_serves_the_newest_status_event(api: httpx.AsyncClient, nc: Client) -> None:
    created = await create(api, spec())
    pending = (await api.get("/v1/deployments/my-cool-deployment/status")).json()
    assert pending["phase"] == "Pending" and pending["desired_replicas"] == 2

    now = datetime.now(UTC)
    replica = ReplicaStatus(replica_id="r1", spec_id=created["spec_id"], state="running", ready=True)
    for phase, at in (("Ready", now), ("Provisioning", now - timedelta(seconds=5))):  # the older one is ignored
        event = DeploymentStatusChanged(
            deployment_id=created["deployment_id"],
            project="default",
            slug="my-cool-deployment",
            spec_id=created["spec_id"],
            phase=phase,
            desired_replicas=2,
            ready_replicas=1,
            replicas=[replica],
            occurred_at=at,
        )
        await nc.jetstream().publish(event.subject(), event.model_dump_json().encode())

    async def ready() -> dict[str, Any] | None:
        status = (await api.get("/v1/deployments/my-cool-deployment/status")).json()
        return status if status["phase"] == "Ready" else None

    status = await eventually(ready, what="status read model updated")
    assert status["ready_replicas"] == 1 and status["replicas"][0]["replica_id"] == "r1"
    assert datetime.fromisoformat(status["observed_at"]) == now
    deployment = (await api.get("/v1/deployments/my-cool-deployment")).json()
    assert deployment["status"] == status

    async def both_acknowledged() -> bool:
        info = await nc.jetstream().consumer_info("BERTH_STATUS", "registry-status")
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq == 2

    await eventually(both_acknowledged, what="both status events handled")
    assert (await api.get("/v1/deployments/my-cool-deployment/status")).json()["phase"] == "Ready"


async def test_history_records_an_automatic_rollback_once(api: httpx.AsyncClient, nc: Client) -> None:
    created = await create(api, spec())
    second = (await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])).json()
    now = datetime.now(UTC)
    why = "spec version 2 did not get ready within its progress deadline (30 s)"
    for at, reason in ((now, why), (now + timedelta(seconds=5), "a later report of the same rollback")):
        event = DeploymentStatusChanged(
            deployment_id=created["deployment_id"], project="default", slug="my-cool-deployment",
            spec_id=second["spec_id"], phase="Degraded", reason=f"rolled back: {reason}", desired_replicas=2,
            ready_replicas=2, rolled_back_version=2, rolled_back_reason=reason, occurred_at=at,
        )  # fmt: skip
        await nc.jetstream().publish(event.subject(), event.model_dump_json().encode())

    async def marked() -> list[dict[str, Any]] | None:
        items = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
        later = (await api.get("/v1/deployments/my-cool-deployment/status")).json()["observed_at"]
        return items if items[0]["rolled_back_at"] and datetime.fromisoformat(later) > now else None

    items = await eventually(marked, what="the rollback in history")
    assert [(v["spec_version"], v["rolled_back_reason"]) for v in items] == [(2, why), (1, None)]  # the first kept
    assert datetime.fromisoformat(items[0]["rolled_back_at"]) == now and items[1]["rolled_back_at"] is None


async def test_logs_come_from_the_scheduler_or_503(api: httpx.AsyncClient, nc: Client) -> None:
    created = await create(api, spec())
    absent = await api.get("/v1/deployments/my-cool-deployment/logs")
    assert absent.status_code == 503 and "scheduler" in absent.json()["detail"]

    asked: list[dict[str, Any]] = []

    async def scheduler(msg: Msg) -> None:
        asked.append(json.loads(msg.data))
        await msg.respond(
            json.dumps({"lines": [{"replica_id": "r1", "offset": 7, "line": "hello"}], "next": "cursor-2"}).encode()
        )

    since = encode_cursor({"r1": (7, "0123456789abcdef")})
    sub = await nc.subscribe(LOGS_RPC, cb=scheduler)
    await nc.flush()  # the server has the subscription before the registry asks
    try:
        page = await api.get("/v1/deployments/my-cool-deployment/logs", params={"tail": 5, "since": since})
    finally:
        await sub.unsubscribe()
    assert page.status_code == 200, page.text
    assert page.json() == {
        "lines": [{"replica_id": "r1", "offset": 7, "time": None, "line": "hello", "replaced": False}], "next": "cursor-2"
    }
    assert asked == [{"deployment_id": created["deployment_id"], "replica_id": None, "tail": 5, "since": since,
                      "since_time": None, "until": None, "grep": None, "include_replaced": False}]

    sub = await nc.subscribe(LOGS_RPC, cb=scheduler)
    await nc.flush()  # the server has the subscription before the registry asks
    try:
        params = {"since_time": "2026-01-02T03:04:05+02:00", "until": "2026-01-02T02:00:00Z", "grep": "ERROR",
                  "include_replaced": "true"}
        searched = await api.get("/v1/deployments/my-cool-deployment/logs", params=params)
    finally:
        await sub.unsubscribe()
    assert searched.status_code == 200, searched.text
    assert asked[-1] | {"since": None} == {
        "deployment_id": created["deployment_id"], "replica_id": None, "tail": 100, "since": None,
        "since_time": "2026-01-02T01:04:05+00:00", "until": "2026-01-02T02:00:00+00:00", "grep": "ERROR",
        "include_replaced": True,
    }


async def test_metrics_come_from_the_metrics_service_and_its_summary_is_in_the_status(
    api: httpx.AsyncClient, nc: Client, js: JetStreamContext
) -> None:
    created = await create(api, spec())
    target = "/v1/deployments/my-cool-deployment"
    absent = await api.get(f"{target}/metrics")
    assert absent.status_code == 503 and "metrics service" in absent.json()["detail"]

    asked: list[dict[str, Any]] = []

    async def metrics_service(msg: Msg) -> None:
        asked.append(json.loads(msg.data))
        if asked[-1]["step"] < 10:
            await msg.respond(json.dumps({"error": "bad request", "field": "step", "rule": "must be at least 10s"}).encode())
            return
        await msg.respond(json.dumps({"deployment_id": asked[-1]["deployment_id"], "series": {}}).encode())

    sub = await nc.subscribe(METRICS_RPC, cb=metrics_service)
    await nc.flush()  # the server has the subscription before the registry asks
    try:
        answer = await api.get(f"{target}/metrics", params={"window": "1h30m", "step": "5m", "version": 1})
        too_fine = await api.get(f"{target}/metrics", params={"step": "1s"})
    finally:
        await sub.unsubscribe()
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"deployment_id": created["deployment_id"], "series": {}}
    assert asked[0] == {"deployment_id": created["deployment_id"], "window": 5400, "step": 300, "version": 1}
    assert too_fine.status_code == 422 and too_fine.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in too_fine.json()["errors"]] == ["step"]

    summary = MetricsSummary(at=datetime.now(UTC), request_rate=2.5, error_rate=0.1, latency_p99=0.25, in_flight=1)
    await js.publish(
        f"berth.metrics.v1.summary.{created['deployment_id']}",
        DeploymentMetricsSummarized(**created_ref(created), summary=summary).model_dump_json().encode(),
    )

    async def shown() -> dict[str, Any] | None:
        return (await api.get(target)).json()["status"].get("metrics")

    figures = await eventually(shown, what="the summary in the status")
    assert (figures["request_rate"], figures["error_rate"], figures["latency_p99"]) == (2.5, 0.1, 0.25)
    status = DeploymentStatusChanged(  # the scheduler's next report keeps the figures
        **created_ref(created), spec_id=created["spec_id"], phase="Ready", desired_replicas=2, ready_replicas=2,
    )  # fmt: skip
    await js.publish(status.subject(), status.model_dump_json().encode())

    async def both() -> dict[str, Any] | None:
        shown_status = (await api.get(target)).json()["status"]
        return shown_status if shown_status["phase"] == "Ready" else None

    assert (await eventually(both, what="the scheduler's report"))["metrics"]["request_rate"] == 2.5


def created_ref(created: dict[str, Any]) -> dict[str, str]:
    return {"deployment_id": created["deployment_id"], "project": created["project"], "slug": created["slug"]}


async def test_health_and_metrics(api: httpx.AsyncClient) -> None:
    await create(api, spec())
    health = await api.get("/healthz")
    metrics = await api.get("/metrics")

    assert health.json() | {"outbox_pending": 0} == {
        "healthy": True, "database": True, "bus_connected": True, "outbox_pending": 0, "outbox_set_aside": 0
    }
    assert "berth_registry_spec_versions_accepted_total" in metrics.text
    assert 'berth_registry_requests_total{method="POST",route="/v1/deployments",status="201"}' in metrics.text
    assert "berth_registry_outbox_lag" in metrics.text
    assert "_created" not in metrics.text  # docs/monitoring.md: no `_created` series


async def test_a_logs_search_that_cannot_be_read_is_refused_naming_the_field(api: httpx.AsyncClient) -> None:
    await create(api, spec())
    cases = [
        ({"since_time": "yesterday"}, "since_time"),
        ({"until": "2026-01-02T03:04:05"}, "until"),  # no offset: which time zone is not known
        ({"since_time": "10m", "until": "1h"}, "until"),  # ends before it starts
        ({"grep": "x" * 300}, "grep"),
        ({"grep": ""}, "grep"),
    ]
    for params, field in cases:
        answer = await api.get("/v1/deployments/my-cool-deployment/logs", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in answer.json()["errors"]] == [field], answer.json()
        assert "x" * 300 not in answer.text and "yesterday" not in answer.text


# -- aliases ---------------------------------------------------------------------------------------------


async def test_aliases_are_set_moved_listed_and_removed(api: httpx.AsyncClient, nc: Client) -> None:
    published: list[Event] = []

    async def record(msg: Msg) -> None:
        published.append(decode_event(msg.data))

    subscription = await nc.subscribe("berth.spec.v1.*.alias.*", cb=record)
    await nc.flush()  # subscribed at the server before anything is published
    created = await create(api, spec())
    await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])
    base = "/v1/deployments/my-cool-deployment/aliases"

    first = await api.put(f"{base}/prod", json={"spec_version": 1})
    assert first.status_code == 200, first.text
    assert first.json()["endpoint"].endswith("/default/my-cool-deployment@prod/")
    assert (first.json()["spec_version"], first.json()["unchanged"]) == (1, False)
    assert (await api.put(f"{base}/prod", json={"spec_version": 1})).json()["unchanged"] is True
    assert (await api.put(f"{base}/staging", json={"spec_version": 2})).status_code == 200
    moved = await api.put(f"{base}/prod", json={"spec_version": 2})
    assert (moved.json()["spec_version"], moved.json()["unchanged"]) == (2, False)
    listed = (await api.get(base)).json()["items"]
    assert [(a["alias"], a["spec_version"]) for a in listed] == [("prod", 2), ("staging", 2)]

    assert (await api.delete(f"{base}/staging")).status_code == 204
    gone = await api.delete(f"{base}/staging")
    assert gone.status_code == 404 and gone.json()["errors"][0]["field"] == "alias"
    assert [a["alias"] for a in (await api.get(base)).json()["items"]] == ["prod"]

    # Every change is published once, with the spec of the version it names (null: removed).
    await eventually(lambda: len(published) == 4, what="four alias events")
    await subscription.unsubscribe()
    assert [(e.alias, e.target and e.target.spec_version) for e in published] == [  # type: ignore[attr-defined]
        ("prod", 1), ("staging", 2), ("prod", 2), ("staging", None)
    ]
    prod = published[2]
    assert isinstance(prod, DeploymentAliasSet) and prod.target is not None
    assert prod.target.spec.image == "python:3.12"
    assert prod.subject() == f"berth.spec.v1.{created['deployment_id']}.alias.prod"


async def test_promote_publishes_the_current_version_and_adds_none(api: httpx.AsyncClient, js: JetStreamContext) -> None:
    created = await create(api, spec())
    answer = await api.post("/v1/deployments/my-cool-deployment/promote")
    assert answer.status_code == 200 and answer.json()["spec_version"] == 1
    subject = f"berth.spec.v1.{created['deployment_id']}.promote"

    async def published() -> list[Event]:
        return await all_events(js, subject)

    (event,) = await eventually(published, what="the promotion published")
    assert isinstance(event, DeploymentPromoted) and event.spec_version == 1
    assert len((await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]) == 1
    assert (await api.post("/v1/deployments/nope/promote")).status_code == 404


@pytest.mark.parametrize("name", ["Prod", "98765", "a" * 64, "-prod", "prod-", "pr_od", "pr.od"])
async def test_a_bad_alias_name_is_refused_naming_the_field_and_the_rule(api: httpx.AsyncClient, name: str) -> None:
    await create(api, spec())
    response = await api.put(f"/v1/deployments/my-cool-deployment/aliases/{name}", json={"spec_version": 1})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    (error,) = response.json()["errors"]
    assert error["field"] == "alias" and "DNS-1123" in error["rule"] and "digits" in error["rule"]
    assert name not in response.text
    assert (await api.get("/v1/deployments/my-cool-deployment/aliases")).json()["items"] == []


async def test_an_alias_needs_an_existing_version_and_there_are_at_most_16(api: httpx.AsyncClient) -> None:
    await create(api, spec())
    base = "/v1/deployments/my-cool-deployment/aliases"
    missing = await api.put(f"{base}/prod", json={"spec_version": 2})
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "spec_version"
    not_int = await api.put(f"{base}/prod", json={"spec_version": "1"})
    assert not_int.status_code == 422 and not_int.json()["errors"][0]["field"] == "spec_version"
    for i in range(16):
        assert (await api.put(f"{base}/a{i}", json={"spec_version": 1})).status_code == 200
    too_many = await api.put(f"{base}/one-more", json={"spec_version": 1})
    assert too_many.status_code == 422 and too_many.json()["errors"] == [
        {"field": "alias", "rule": "a deployment has at most 16 aliases"}
    ]
    assert (await api.put(f"{base}/a0", json={"spec_version": 1})).json()["unchanged"] is True  # moving is fine
    assert (await api.delete("/v1/deployments/my-cool-deployment")).status_code == 204
    await create(api, spec())  # the name again: a new deployment, without the old one's aliases
    assert (await api.get(base)).json()["items"] == []


# -- dry run, history diff and authors ----------------------------------------------------------------


async def test_strategy_query_overrides_the_strategy_of_one_update(api: httpx.AsyncClient) -> None:
    first = (await api.post("/v1/deployments?strategy=blue-green", json=spec())).json()
    assert first["spec"]["updateStrategy"] == {"type": "blue-green"}
    if_match = {"If-Match": f'"{first["spec_id"]}"'}
    canary = {"type": "canary", "canarySteps": [20, 50]}
    changed = spec(image="python:3.12", updateStrategy=canary)
    dry = (await api.put("/v1/deployments/my-cool-deployment?dryRun=true&strategy=rolling", json=changed, headers=if_match)).json()
    assert dry["strategy"] == "rolling"
    kept = await api.put("/v1/deployments/my-cool-deployment?strategy=canary", json=changed, headers=if_match)
    assert kept.status_code == 200 and kept.json()["spec"]["updateStrategy"] == canary  # same type: settings kept
    bad = await api.put("/v1/deployments/my-cool-deployment?strategy=big-bang", json=changed, headers=if_match)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in bad.json()["errors"]] == ["strategy"] and "big-bang" not in bad.text
    history = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    assert [v["spec"]["updateStrategy"]["type"] for v in history] == ["canary", "blue-green"]


async def test_dry_run_answers_the_changes_and_stores_nothing(api: httpx.AsyncClient, registry: Registry, nc: Client) -> None:
    published: list[Msg] = []

    async def record(msg: Msg) -> None:
        published.append(msg)

    subscription = await nc.subscribe("berth.spec.v1.>", cb=record)
    await nc.flush()  # subscribed at the server before anything is published
    new = await api.post("/v1/deployments?dryRun=true", json=spec())
    assert new.status_code == 200 and new.json()["deployment_id"] is None
    assert (await api.get("/v1/deployments")).json()["items"] == []
    created = await create(api, spec())
    before = await snapshot(api, "my-cool-deployment")

    changed = spec(image="python:3.12", description="now with 3.12", resources={"ports": [8000], "replicas": 3})
    answer = await api.put("/v1/deployments/my-cool-deployment?dryRun=true", json=changed, headers={"If-Match": f'"{created["spec_id"]}"'})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["dry_run"], body["spec_version"], body["unchanged"], body["replaces_replicas"]) == (True, 1, False, True)
    assert {c["field"]: (c["before"], c["after"], c["effect"]) for c in body["changes"]} == {
        "image": ("python:3.11", "python:3.12", "replace"),
        "description": (None, "now with 3.12", "live"),
        "resources.replicas": (2, 3, "live"),
    }
    assert body["strategy"] == "rolling" and "rolling" in body["rollout"]
    same = await api.put("/v1/deployments/my-cool-deployment?dryRun=true", json=spec(), headers={"If-Match": f'"{created["spec_id"]}"'})
    assert (same.json()["unchanged"], same.json()["changes"]) == (True, [])
    live_only = await api.put(
        "/v1/deployments/my-cool-deployment?dryRun=true", json=spec(description="x"), headers={"If-Match": f'"{created["spec_id"]}"'}
    )
    assert live_only.json()["replaces_replicas"] is False and "live" in live_only.json()["rollout"]
    # The same checks as the real update: a stale If-Match, a rename, an invalid spec.
    stale = await api.put("/v1/deployments/my-cool-deployment?dryRun=true", json=changed, headers={"If-Match": '"nope"'})
    assert stale.status_code == 409
    renamed = await api.put("/v1/deployments/my-cool-deployment?dryRun=true", json=spec(name="other"), headers={"If-Match": f'"{created["spec_id"]}"'})
    assert renamed.status_code == 422 and renamed.json()["errors"][0]["field"] == "name"
    assert (await api.post("/v1/deployments?dryRun=true", json=spec())).status_code == 409  # the name is taken

    assert await snapshot(api, "my-cool-deployment") == before
    await put(api, "my-cool-deployment", spec(image="marker"), created["spec_id"])
    await eventually(lambda: len(published) == 2, what="the create and the marker version")
    await subscription.unsubscribe()
    assert len(published) == 2  # no dry run published anything


async def test_history_diff_and_who_created_each_version(api: httpx.AsyncClient, registry: Registry) -> None:
    created = await create(api, spec())
    second = (await put(api, "my-cool-deployment", spec(image="python:3.12"), created["spec_id"])).json()
    token = (await api.post("/v1/projects/default/tokens")).json()["token"]
    async with registry.client(token) as colleague:  # another token of the same project
        third = spec(image="python:3.12", env=[{"name": "A", "value": "1"}])
        assert (await put(colleague, "my-cool-deployment", third, second["spec_id"])).status_code == 200
    plain = (await api.get("/v1/deployments/my-cool-deployment/history")).json()["items"]
    assert [v["changes"] for v in plain] == [None, None, None]
    by = [v["created_by"] for v in plain]
    assert by[1] == by[2] and by[0] != by[1] and None not in by
    assert token not in json.dumps(plain)

    page = (await api.get("/v1/deployments/my-cool-deployment/history?diff=true&limit=2")).json()
    assert [[(c["field"], c["effect"]) for c in v["changes"]] for v in page["items"]] == [
        [("env.A", "replace")], [("image", "replace")]
    ]
    rest = (await api.get(f"/v1/deployments/my-cool-deployment/history?diff=true&limit=2&after={page['next']}")).json()
    assert [v["changes"] for v in rest["items"]] == [None]  # the first version has no predecessor


async def test_a_retry_request_reaches_the_control_stream(api: httpx.AsyncClient, js: JetStreamContext) -> None:
    created = await create(api, spec())
    accepted = await api.post("/v1/deployments/my-cool-deployment/retry")
    assert accepted.status_code == 202 and accepted.json()["deployment_id"] == created["deployment_id"]
    assert (await api.post("/v1/deployments/nothing-here/retry")).status_code == 404

    async def published() -> list[Event]:
        return await all_events(js, f"berth.control.v1.retry.{created['deployment_id']}")

    (request,) = await eventually(published, what="the retry request published")
    assert isinstance(request, IntegrationsRetryRequested) and request.slug == "my-cool-deployment"
