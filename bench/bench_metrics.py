"""The metrics history: ingest rate, size after a day, and the cost of a day's query.

1. Ingest: router reports (500 deployments x 3 replicas, as JSON off the bus) decoded and folded into
   the open slots, closed slots written to SQLite every 10 simulated seconds: reports/s sustained.
2. A day: 24 h of simulated time (timestamps made up, nothing waits) for 500 deployments x 3
   replicas, one report per deployment per 10-s slot (the router's two 5-s windows of a slot add up
   in the same rows, so the rows are those of real traffic), downsampled every 5 min as the service
   does: the process RSS and the database's size on disk.
3. Query: a 24 h p99 series at 1-minute steps for one deployment (1,440 points, every series the
   answer holds, replicas included), ms.

    .venv/bin/python bench/bench_metrics.py [--deployments 500] [--hours 24]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report, timed
from libs.events import LATENCY_BUCKETS_SECONDS, ReplicaRequests, RequestMetricsReported, decode_event
from services.metrics.history import History, Retention
from services.metrics.store import Store, open_store

REPLICAS = 3
T0 = 1_800_000_000
SLOT = 10
QUERIED = 7
BUCKETS = len(LATENCY_BUCKETS_SECONDS)


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def a_report(deployment: int, at: float, build: bool = True) -> RequestMetricsReported:
    """One window of one deployment: ~50 requests spread over a few buckets, split over 3 replicas."""
    buckets = [0] * BUCKETS
    buckets[2], buckets[3], buckets[5], buckets[7] = 30, 12, 6, (deployment + int(at)) % 3
    per = [[c // REPLICAS + (1 if i == 0 else 0) * (c % REPLICAS) for c in buckets] for i in range(REPLICAS)]
    fields = dict(
        deployment_id=f"d{deployment:04d}", project="p", slug=f"model-{deployment}", window_seconds=5.0,
        requests=sum(buckets), errors=1, client_errors=2, upstream_failures=0, latency_sum_seconds=4.2,
        latency_buckets=buckets, in_flight=2, revisions=[],
        replicas=[ReplicaRequests.model_construct(replica_id=f"d{deployment}-r{i}", revision_id="rev1",
                                                  requests=sum(b), errors=0, latency_buckets=b)
                  for i, b in enumerate(per)],
        occurred_at=datetime.fromtimestamp(at, UTC),
    )  # fmt: skip
    return RequestMetricsReported(**fields) if build else RequestMetricsReported.model_construct(**fields)


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("metrics.db*"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--hours", type=float, default=24.0, help="Simulated span of every deployment.")
    parser.add_argument("--query-hours", type=float, default=24.0,
                        help="Simulated span of the deployment queried (beyond --hours it reports alone).")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall figures suffer; CPU figures less)")
    deployments, slots = args.deployments, int(args.hours * 3600 / SLOT)
    process = psutil.Process(os.getpid())
    directory = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    clock = Clock()
    history = History(Store(open_store(f"sqlite:///{directory / 'metrics.db'}")), Retention(), clock)
    rss_before = process.memory_info().rss

    # 1. Ingest as the service does it: JSON off the bus, decoded, folded; closed slots written.
    payloads = [a_report(d, T0 + 5).model_dump_json().encode() for d in range(deployments)]
    ingested = 0
    cpu = time.process_time()
    with timed() as ingest:
        for window in range(24):  # 2 minutes of 5-s windows
            clock.now = T0 + window * 5 + 5
            for payload in payloads:
                history.requests_reported(decode_event(payload))  # type: ignore[arg-type]
            ingested += len(payloads)
            history.flush()
    ingest_rate, ingest_cpu = ingest.rate(ingested), ingested / (time.process_time() - cpu)

    # 2. A day of simulated reports.
    history.downsample()
    started, cpu = time.perf_counter(), time.process_time()
    for slot in range(12, slots):
        at = T0 + slot * SLOT
        clock.now = at + 5
        for d in range(deployments):
            history.requests_reported(a_report(d, at + 5, build=False))
        clock.now = at + SLOT
        history.flush()
        if slot % 30 == 0:  # every 5 minutes, as the service's timer
            history.downsample()
        if slot % 8640 == 0:
            print(f"  {slot * SLOT / 3600:.0f} h simulated in {time.perf_counter() - started:.0f} s", flush=True)
    history.downsample()
    history.expire()
    disk_all = disk_bytes(directory)
    for slot in range(slots, int(args.query_hours * 3600 / SLOT)):  # the queried deployment goes on alone
        at = T0 + slot * SLOT
        clock.now = at + 5
        history.requests_reported(a_report(QUERIED, at + 5, build=False))
        clock.now = at + SLOT
        history.flush()
        if slot % 30 == 0:
            history.downsample()
    slots = max(slots, int(args.query_hours * 3600 / SLOT))
    fill_seconds, fill_cpu = time.perf_counter() - started, time.process_time() - cpu
    reports = deployments * (int(args.hours * 3600 / SLOT) - 12) + (slots - int(args.hours * 3600 / SLOT))
    rss_after = process.memory_info().rss
    disk = disk_all

    # 3. A day's p99 at 1-minute steps for one deployment.
    clock.now = T0 + slots * SLOT
    timings, cpu_timings = [], []
    for _ in range(5):
        began, cpu = time.perf_counter(), time.process_time()
        answer = history.series(f"d{QUERIED:04d}", window=int(args.query_hours * 3600), step=60, version=None)
        timings.append(time.perf_counter() - began)
        cpu_timings.append(time.process_time() - cpu)
    points = len(answer["series"]["latency_p99"])
    filled = sum(1 for _, v in answer["series"]["latency_p99"] if v is not None)

    report(
        f"metrics history: {deployments} deployments x {REPLICAS} replicas, {args.hours:g} h simulated",
        [
            ("ingest (decode + fold + write), sustained", f"{ingest_rate:,.0f} reports/s wall, "
                                                          f"{ingest_cpu:,.0f} per CPU-second"),
            ("simulated day written in", f"{fill_seconds:.0f} s wall, {fill_cpu:.0f} CPU-s "
                                         f"({reports / fill_cpu:,.0f} slot-reports per CPU-s)"),
            ("RSS after the day", f"{rss_after / 2**20:.0f} MiB (+{(rss_after - rss_before) / 2**20:.0f} MiB over the start)"),
            ("disk (SQLite + WAL) after the span", f"{disk / 2**20:.0f} MiB ({disk / deployments / 2**20:.2f} MiB per deployment,"
                                                   f" {disk / deployments / 2**20 * 24 / args.hours:.1f} MiB a day)"),
            (f"{args.query_hours:g} h p99 at 1-min steps, one deployment", f"median {statistics.median(timings) * 1000:.0f} ms wall, "
                                                        f"{statistics.median(cpu_timings) * 1000:.0f} ms CPU "
                                                        f"for {points} points, {filled} with data"),
        ],
    )  # fmt: skip
    shutil.rmtree(directory)


if __name__ == "__main__":
    main()
