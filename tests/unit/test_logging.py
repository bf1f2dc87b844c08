"""Logs as a service writes them (its own process): every line one JSON object, whoever writes it —
structlog, the standard library's loggers (uvicorn, alembic, nats-py) or Python warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, warnings
from libs.logging import LibraryLogger, configure_logging, get_logger

configure_logging("probe")
get_logger("probe").info("from structlog", api_token="t0k3n-value")
logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:8080")
logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("nats.aio.client").exception("nats: encountered error")
warnings.warn("a deprecated thing", DeprecationWarning)
warnings.warn("consumers do not scale", RuntimeWarning)
faststream = LibraryLogger("faststream")
faststream.log(logging.ERROR, "pull-task raised an exception, retrying...", exc_info=TimeoutError())
faststream.log(logging.ERROR, "push-task raised an exception, retrying...", exc_info=ValueError("real"))
"""


def run() -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == ""
    return [json.loads(line) for line in done.stderr.splitlines()]  # fails on any line that is not JSON


def test_every_line_is_json_whoever_writes_it() -> None:
    lines = {line["event"].splitlines()[0]: line for line in run()}

    assert lines["from structlog"]["api_token"] == "[redacted]"
    uvicorn = lines["Uvicorn running on http://127.0.0.1:8080"]
    assert (uvicorn["logger"], uvicorn["level"], uvicorn["service"]) == ("uvicorn.error", "info", "probe")
    assert lines["Running upgrade  -> 0001"]["logger"] == "alembic.runtime.migration"
    failed = lines["nats: encountered error"]
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"]
    warned = [line for line in lines.values() if line.get("logger") == "py.warnings"]
    assert sorted(w["level"] for w in warned) == ["warning", "warning"]
    assert any("RuntimeWarning: consumers do not scale" in w["event"] for w in warned)


def test_an_empty_pull_is_not_an_error_and_a_real_failure_is() -> None:
    lines = run()
    assert not any(line["event"].startswith("pull-task") for line in lines), "debug: not shown at INFO"
    [real] = [line for line in lines if line["event"].startswith("push-task")]
    assert real["level"] == "error" and "ValueError: real" in real["exception"]
