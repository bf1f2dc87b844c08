"""Apply -> Ready for a deployment whose git-lfs integration is not cached yet, versus one whose
integration content is already cached (a second deployment of the same repository and commit).

In-process health-monitor, integrations service and scheduler on a nats-server of their own; the
replica is `python -m http.server`; the repository (one LFS file of --mb MB) is served over file://.

    .venv/bin/python bench/bench_integrations_apply.py [--mb 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers lives beside bench/

from libs.bus import ensure_streams, make_broker, publish  # noqa: E402
from libs.config import Settings  # noqa: E402
from libs.events import DeploymentStatusChanged, SpecApplied, decode_event, new_id  # noqa: E402
from libs.natsd import free_port, start_nats_server  # noqa: E402
from libs.runtime.local import LocalRuntime  # noqa: E402
from libs.spec import validate_spec  # noqa: E402
from services.health_monitor import start_health_monitor  # noqa: E402
from services.integrations.app import start_integrations  # noqa: E402
from services.scheduler import start_scheduler  # noqa: E402
from tests.servers.git_http import make_lfs_repo  # noqa: E402


async def run(mb: int, tmp: Path) -> tuple[float, float]:
    make_lfs_repo(tmp / "repo", {"weights.bin": os.urandom(mb * 1024 * 1024)})
    port = free_port()
    server = start_nats_server(tmp / "jetstream", port)
    url = f"nats://127.0.0.1:{port}"
    settings = Settings(
        data_dir=tmp / "berth", nats_url=url, reconcile_interval_seconds=1.0, stop_grace_seconds=2.0,
        scheduler_ops_port=0, health_monitor_ops_port=0, integrations_ops_port=0, log_level="WARNING",
        secrets_key="m6Vd0S3HbIYqK0c1vJx1zPpYtBfQm3cFQ9y2n8rL0Ws=", _env_file=None,
    )  # fmt: skip
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream())
    ready: dict[str, float] = {}

    async def on_status(message: nats.aio.msg.Msg) -> None:
        event = decode_event(message.data)
        if isinstance(event, DeploymentStatusChanged) and event.phase == "Ready":
            ready.setdefault(event.deployment_id, time.perf_counter())

    await nc.subscribe("berth.status.v1.>", cb=on_status)
    monitor = await start_health_monitor(settings)
    integrations = await start_integrations(settings)
    scheduler = await start_scheduler(settings, LocalRuntime(settings.data_dir / "replicas", grace_seconds=2.0))
    broker = make_broker(url, "bench")
    await broker.start()
    spec = validate_spec({
        "name": "falcon", "image": "python:3.11",
        "command": ["sh", "-c", 'exec python -m http.server --bind 127.0.0.1 "$PORT"'],
        "resources": {"ports": [8000], "replicas": 1},
        "healthChecks": {"readiness": {"path": "/", "periodSeconds": 1}},
        "integrations": [{"type": "git-lfs", "name": "falcon", "path": "/models/", "url": f"file://{tmp / 'repo'}"}],
    })  # fmt: skip
    seconds = []
    try:
        for deployment_id in ("uncached", "cached"):
            began = time.perf_counter()
            await publish(broker, SpecApplied(deployment_id=deployment_id, project="default", slug=deployment_id,
                                              name=deployment_id, spec_id=new_id(), spec_version=1, spec=spec))  # fmt: skip
            while deployment_id not in ready:
                await asyncio.sleep(0.01)
            seconds.append(ready[deployment_id] - began)
    finally:
        await broker.stop()
        await scheduler.stop(stop_replicas=True)
        await integrations.stop()
        await monitor.stop()
        await nc.drain()
        server.terminate()
        server.wait(10)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uncached, cached = asyncio.run(run(args.mb, Path(tmp)))
    print(f"apply -> Ready, git-lfs integration of {args.mb} MB over file://")
    print(f"  not cached  {uncached:6.2f} s")
    print(f"  cached      {cached:6.2f} s")


if __name__ == "__main__":
    main()
