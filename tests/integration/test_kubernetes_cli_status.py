"""What a user sees: `berth apply` to a real registry process, the real scheduler on the kubernetes
runtime against the emulator, Pods the test reports as the kubelet would; `berth deployments get`
shows the kubelet's CrashLoopBackOff, OOMKilled, restart count and last exit code."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.config import Settings
from libs.runtime.kubernetes.runtime import KubernetesRuntime
from services.scheduler import start_scheduler
from tests.helpers import eventually
from tests.integration.test_cli_registry import cli_env, registry  # noqa: F401
from tests.integration.test_scheduler_replicas import scheduler_settings  # noqa: F401
from tests.kube import Cluster, Kubelet, cluster, crash_looping  # noqa: F401
from tests.servers.registry import REPO, RegistryProcess

SPEC = {"name": "Big Model", "image": "python:3.11", "resources": {"ports": [8000], "replicas": 2}}


class Berth:
    """The `berth` CLI as its own process (the scheduler logs in this one would mix with its output)."""

    def __init__(self, env: dict[str, str | None]) -> None:
        self.env = {k: v for k, v in {**os.environ, "PYTHONPATH": str(REPO), **env}.items() if v is not None}

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "berth", *args], env=self.env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    async def json(self, *args: str) -> Any:
        done = await self.run(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


async def test_berth_deployments_get_shows_the_kubelet_crash_loop_and_oom_kill(
    registry: RegistryProcess, scheduler_settings: Settings, cluster: Cluster, tmp_path: Path,  # noqa: F811
) -> None:
    scheduler = await start_scheduler(scheduler_settings, KubernetesRuntime(cluster.namespace, kubeconfig=cluster.kubeconfig))
    try:
        cli = Berth(cli_env(registry, tmp_path, registry.data_dir))
        spec_file = tmp_path / "model.yaml"
        spec_file.write_text(yaml.safe_dump(SPEC))
        assert (await cli.run("apply", "-f", str(spec_file))).returncode == 0
        deployments = await eventually(
            lambda: {n: d for n, d in cluster.objects("apps/v1/deployments").items()
                     if d["metadata"]["labels"].get("berth.dev/slug") == "big-model"},
            what="the Deployment",
        )  # fmt: skip
        (name,) = deployments
        kubelet = Kubelet(cluster)
        healthy, oom = await kubelet.run(name, 2)
        await kubelet.report(oom, crash_looping(restarts=5, exit_code=137, reason="OOMKilled"))

        async def got() -> dict | None:
            shown = await cli.json("deployments", "get", "big-model")
            status = shown.get("status") or {}
            return shown if status.get("phase") == "CrashLoopBackOff" else None

        shown = await eventually(got, what="the crash loop in `berth deployments get`")
        replicas = {r["replica_id"]: r for r in shown["status"]["replicas"]}
        assert (replicas[oom]["state"], replicas[oom]["restart_count"], replicas[oom]["last_exit_code"]) == (
            "backoff", 5, 137)
        assert replicas[healthy]["ready"] and not replicas[oom]["ready"]
        text = (await cli.run("deployments", "get", "big-model")).stdout
        assert "CrashLoopBackOff" in text and "OOMKilled" in text and "1/2 replicas ready" in text
        assert "last exit 137" in text
    finally:
        await scheduler.stop()
