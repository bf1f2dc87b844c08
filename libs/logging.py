"""structlog JSON logs. Bind `deployment_id`, `spec_id` and `replica_id` with `bind()`; lines written
where a span is current carry its `trace_id` and `span_id`; fields whose name says they hold a secret
are masked before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict

_SECRET_KEY = re.compile(r"(secret|password|token|authorization|credential|basic_?auth)", re.I)
REDACTED = "[redacted]"


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


def _add_trace_ids(_: Any, __: str, event: EventDict) -> EventDict:
    """Where a span is current, its trace_id and span_id (hex, as tracing backends show them), so a
    log line can be found from its trace and the other way round."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("trace_id", trace.format_trace_id(span.trace_id))
        event.setdefault("span_id", trace.format_span_id(span.span_id))
    return event


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Configure structlog for one service process, and route the standard library's logging (uvicorn,
    alembic, nats-py ...) and Python warnings through the same processors: every line is one JSON object."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (print() writes the line and its newline apart): the router's workers
        # share one log file, and their lines must not interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # `warnings.warn` lines become log lines of the `py.warnings` logger


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def bind(**ids: str | None) -> None:
    """Bind ids (deployment_id, spec_id, replica_id) to every log line of the current task."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


class LibraryLogger:
    """A structlog logger with the `log(level, msg, exc_info=, extra=)` call that libraries such as
    FastStream make: their context becomes fields of the JSON line."""

    def __init__(self, name: str) -> None:
        self._log = get_logger(name)

    def log(self, level: int, msg: Any, /, *, exc_info: Any = None, extra: Any = None) -> None:
        fields = dict(extra) if extra else {}
        if _empty_pull(str(msg), exc_info):
            level, exc_info = logging.DEBUG, None
            fields["reason"] = "a pull found no message within its wait; the pull starts again"
        if exc_info:
            fields["exc_info"] = exc_info
        self._log.log(level, str(msg), **fields)


def _empty_pull(msg: str, exc_info: Any) -> bool:
    """FastStream restarting a pull subscriber's loop because nats-py's batch fetch raised the plain
    `TimeoutError`: on an idle stream it does when the server's "request timeout" status arrives just
    as the fetch's own deadline runs out (its other "no message" paths raise nats.errors.TimeoutError,
    which FastStream expects). Nothing is lost (the loop pulls again at once), so it is no error."""
    return "raised an exception, retrying" in msg and type(exc_info) is TimeoutError
