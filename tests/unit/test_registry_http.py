"""The registry's HTTP surface without running it: the OpenAPI contract, If-Match parsing, tokens."""

from __future__ import annotations

import stat
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
    "/v1/specs/validate": {"post"},
    "/v1/deployments": {"get", "post"},
    "/v1/deployments/{ref}": {"get", "put", "delete"},
    "/v1/deployments/{ref}/scale": {"post"},
    "/v1/deployments/{ref}/stop": {"post"},
    "/v1/deployments/{ref}/start": {"post"},
    "/v1/deployments/{ref}/rollback": {"post"},
    "/v1/deployments/{ref}/history": {"get"},
    "/v1/deployments/{ref}/status": {"get"},
    "/v1/deployments/{ref}/logs": {"get"},
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
