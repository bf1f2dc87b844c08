"""Tracing set up as a service sets it up (its own process): spans go to the console exporter when
OTEL_TRACES_EXPORTER=console and nowhere without configuration, and log lines written inside a span
carry its trace_id and span_id either way. (OTLP export: tests/integration/test_tracing.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
from opentelemetry import trace
from libs.logging import configure_logging, get_logger
from libs.telemetry import configure_tracing

configure_logging("probe")
configure_tracing("probe")
with trace.get_tracer("probe").start_as_current_span("probe-span"):
    get_logger("probe").info("inside")
get_logger("probe").info("outside")
"""


def run(**otel: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """Stdout, and the JSON log lines by event."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(REPO), **otel)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.stdout, {line["event"]: line for line in lines}


def test_console_exporter_prints_spans_and_log_lines_name_their_trace() -> None:
    stdout, logs = run(OTEL_TRACES_EXPORTER="console")
    span = json.loads(stdout)
    assert span["name"] == "probe-span"
    assert span["resource"]["attributes"]["service.name"] == "berth-probe"
    assert span["context"]["trace_id"] == f"0x{logs['inside']['trace_id']}"
    assert span["context"]["span_id"] == f"0x{logs['inside']['span_id']}"
    assert "trace_id" not in logs["outside"]


def test_without_configuration_nothing_is_exported_but_log_lines_still_name_the_trace() -> None:
    stdout, logs = run()
    assert stdout == ""
    assert len(logs["inside"]["trace_id"]) == 32 and len(logs["inside"]["span_id"]) == 16
