"""A tiny benchmark harness: time a block, turn counts into rates, print a figure table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


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
