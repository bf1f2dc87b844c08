"""Projects and their tokens (admin token only), and the caller's project secrets."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from libs.spec import SECRET_NAME, SECRET_NAME_MAX
from services.spec_registry.auth import Admin, Caller, hash_token, new_token
from services.spec_registry.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    responses,
)
from services.spec_registry.routes.deps import RegistryDep
from services.spec_registry.schemas import (
    ProjectCreate,
    ProjectCreated,
    SecretNames,
    SecretPut,
    SecretUsersRestarted,
    TokenCreated,
)

router = APIRouter(prefix="/v1", responses=responses(Unauthorized, PayloadTooLarge, Invalid))
SecretName = Annotated[
    str,
    Path(pattern=SECRET_NAME.pattern, max_length=SECRET_NAME_MAX, description="Referred to as secret:<name> in specs."),
]


@router.post("/projects", status_code=201, tags=["projects"], responses=responses(BadRequest, Forbidden, Conflict, Invalid))
async def create_project(body: ProjectCreate, _: Admin, registry: RegistryDep) -> ProjectCreated:
    """A project and its first token (shown once)."""
    token = new_token()
    await asyncio.to_thread(registry.repo.create_project, body.name, hash_token(token))
    return ProjectCreated(name=body.name, token=token)


@router.post("/projects/{project}/tokens", status_code=201, tags=["projects"], responses=responses(Forbidden, NotFound))
async def create_token(project: str, _: Admin, registry: RegistryDep) -> TokenCreated:
    """Another token for a project (shown once)."""
    token = new_token()
    await asyncio.to_thread(registry.repo.add_token, project, hash_token(token))
    return TokenCreated(token=token)


@router.put("/secrets/{name}", status_code=204, tags=["secrets"], responses=responses(BadRequest, Invalid))
async def put_secret(name: SecretName, body: SecretPut, caller: Caller, registry: RegistryDep) -> Response:
    # The value first: a name in the index always has a value behind it.
    await registry.secrets.put(caller.project, name, body.value.get_secret_value())
    await asyncio.to_thread(registry.repo.add_secret_name, caller.project, name)
    return Response(status_code=204)


@router.post("/secrets/{name}/restart", tags=["secrets"], responses=responses(NotFound, Conflict))
async def restart_secret_users(name: SecretName, caller: Caller, registry: RegistryDep) -> SecretUsersRestarted:
    """Restart the deployments that use the secret (e.g. after setting a new value): each gets a new
    version with `restartedAt` now, whose replicas replace the old ones through its update strategy."""
    if not await asyncio.to_thread(registry.repo.has_secret, caller.project, name):
        raise NotFound("no secret of this name in the project", field="name")
    return SecretUsersRestarted(restarted=await registry.restart_users(caller.project, name))


@router.get("/secrets", tags=["secrets"])
async def list_secrets(caller: Caller, registry: RegistryDep) -> SecretNames:
    """Names, and which deployments use each; values are never shown."""
    names = sorted(await asyncio.to_thread(registry.repo.secret_names, caller.project))
    users = await asyncio.to_thread(registry.repo.secret_users, caller.project)
    return SecretNames(names=names, used_by={name: users.get(name, []) for name in names})


@router.delete("/secrets/{name}", status_code=204, tags=["secrets"], responses=responses(NotFound))
async def delete_secret(name: SecretName, caller: Caller, registry: RegistryDep) -> Response:
    if not await asyncio.to_thread(registry.repo.has_secret, caller.project, name):
        raise NotFound("no secret of this name in the project", field="name")
    await registry.secrets.delete(caller.project, name)
    await asyncio.to_thread(registry.repo.remove_secret_name, caller.project, name)
    return Response(status_code=204)
