"""A tiny benchmark harness: time a block, turn counts into rates, print a figure table."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stopwatch:
    started: float = field(default_factory=time.perf_counter)
    stopped: float | None = None

    @property
    def seconds(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    def rate(self, count: int) -> float:
        return count / self.seconds


@contextmanager
def timed() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    try:
        yield watch
    finally:
        watch.stopped = time.perf_counter()


def percentiles_ms(samples: list[float]) -> str:
    """p50 / p95 / p99 of durations in seconds, as milliseconds."""
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


def report(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(title)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


ECHO = str(Path(__file__).resolve().parents[1] / "tests" / "servers" / "echo.py")


def to_listening(prefix: list[str], port: int) -> float:
    """Seconds from spawning tests/servers/echo.py on `port` (under `prefix`, e.g. the shim, or
    directly) until the port accepts, tried every ~1 ms."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | {"PORT": str(port), "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    process = subprocess.Popen(
        [*prefix, sys.executable, ECHO], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return time.perf_counter() - began
            except OSError:
                if process.poll() is not None or time.perf_counter() - began > 60:
                    raise SystemExit(f"{prefix or ECHO} did not listen") from None
                time.sleep(0.001)
    finally:
        process.terminate()
        process.wait(10)
