"""Starting a server: a process that dies before it listens is reported at once, with its exit code."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from libs.natsd import ProcessExited, free_port, wait_for_port


def test_a_process_that_exits_before_listening_fails_the_wait_at_once() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    began = time.monotonic()
    with pytest.raises(ProcessExited, match="exited with code 3"):
        wait_for_port("127.0.0.1", free_port(), timeout=30, process=process)
    assert time.monotonic() - began < 10  # not the 30 s timeout


def test_nothing_listening_times_out() -> None:
    with pytest.raises(TimeoutError, match="nothing listens"):
        wait_for_port("127.0.0.1", free_port(), timeout=0.3)
