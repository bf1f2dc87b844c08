"""FastAPI dependencies shared by the routes: the registry, settings, and the spec request body."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request

from libs.config import Settings
from libs.spec import SpecError, SpecInvalid, parse_json, parse_yaml
from services.spec_registry.problems import UnsupportedMediaType
from services.spec_registry.registry import Registry

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
PARSE_INLINE_BYTES = 8 * 1024
SPEC_SCHEMA = {"$ref": "#/components/schemas/DeploymentSpec"}
SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A deployment spec, YAML or JSON.",
        "content": {"application/yaml": {"schema": SPEC_SCHEMA}, "application/json": {"schema": SPEC_SCHEMA}},
    }
}


# The two below are `async def` though they never await: FastAPI runs a plain `def` dependency in a
# worker thread, and those hand-offs were the largest own cost of a spec update (docs/benchmarks.md).
async def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _spec_document(request: Request) -> Any:
    """The parsed spec body (validation comes later, so that every error is reported at once).

    A large body is parsed in a worker thread: one within the size limit still takes a while, and
    the event loop serves every other request meanwhile. A small one (most specs) is parsed at once:
    the hand-off to a thread costs more than the parse."""
    media_type = request.headers.get("content-type", "application/yaml").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        parse = parse_json
    elif media_type in YAML_TYPES:
        parse = parse_yaml
    else:
        raise UnsupportedMediaType("send the spec as application/yaml or application/json")
    body = await request.body()
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise SpecInvalid([SpecError("(spec)", "the body is not UTF-8 text")]) from exc
    if len(body) <= PARSE_INLINE_BYTES:
        return parse(text)
    return await asyncio.to_thread(parse, text)


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SpecDocument = Annotated[Any, Depends(_spec_document)]
