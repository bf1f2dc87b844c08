"""The kubernetes runtime against kmock's emulator over real HTTP (tests/kube.py): N workloads applied,
then a full resync (every workload applied again, unchanged), then one replica count changed.

    .venv/bin/python bench/bench_kubernetes.py [--deployments 200]

Reports: seconds to apply N new workloads (each a Secret and a Deployment, by server-side apply), and
per workload in the resync the API requests made, split into reads and writes (target: zero writes when
nothing changed). The emulator runs in the same process and event loop; the client's calls run in
worker threads, as in the scheduler. The times are the emulator's more than berth's: kmock matches
every request against every stored object and reaction (its filtering is most of a profile), so its
cost per request grows with the objects it holds and 1,000 workloads take many minutes; the request
counts are what a real API server would see.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import functools  # noqa: E402

import kmock  # noqa: E402
from aiohttp.test_utils import RawTestServer  # noqa: E402

from libs.runtime.base import Workload  # noqa: E402
from libs.runtime.kubernetes.runtime import KubernetesRuntime  # noqa: E402
from tests.kube import RESOURCES, ApiServerEmulator, write_kubeconfig  # noqa: E402


def workload(i: int) -> Workload:
    revision = f"{i:016x}"
    return Workload(
        name=f"bench-model-{i}-{revision}", deployment_id=f"dep-{i}", project="bench", slug=f"model-{i}",
        spec_id=f"spec-{i}", replicas=2, command=("python", "-m", "server"), image="ghcr.io/acme/model:1",
        env={"PLAIN": "1", "TOKEN": "secret-value"}, secret_env=frozenset({"TOKEN"}), ports=(8080,),
        revision_id=revision, health_checks={"readiness": {"path": "/ready"}},
    )


def count(emulator: ApiServerEmulator, since: int) -> Counter[str]:
    verbs: Counter[str] = Counter()
    for request in list(emulator)[since:]:
        verbs["write" if request.method.value in ("POST", "PATCH", "PUT", "DELETE") else "read"] += 1
    return verbs


async def main(n: int) -> None:
    server_cls = functools.partial(RawTestServer, handler_cancellation=True)
    async with ApiServerEmulator() as emulator, kmock.Server(emulator, server_cls=server_cls) as server:
        for name, info in RESOURCES.items():
            emulator.resources[name] = info
        kubeconfig = write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig", str(server.url).rstrip("/"), "models")
        runtime = KubernetesRuntime("models", kubeconfig=kubeconfig)
        await runtime.start()
        workloads = [workload(i) for i in range(n)]
        try:
            start, mark = time.perf_counter(), len(list(emulator))
            await asyncio.gather(*(runtime.apply(w) for w in workloads))
            applied = time.perf_counter() - start
            first = count(emulator, mark)
            start, mark = time.perf_counter(), len(list(emulator))
            await asyncio.gather(*(runtime.apply(w) for w in workloads))
            resync = time.perf_counter() - start
            idle = count(emulator, mark)
            mark = len(list(emulator))
            await runtime.apply(replace(workloads[0], replicas=3))
            scaled = count(emulator, mark)
        finally:
            await runtime.close()
    print(f"{n} workloads applied in {applied:.1f} s ({first['write']} writes, {first['read']} reads)")
    print(f"resync with nothing changed: {resync:.1f} s; per workload {idle['write'] / n:.2f} writes, "
          f"{idle['read'] / n:.2f} reads")
    print(f"one replica count changed: {scaled['write']} write(s) (the scale subresource), {scaled['read']} reads "
          "(+ the Pods it lists when scaling down)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployments", type=int, default=200)
    asyncio.run(main(parser.parse_args().deployments))
