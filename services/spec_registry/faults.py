"""Test-only fault injection. Never set in production.

`BERTH_FAULT_INJECT=crash_after_commit` kills the registry right after a spec (and its outbox event) is
committed, before the event is published; `crash_after_publish` kills it after JetStream acknowledged
an event, before the outbox row is marked published. Exit code 137 is what SIGKILL gives. The tests
use these to prove that the outbox neither loses nor duplicates an event across a crash.
"""

from __future__ import annotations

import os
from typing import Literal

FAULT_ENV = "BERTH_FAULT_INJECT"
CrashPoint = Literal["crash_after_commit", "crash_after_publish"]


def crash_point(point: CrashPoint) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os._exit(137)
