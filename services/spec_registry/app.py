"""Wiring of the spec-registry: the FastAPI app (built without I/O by `create_app`), its lifespan
(migrations, admin bootstrap, the bus through the service kit, outbox relay, status consumer) and the
service's `main`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from nats.js.api import DeliverPolicy
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from libs.bus import (
    ALERT_EVENTS, DURABLE_REGISTRY_METRICS, DURABLE_REGISTRY_STATUS, METRICS, METRICS_SUMMARIES, STATUS, STATUS_EVENTS,
)
from libs.config import Settings
from libs.events import DeploymentMetricsSummarized, DeploymentStatusChanged
from libs.kit import Service
from libs.logging import get_logger
from libs.sealing import Sealer
from libs.secrets import SecretStore
from libs.store import migrate, open_store
from services.spec_registry.alerts import AlertBoard
from services.spec_registry.auth import TokenCache, bootstrap_admin
from services.spec_registry.live import DeploymentFeed
from services.spec_registry.metrics import REQUESTS
from services.spec_registry.outbox import OutboxRelay
from services.spec_registry.limits import EVENT_ENVELOPE_BYTES, MAX_SPEC_BYTES, BodyLimit
from services.spec_registry.problems import (
    NotFound,
    install_problem_handlers,
    problems_in_openapi,
    unexpected_error_response,
)
from services.spec_registry.registry import Registry
from services.spec_registry.relay_lock import RelayLock
from services.spec_registry.repository import Repository
from services.spec_registry.routes import admin, alerts, deployments, events, ops

log = get_logger("spec_registry")
# The web console (docs/console.md): static ES modules shipped as package data, no build step.
CONSOLE = Path(__file__).parent / "console"
# The console's pages run only their own files and talk only to this origin: an injected script could
# neither run nor send the token elsewhere.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def create_app(settings: Settings) -> FastAPI:
    """The registry's ASGI app. Nothing is connected until its lifespan starts."""
    app = FastAPI(
        title="berth spec-registry",
        version=_version(),
        description="Deployments, spec versions and their history, status, projects, tokens and secrets.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    # Compressed answers for clients that ask (the console's list of 500 deployments: 450 KiB of
    # JSON); Starlette leaves text/event-stream alone, so the SSE feed is not buffered.
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestLog)  # added last, so outermost: it also sees what BodyLimit refuses
    for module in (ops, events, deployments, alerts, admin):  # events before deployments/{ref}
        app.include_router(module.router)
    # The console under /ui: its pages call the same API with the user's token, like the CLI.
    app.mount("/ui", ConsoleFiles(directory=CONSOLE, html=True), name="console")
    app.add_api_route("/ui", lambda: RedirectResponse("/ui/"), include_in_schema=False)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    # A server span per request, continuing the caller's W3C `traceparent`; the events the request
    # commits keep its context (outbox headers), so the trace goes on through every service.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="/healthz$,/metrics$", exclude_spans=["receive", "send"])
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = problems_in_openapi(FastAPI.openapi(app))
    return app.openapi_schema


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await asyncio.to_thread(migrate, settings.sqlalchemy_url)
    store = open_store(settings.sqlalchemy_url)
    service = Service("spec-registry", settings)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(store.dispose)
        repo = Repository(store)
        await asyncio.to_thread(bootstrap_admin, settings, repo)

        cleanup.push_async_callback(service.stop)
        js = await service.connect()
        connection = await service.broker.connect()  # the same connection: for the logs request/reply
        _check_max_payload(connection.max_payload)
        relay = OutboxRelay(repo, js, lock=RelayLock(settings.sqlalchemy_url))
        repo.on_commit = relay.hand_over

        feed = DeploymentFeed()

        async def on_status(event: DeploymentStatusChanged) -> None:
            if await asyncio.to_thread(repo.save_status, event) and feed.clients(event.project):
                try:
                    stored = await asyncio.to_thread(repo.get_deployment, event.project, event.deployment_id)
                except NotFound:
                    return  # deleted since: its `deleted` went out with the delete
                feed.changed(stored)

        # Pull: several registry instances share the read model's writes.
        service.subscribe(
            STATUS_EVENTS,
            stream=STATUS,
            durable=DURABLE_REGISTRY_STATUS,
            events=(DeploymentStatusChanged,),
            handler=on_status,
            pull=True,
        )
        async def on_metrics(event: DeploymentMetricsSummarized) -> None:
            await asyncio.to_thread(repo.save_metrics, event)

        service.subscribe(  # only the newest figures matter: a new consumer starts from them
            METRICS_SUMMARIES, stream=METRICS, durable=DURABLE_REGISTRY_METRICS,
            events=(DeploymentMetricsSummarized,), handler=on_metrics, pull=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )  # fmt: skip
        await service.start()
        board = AlertBoard()
        await service.watch_latest(ALERT_EVENTS, board.on_event)  # the alerts read model

        secrets = await SecretStore.open(js, Sealer.from_settings(settings))  # it only seals
        if indexed := await asyncio.to_thread(repo.backfill_secret_names, await secrets.stored_names()):
            log.info("secret names indexed", secrets=indexed)
        app.state.registry = Registry(repo, secrets, relay, connection, feed, board)
        app.state.tokens = TokenCache(repo)
        app.state.bus = connection
        relay.start()
        service.on_stop(relay.stop)  # runs before the bus closes: the pass under way can finish
        log.info("registry ready", api=settings.resolved_api_url)
        yield


