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
SPEC_SCHEMA = {"$ref": "#/components/schemas/DeploymentSpec"}
SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A deployment spec, YAML or JSON.",
        "content": {"application/yaml": {"schema": SPEC_SCHEMA}, "application/json": {"schema": SPEC_SCHEMA}},
    }
}


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _spec_document(request: Request) -> Any:
    """The parsed spec body (validation comes later, so that every error is reported at once).

    Parsed in a worker thread: even a body within the size limit takes a while to parse, and the
    event loop serves every other request meanwhile."""
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
    return await asyncio.to_thread(parse, text)


RegistryDep = Annotated[Registry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SpecDocument = Annotated[Any, Depends(_spec_document)]
