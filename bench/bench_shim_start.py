"""What the local runtime's shim adds before a replica's command runs.

    .venv/bin/python bench/bench_shim_start.py [--rounds 30] [--before DIR]

For each checkout (this one, and `--before DIR` when given), alternating round by round, starts the
shim as that checkout's runtime does (`python -I shim.py`, with `-S` where its libs/runtime/local.py
passes it) and measures:
- spawn -> exec: from starting the shim until its command runs (the command is `date +%s.%N`, which
  prints when it ran);
- the shim's CPU (user + system of the shim and that command, which costs ~1 ms);
- spawn -> port accepts: the shim running tests/servers/echo.py, tried every ~1 ms; beside it the same
  command spawned directly (no shim), the app's own start.
Medians and p90 over the rounds. On 2 shared cores the shim's CPU is spent beside the command's start,
so it is the figure that holds under load; the times follow the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report, to_listening  # noqa: E402
from libs.natsd import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def shim_command(tree: Path) -> Callable[[str], list[str]]:
    """The shim of `tree` as its runtime starts it, for a replica directory."""
    flags = ["-I", "-S"] if '"-S", shim.__file__' in (tree / "libs/runtime/local.py").read_text() else ["-I"]
    shim = str(tree / "libs/runtime/shim.py")
    return lambda directory: [sys.executable, *flags, shim, "--dir", directory, "--"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def to_exec(shim: Callable[[str], list[str]]) -> tuple[float, float]:
    """(seconds from spawn until the command ran, CPU seconds of the shim and the command)."""
    with tempfile.TemporaryDirectory(prefix="berth-bench-shim-") as directory:
        cpu, began = children_cpu(), time.time()
        subprocess.run([*shim(directory), "date", "+%s.%N"], check=True, stdout=subprocess.DEVNULL)
        cpu = children_cpu() - cpu
        printed = (Path(directory) / "output.log").read_text().split()[1]  # after the shim's stamp
        return float(printed) - began, cpu


def summary(samples: list[float], unit: float = 1000) -> str:
    cuts = statistics.quantiles(samples, n=10, method="inclusive")
    return f"median {statistics.median(samples) * unit:6.1f} ms   p90 {cuts[8] * unit:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--before", type=Path, help="another checkout (e.g. main), measured in the same rounds")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO} if args.before else {"this tree": REPO}
    shims = {name: shim_command(tree) for name, tree in trees.items()}
    found: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        found.setdefault("echo directly: spawn -> port accepts", []).append(to_listening([], free_port()))
        for name, shim in shims.items():
            exec_seconds, cpu = to_exec(shim)
            found.setdefault(f"{name}: spawn -> exec", []).append(exec_seconds)
            found.setdefault(f"{name}: shim CPU", []).append(cpu)
            with tempfile.TemporaryDirectory(prefix="berth-bench-shim-") as directory:
                found.setdefault(f"{name}: spawn -> port accepts", []).append(to_listening(shim(directory), free_port()))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    report(
        f"the shim's start, {args.rounds} rounds, {os.cpu_count()} cores, load average {load}",
        [(label, summary(samples)) for label, samples in sorted(found.items())],
    )


if __name__ == "__main__":
    main()
