"""Bearer tokens: generation, hashing (only SHA-256 digests are stored), the admin bootstrap, and the
FastAPI dependencies that turn a request's token into a `Principal`."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs.config import Settings
from libs.files import write_private
from libs.logging import get_logger
from services.spec_registry.problems import Forbidden, Unauthorized
from services.spec_registry.repository import Principal, Repository

log = get_logger("spec_registry")
bearer = HTTPBearer(auto_error=False, description="A project token; the admin token is in <data_dir>/token.")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bootstrap_admin(settings: Settings, repo: Repository) -> None:
    """On first start: project `default` and an admin token, written to settings.token_file (0600).

    A token given in BERTH_TOKEN, or left in the token file by an earlier install, becomes the admin
    token, so the CLI keeps working against a fresh database.
    """
    if repo.has_admin():
        return
    token = settings.resolved_token()
    if token is None:
        token = new_token()
        # Written before it is stored: a crash in between leaves a file the next start adopts,
        # never a stored admin token nobody knows.
        write_private(settings.token_file, token)
        log.info("admin token created", path=str(settings.token_file))
    repo.bootstrap(hash_token(token))


class TokenCache:
    """Principals of tokens seen before. Tokens cannot be revoked, so a hit never goes stale."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._known: dict[str, Principal] = {}

    async def principal(self, token: str) -> Principal | None:
        digest = hash_token(token)
        if digest not in self._known:
            found = await asyncio.to_thread(self._repo.principal, digest)
            if found is None:
                return None
            self._known[digest] = found
        return self._known[digest]


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None:
        raise Unauthorized()
    tokens: TokenCache = request.app.state.tokens
    principal = await tokens.principal(credentials.credentials)
    if principal is None:
        raise Unauthorized("the token is not valid")
    return principal


async def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("only the admin token may manage projects")
    return principal


Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
