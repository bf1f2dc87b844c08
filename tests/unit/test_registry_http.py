"""The registry's HTTP surface without running it: the OpenAPI contract, If-Match parsing, tokens."""

from __future__ import annotations

import stat

import httpx
from pathlib import Path

from libs.config import Settings
from services.spec_registry.app import create_app
from services.spec_registry.auth import hash_token, new_token, write_private
from services.spec_registry.routes.deployments import _etags

CONTRACT = {
    "/healthz": {"get"},
    "/metrics": {"get"},
    "/v1/projects": {"post"},
    "/v1/projects/{project}/tokens": {"post"},
    "/v1/secrets": {"get"},
    "/v1/secrets/{name}": {"put", "delete"},
    "/v1/secrets/{name}/restart": {"post"},
    "/v1/specs/validate": {"post"},
    "/v1/deployments": {"get", "post"},
    "/v1/deployments/{ref}": {"get", "put", "delete"},
    "/v1/deployments/{ref}/scale": {"post"},
    "/v1/deployments/{ref}/retry": {"post"},
    "/v1/deployments/{ref}/stop": {"post"},
    "/v1/deployments/{ref}/start": {"post"},
    "/v1/deployments/{ref}/rollback": {"post"},
    "/v1/deployments/{ref}/history": {"get"},
    "/v1/deployments/{ref}/status": {"get"},
    "/v1/deployments/{ref}/autoscaling/decision": {"get"},
    "/v1/deployments/{ref}/logs": {"get"},
    "/v1/deployments/{ref}/aliases": {"get"},
    "/v1/deployments/{ref}/promote": {"post"},
    "/v1/deployments/{ref}/aliases/{alias}": {"put", "delete"},
    "/v1/deployments/{ref}/alerts": {"get"},
    "/v1/alerts": {"get"},
    "/v1/deployments/events": {"get"},
    "/v1/webhooks": {"get", "put", "delete"},
    "/v1/deployments/{ref}/metrics": {"get"},
}


def openapi() -> dict:  # type: ignore[type-arg]
    return create_app(Settings(_env_file=None)).openapi()


def test_openapi_has_every_route_of_the_contract() -> None:
    paths = openapi()["paths"]
    assert {path: set(methods) for path, methods in paths.items()} == CONTRACT


def test_openapi_documents_specs_and_problems() -> None:
    document = openapi()
    put = document["paths"]["/v1/deployments/{ref}"]["put"]
    spec_ref = {"$ref": "#/components/schemas/DeploymentSpec"}
    assert put["requestBody"]["content"]["application/yaml"]["schema"] == spec_ref
    assert put["responses"]["409"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}
    }
    deployment = document["components"]["schemas"]["Deployment"]["properties"]
    assert deployment["spec"] == spec_ref
    assert set(deployment) == {
        "deployment_id", "project", "name", "slug", "environment", "spec_id", "spec_version", "spec",
        "endpoint", "created_at", "updated_at", "status", "revision_id", "scale", "unchanged",
    }  # fmt: skip


def test_if_match_accepts_quoted_weak_and_bare_spec_ids() -> None:
    assert _etags('"abc"') == ["abc"]
    assert _etags('W/"abc", "def"') == ["abc", "def"]
    assert _etags("abc") == ["abc"]


def test_tokens_are_random_and_stored_as_digests() -> None:
    first, second = new_token(), new_token()
    assert first != second and len(first) >= 40
    assert hash_token(first) == hash_token(first) and len(hash_token(first)) == 64
    assert first not in hash_token(first)


def test_token_file_is_private_even_when_it_existed(tmp_path: Path) -> None:
    path = tmp_path / "data" / "token"
    path.parent.mkdir()
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_openapi_says_what_the_api_requires_and_answers() -> None:
    paths = openapi()["paths"]
    put = paths["/v1/deployments/{ref}"]["put"]
    [if_match] = [p for p in put["parameters"] if p["name"] == "if-match"]
    assert if_match["required"] is True and "428" in put["responses"]
    for path in ("/v1/deployments/{ref}/scale", "/v1/deployments/{ref}/rollback", "/v1/projects"):
        operation = paths[path]["post"]
        assert {"400", "413", "422"} <= set(operation["responses"]), path
    assert "400" in paths["/v1/secrets/{name}"]["put"]["responses"]


async def test_an_unexpected_error_is_a_problem_and_the_connection_stays_usable() -> None:
    """The 500 is answered inside the app: Starlette's outermost handler would answer and then
    re-raise, and uvicorn drops a keep-alive connection on an exception without `Connection: close`.
    httpx's ASGI transport re-raises such an exception too, which is what this test would see."""
    app = create_app(Settings(_env_file=None))

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://registry") as client:
        response = await client.get("/broken")
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert "a bug" not in response.text


async def test_405_allows_every_method_of_the_resource() -> None:
    app = create_app(Settings(_env_file=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://registry") as client:
        response = await client.patch("/v1/deployments/anything")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "PUT", "DELETE"}
    assert response.json()["errors"][0]["field"] == "(method)"
