"""The whole platform for end-to-end tests: the test's own nats-server, and each service as its own
process (so a test can kill one), talking to real replica processes over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from libs.config import Settings
from libs.natsd import free_port, wait_for_port
from libs.spec import load_spec
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("spec_registry", "scheduler", "health_monitor", "router")


@dataclass
class Platform:
    settings: Settings
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, service: str) -> None:
        log = open(self.logs / f"{service}.log", "ab")  # noqa: SIM115 - closed with the process
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=self.env, cwd=REPO, stdout=log, stderr=log
        )

    def kill(self, service: str) -> None:
        process = self.processes.pop(service)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for service in reversed(list(self.processes)):
            self.processes[service].send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs.glob("*.log"))

    @property
    def token(self) -> str:
        token = self.settings.resolved_token()
        assert token, "the registry writes the admin token on first start"
        return token

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.settings.resolved_api_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def router(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.settings.router_port}", timeout=30)


@pytest.fixture
def extra_services() -> tuple[str, ...]:
    """Services a test module starts beside SERVICES (override the fixture), e.g. the autoscaler."""
    return ()


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Settings a test module gives every service (override the fixture), e.g. shorter intervals."""
    return {}


@pytest.fixture
def platform(
    tmp_path: Path, nats_url: str, extra_services: tuple[str, ...], extra_env: dict[str, str]
) -> Iterator[Platform]:
    data_dir = tmp_path / "berth"
    data_dir.mkdir()
    ports = {name: free_port() for name in ("API_PORT", "ROUTER_PORT", "SCHEDULER_OPS_PORT", "HEALTH_MONITOR_OPS_PORT",
                                            "AUTOSCALER_OPS_PORT", "INTEGRATIONS_OPS_PORT",
                                            "METRICS_OPS_PORT", "ALERTING_OPS_PORT")}
    env = {
        **os.environ,
        "BERTH_DATA_DIR": str(data_dir),
        "BERTH_NATS_URL": nats_url,
        "BERTH_RECONCILE_INTERVAL_SECONDS": "2",
        "BERTH_STOP_GRACE_SECONDS": "3",
        # As under `berth up`: stopping the platform stops its replicas.
        "BERTH_STOP_REPLICAS_ON_EXIT": "true",
        "PYTHONPATH": str(REPO),
        # Replicas run `python ...`: it must be this interpreter (with scikit-learn), as under `berth up`.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **{f"BERTH_{k}": str(v) for k, v in ports.items()},
        **extra_env,
    }
    env.pop("BERTH_TOKEN", None)
    settings = Settings(
        data_dir=data_dir, nats_url=nats_url, api_port=ports["API_PORT"], router_port=ports["ROUTER_PORT"],
        _env_file=None,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    platform = Platform(settings, env, logs)
    try:
        for service in (*SERVICES, *extra_services):
            platform.start(service)
        # Generous: importing a service takes over 30 s on a loaded 2-core machine (load 20 seen).
        wait_for_port("127.0.0.1", ports["API_PORT"], timeout=90)
        wait_for_port("127.0.0.1", ports["ROUTER_PORT"], timeout=90)
        yield platform
    finally:
        platform.stop_all()


@pytest.fixture
async def api(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    await eventually(platform.settings.token_file.exists, what="admin token written")
    async with platform.api() as client:
        yield client


@pytest.fixture
async def router(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with platform.router() as client:
        yield client


def iris_spec(**resources: object) -> str:
    """examples/iris.yaml with some resources changed, as YAML."""
    import yaml

    document = yaml.safe_load((REPO / "examples" / "iris.yaml").read_text())
    document["resources"].update(resources)
    load_spec(yaml.safe_dump(document))  # still a valid spec
    return yaml.safe_dump(document)
