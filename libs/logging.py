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
    """Configure structlog (and the stdlib root logger) for one service process."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_trace_ids,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")


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
        if exc_info:
            fields["exc_info"] = exc_info
        self._log.log(level, str(msg), **fields)
