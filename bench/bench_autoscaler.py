"""What one autoscaling decision costs: the HPA algorithm over 1,000 replicas with cpu and memory
utilisation targets (some replicas missing samples, some unready, so the conservative re-check runs),
a request-duration and a concurrency target, and a full stabilisation history (one recommendation every
15 s over the 300 s window).

    .venv/bin/python bench/bench_autoscaler.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.autoscaling.hpa import Inputs, MetricTarget, Policy, Recommendation, Replica, ScaleEvent, decide

REPLICAS = 1000
ROUNDS = 200


def inputs() -> Inputs:
    replicas = tuple(
        Replica(
            f"r{i}",
            phase="Pending" if i % 97 == 0 else "Running",
            ready=i % 50 != 0,
            started_seconds_ago=30.0 if i % 40 == 0 else 3600.0,
            requests={"cpu": 1.0, "memory": 4e9},
            usage={} if i % 31 == 0 else {"cpu": 0.7 + (i % 7) / 100, "memory": 2e9},
        )
        for i in range(REPLICAS)
    )
    metrics = (
        MetricTarget("cpu", "Utilization", 50, per_replica=True),
        MetricTarget("memory", "Utilization", 60, per_replica=True),
        MetricTarget("requestDuration", "Value", 0.5),
        MetricTarget("concurrency", "AverageValue", 10),
    )
    history = tuple(Recommendation(REPLICAS - k, 1000.0 - 15 * k) for k in range(20))
    return Inputs(
        policy=Policy(1, 5000, metrics),
        current_replicas=REPLICAS,
        replicas=replicas,
        deployment_metrics={"requestDuration": 0.8, "concurrency": 12_000},
        recommendations=history,
        scale_up_events=(ScaleEvent(100, 995.0),),
        now=1000.0,
    )


def main() -> None:
    case = inputs()
    decide(case)  # warm up
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        decision = decide(case)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"one decision over {REPLICAS} replicas, 4 metrics: p50 {statistics.median(samples):.0f} µs, "
          f"p99 {p99:.0f} µs ({ROUNDS} rounds) -> {decision.desired_replicas} replicas ({decision.reason})")


if __name__ == "__main__":
    main()
