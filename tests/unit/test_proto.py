"""proto/ holds contracts generated from the code; this fails when they drift (run `make proto`)."""

from __future__ import annotations

import subprocess
import sys

from berth.proto import PROTO_DIR, asyncapi_document, drifted
from libs.events import ALL_EVENTS


def test_proto_matches_the_code() -> None:
    assert drifted() == [], f"regenerate with `make proto`; stale under {PROTO_DIR}"


def test_asyncapi_documents_every_event_with_its_schema() -> None:
    document = asyncapi_document()
    channels = " ".join(document["channels"])
    for event in ALL_EVENTS:
        assert event.__name__ in channels
    assert "SpecApplied" in str(document["components"]["schemas"])


def test_make_proto_checks_and_writes_them() -> None:
    """`make proto -n` shows the command the message above sends users to; run it in check mode."""
    root = PROTO_DIR.parent
    make = ["make", "--no-print-directory", "-n", "proto"]
    shown = subprocess.run(make, cwd=root, capture_output=True, text=True, check=True).stdout
    command = next(line.split() for line in shown.splitlines() if line.endswith(" write"))
    module = command[command.index("-m") + 1]
    result = subprocess.run([sys.executable, "-m", module, "check"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
