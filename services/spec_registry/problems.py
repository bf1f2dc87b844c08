"""Errors as `application/problem+json` (RFC 9457) with an `errors` list naming each offending field.

Routes and the repository raise `Problem`s; the handlers below also turn spec validation errors,
request validation errors and plain HTTP errors into problems. Only field paths and rules are
echoed, never submitted values (a value may be a secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.logging import get_logger
from libs.spec import SpecError, SpecInvalid, spec_errors

PROBLEM_JSON = "application/problem+json"
log = get_logger("spec_registry")


class FieldError(BaseModel):
    field: str
    rule: str


class ProblemBody(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] = []


class Problem(Exception):
    status = 500
    title = "Internal error"
    kind = "about:blank"

    def __init__(
        self, detail: str = "", errors: list[SpecError] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers

    def body(self) -> ProblemBody:
        return ProblemBody(
            type=self.kind,
            title=self.title,
            status=self.status,
            detail=self.detail,
            errors=[FieldError(field=e.field, rule=e.rule) for e in self.errors],
        )


class Unauthorized(Problem):
    status, title, kind = 401, "Unauthorized", "urn:berth:problem:unauthorized"

    def __init__(self, detail: str = "a valid 'Authorization: Bearer <token>' header is required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(Problem):
    status, title, kind = 403, "Forbidden", "urn:berth:problem:forbidden"


class NotFound(Problem):
    status, title, kind = 404, "Not found", "urn:berth:problem:not-found"


class Conflict(Problem):
    status, title, kind = 409, "Conflict", "urn:berth:problem:conflict"


class StaleVersion(Problem):
    status, title, kind = 409, "Spec version is stale", "urn:berth:problem:stale-version"


class UnsupportedMediaType(Problem):
    status, title, kind = 415, "Unsupported media type", "urn:berth:problem:unsupported-media-type"


class Invalid(Problem):
    status, title, kind = 422, "Invalid request", "urn:berth:problem:invalid"


class PreconditionRequired(Problem):
    status, title, kind = 428, "If-Match required", "urn:berth:problem:precondition-required"


class BadGateway(Problem):
    status, title, kind = 502, "Bad answer from a berth service", "urn:berth:problem:bad-gateway"


class Unavailable(Problem):
    status, title, kind = 503, "Service unavailable", "urn:berth:problem:unavailable"


def problem_response(problem: Problem) -> JSONResponse:
    return JSONResponse(
        problem.body().model_dump(mode="json"),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def responses(*problems: type[Problem]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems a route may answer."""
    return {p.status: {"model": ProblemBody, "description": p.title, "content": {PROBLEM_JSON: {}}} for p in problems}


def problems_in_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a response model under the route's media type (application/json); problem
    answers are application/problem+json, so move their schema there."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_JSON in content and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return schema


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_spec_invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SpecInvalid)
        return problem_response(Invalid("the spec is invalid", exc.errors))

    async def on_request_invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = spec_errors([_without_location(e) for e in exc.errors()])
        return problem_response(Invalid("the request is invalid", errors))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem = Problem(str(exc.detail), headers=dict(exc.headers or {}))
        problem.status, problem.title = exc.status_code, HTTPStatus(exc.status_code).phrase
        return problem_response(problem)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", method=request.method, path=request.url.path)
        return problem_response(Problem("the registry failed to answer; see its log"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(SpecInvalid, on_spec_invalid)
    app.add_exception_handler(RequestValidationError, on_request_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def _without_location(error: Mapping[str, Any]) -> dict[str, Any]:
    # FastAPI prefixes where the value came from: ("body", "replicas") -> ("replicas",)
    loc = tuple(error["loc"])
    return {**error, "loc": loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc}