class RequestLog:
    """ASGI middleware: count and log every request by its route template when its answer starts
    (headers, bodies and tokens are not logged); answer an error nothing else handled with a 500.

    Plain ASGI rather than `app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the rest of
    the app in a task of its own and passes the response through a memory stream, which cost more
    per request than the registry's own work on a spec update (docs/benchmarks.md)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def observed(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                _log_request(scope, message["status"], started)
            await send(message)

        try:
            await self._app(scope, receive, observed)
        except Exception:
            if answered:  # too late for another answer; the server closes the connection
                raise
            await unexpected_error_response(Request(scope))(scope, receive, observed)


def _log_request(scope: Scope, status: int, started: float) -> None:
    template = getattr(scope.get("route"), "path", "unmatched")
    method = scope["method"]
    REQUESTS.labels(method, template, str(status)).inc()
    log.info(
        "request", method=method, route=template, status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )  # fmt: skip


def _check_max_payload(max_payload: int) -> None:
    """Every spec the API accepts must fit in one message of the bus; say so at once if it cannot
    (a nats-server configured with a max_payload below berth's spec limit)."""
    if max_payload < MAX_SPEC_BYTES + EVENT_ENVELOPE_BYTES:
        log.error(
            "the bus carries smaller messages than berth accepts specs: the relay will set such specs aside",
            max_payload=max_payload,
            needed=MAX_SPEC_BYTES + EVENT_ENVELOPE_BYTES,
        )


def _version() -> str:
    try:
        return version("berth")
    except PackageNotFoundError:
        return "0.0.0"


class _Server(uvicorn.Server):
    """uvicorn's main loop wakes ten times a second (to notice should_exit, and to renew the Date header
    each tenth tick); this one once a second, renewing the header each time, and at once on `stop`:
    the registry's largest idle cost after the bus (docs/benchmarks.md)."""

    TICK_SECONDS = 1.0

    def __init__(self, config: uvicorn.Config, stop: asyncio.Event) -> None:
        super().__init__(config)
        self._stop = stop

    async def main_loop(self) -> None:
        while not await self.on_tick(0):  # counter 0: the Date header is renewed at every tick
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.TICK_SECONDS):
                    await self._stop.wait()
            if self._stop.is_set():
                self.should_exit = True


async def main(settings: Settings, stop: asyncio.Event) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = _Server(config, stop)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
    if not server.started:
        raise SystemExit("the registry did not start; see the log above")
