"""The spec-registry as its own process (uvicorn, as `berth up` runs it), for tests that need a real
HTTP server: crashes, keep-alive connections, an event loop shared with nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from libs.natsd import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


class RegistryProcess:
    def __init__(self, tmp_path: Path, nats_url: str) -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "berth"
        self.log = tmp_path / "registry.log"
        self.env = {
            **os.environ,
            "BERTH_NATS_URL": nats_url,
            "BERTH_DATA_DIR": str(self.data_dir),
            "BERTH_API_PORT": str(self.port),
            "PYTHONPATH": str(REPO),
        }
        for name in ("BERTH_TOKEN", "BERTH_DATABASE_URL", "BERTH_FAULT_INJECT"):
            self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextmanager
    def running(cls, tmp_path: Path, nats_url: str) -> Iterator[RegistryProcess]:
        """A registry started, and stopped when the block ends."""
        process = cls(tmp_path, nats_url)
        try:
            process.start()
            yield process
        finally:
            process.stop()

    def start(self, fault: str | None = None) -> None:
        env = {**self.env, **({"BERTH_FAULT_INJECT": fault} if fault else {})}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.spec_registry"], env=env, cwd=REPO, stdout=log, stderr=log
            )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
