"""What one request may carry, checked before anything reads it.

The body limit is that of a spec (libs/spec.MAX_SPEC_BYTES): a spec is the largest thing the API
takes, and everything it takes must fit, with its event around it, in one message of the bus
(nats-server's max_payload, 1 MiB unless configured lower; the registry checks it when it starts).
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.spec import MAX_SPEC_BYTES
from services.spec_registry.problems import PayloadTooLarge, problem_response

MAX_BODY_BYTES = MAX_SPEC_BYTES
MAX_SECRET_CHARS = 64 * 1024  # certificates and key files fit; at 4 bytes a character still far below a message
# What a SpecApplied event adds around its spec (ids, name, slug, trace headers), generously.
EVENT_ENVELOPE_BYTES = 64 * 1024
TOO_LARGE = f"the request body is larger than {MAX_BODY_BYTES} bytes (the limit of every request)"


class BodyLimit:
    """ASGI middleware: 413 for a body over MAX_BODY_BYTES, by its Content-Length before reading it,
    or, for a chunked body, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._limit:
            await problem_response(PayloadTooLarge(TOO_LARGE))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._limit:
                # FastAPI turns any other exception met while reading a body into a 400.
                raise HTTPException(413, TOO_LARGE)
            return message

        await self._app(scope, limited, send)
