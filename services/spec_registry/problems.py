"""Errors as `application/problem+json` (RFC 9457) with an `errors` list naming each offending field.

Routes and the repository raise `Problem`s; the handlers below also turn spec validation errors,
request validation errors and plain HTTP errors into problems. Every 4xx names at least one field (a
body field, a parameter, a header, or `(body)`, `(path)`, `(method)`), and only field paths and rules
are said, never submitted values (a value may be a secret, or text meant to mislead whoever reads
the error).
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
from starlette.routing import Match

from libs.logging import get_logger
from libs.spec import SpecError, SpecInvalid, spec_errors

PROBLEM_JSON = "application/problem+json"
NOT_JSON = "not valid JSON text (UTF-8, integers of at most 4300 digits)"
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
    field: str | None = None  # what a problem without `errors` is about; its detail is the rule

    def __init__(
        self,
        detail: str = "",
        errors: list[SpecError] | None = None,
        headers: dict[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers
        self.field = field or self.field

    def body(self) -> ProblemBody:
        errors = [FieldError(field=e.field, rule=e.rule) for e in self.errors]
        if not errors and self.field is not None:
            errors = [FieldError(field=self.field, rule=self.detail or self.title)]
        return ProblemBody(type=self.kind, title=self.title, status=self.status, detail=self.detail, errors=errors)


class BadRequest(Problem):
    status, title, kind = 400, "Bad request", "urn:berth:problem:bad-request"
    field = "(body)"


class Unauthorized(Problem):
    status, title, kind = 401, "Unauthorized", "urn:berth:problem:unauthorized"
    field = "Authorization"

    def __init__(self, detail: str = "a valid 'Authorization: Bearer <token>' header is required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(Problem):
    status, title, kind = 403, "Forbidden", "urn:berth:problem:forbidden"
    field = "Authorization"


class NotFound(Problem):
    status, title, kind = 404, "Not found", "urn:berth:problem:not-found"
    field = "ref"


class MethodNotAllowed(Problem):
    status, title, kind = 405, "Method not allowed", "urn:berth:problem:method-not-allowed"
    field = "(method)"


class Conflict(Problem):
    status, title, kind = 409, "Conflict", "urn:berth:problem:conflict"
    field = "name"


class StaleVersion(Problem):
    status, title, kind = 409, "Spec version is stale", "urn:berth:problem:stale-version"
    field = "If-Match"


class PayloadTooLarge(Problem):
    status, title, kind = 413, "Request body too large", "urn:berth:problem:payload-too-large"
    field = "(body)"


class UnsupportedMediaType(Problem):
    status, title, kind = 415, "Unsupported media type", "urn:berth:problem:unsupported-media-type"
    field = "Content-Type"


class Invalid(Problem):
    status, title, kind = 422, "Invalid request", "urn:berth:problem:invalid"


class PreconditionRequired(Problem):
    status, title, kind = 428, "If-Match required", "urn:berth:problem:precondition-required"
    field = "If-Match"

    def __init__(self) -> None:
        super().__init__('send If-Match: "<spec_id>" of the version your change is based on')


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
        if any(tuple(e["loc"]) == ("header", "if-match") and e["type"] == "missing" for e in exc.errors()):
            return problem_response(PreconditionRequired())
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return problem_response(BadRequest(NOT_JSON))
        errors = spec_errors([_without_location(e) for e in exc.errors()])
        return problem_response(Invalid("the request is invalid", errors))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(_http_problem(request, exc))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(SpecInvalid, on_spec_invalid)
    app.add_exception_handler(RequestValidationError, on_request_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)


def unexpected_error_response(request: Request) -> JSONResponse:
    """The 500 of an error nothing else handled. Answered by the app's own middleware rather than by
    Starlette's outermost one, which re-raises after answering and so makes the server drop the
    keep-alive connection without saying `Connection: close`."""
    log.exception("unhandled error", method=request.method, path=request.url.path)
    return problem_response(Problem("the registry failed to answer; see its log"))


def _http_problem(request: Request, exc: StarletteHTTPException) -> Problem:
    if exc.status_code == 400:  # FastAPI: a JSON body it could not parse (bad UTF-8, 5,000 digits)
        return BadRequest(NOT_JSON)
    if exc.status_code == 404:
        return NotFound("no such resource; see /docs for the API", field="(path)")
    if exc.status_code == 413:
        return PayloadTooLarge(str(exc.detail))
    if exc.status_code == 405:
        methods = _allowed_methods(request)
        return MethodNotAllowed(f"this resource allows {', '.join(methods)}", headers={"Allow": ", ".join(methods)})
    problem = Problem(str(exc.detail), headers=dict(exc.headers or {}))
    problem.status, problem.title = exc.status_code, HTTPStatus(exc.status_code).phrase
    return problem


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own `Allow` names only those of the
    first route whose path matched, and each method is a route of its own here."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def _without_location(error: Mapping[str, Any]) -> dict[str, Any]:
    # FastAPI prefixes where the value came from: ("body", "replicas") -> ("replicas",); a missing
    # body is `(body)`.
    loc = tuple(error["loc"])
    if loc == ("body",):
        return {**error, "loc": ("(body)",)}
    return {**error, "loc": loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc}
