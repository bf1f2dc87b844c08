"""`berth up` as a user runs it: a real process tree (nats-server, every service) on a data dir of its
own, driven by the CLI; Ctrl-C leaves no process behind and the next `up` finds every deployment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import psutil
import pytest
import yaml
from typer.testing import CliRunner, Result

from berth import client
from berth.cli import app
from libs.natsd import free_port
from tests.helpers import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(__file__).resolve().parents[2] / "services" / "spec_registry" / "__main__.py").exists(),
        reason="needs services.spec_registry",
    ),
]

SPEC = {
    "name": "Echo Server",
    "image": "python:3.11-slim",
    "command": ["sh", "-c", 'exec python -m http.server --bind 127.0.0.1 "$PORT"'],
    "resources": {"ports": [8000], "replicas": 1},
    "healthChecks": {"readiness": {"path": "/", "periodSeconds": 1}},
}


@dataclass
class Berth:
    """One data dir and its ports; `up()` starts `berth up` on them, `cli()` runs a CLI command."""

    data_dir: Path
    env: dict[str, str]
    runner: CliRunner

    @property
    def api_url(self) -> str:
        return self.env["BERTH_API_URL"]

    def up(self) -> subprocess.Popen[bytes]:
        log = open(self.data_dir.parent / "up.out", "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen([sys.executable, "-m", "berth", "up"], env=self.env, stdout=log, stderr=log)

    def output(self) -> str:
        return (self.data_dir.parent / "up.out").read_text(errors="replace")

    def cli(self, *args: str, input: str | None = None) -> Result:
        unset = {k: None for k in os.environ if k.startswith("BERTH_")}  # as for `up`: only this berth's
        return self.runner.invoke(app, list(args), env={**unset, **self.env}, input=input)

    def cli_json(self, *args: str) -> dict:  # type: ignore[type-arg]
        result = self.cli(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    async def healthy(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(f"{self.api_url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def berth(tmp_path: Path) -> Berth:
    ports = {k: free_port() for k in ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "INTEGRATIONS_OPS",
                                      "AUTOSCALER_OPS", "ALERTING_OPS", "METRICS_OPS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {f"BERTH_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {
        "BERTH_DATA_DIR": str(tmp_path / "berth"),
        "BERTH_API_URL": f"http://127.0.0.1:{ports['API']}",
        "BERTH_STOP_GRACE_SECONDS": "3",
        "BERTH_RECONCILE_INTERVAL_SECONDS": "2",
    }
    return Berth(tmp_path / "berth", env, CliRunner())


@pytest.fixture
def running(berth: Berth) -> Iterator[subprocess.Popen[bytes]]:
    process = berth.up()
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def write_spec(path: Path, **resources: object) -> Path:
    spec = {**SPEC, "resources": {**SPEC["resources"], **resources}}  # type: ignore[dict-item]
    path.write_text(yaml.safe_dump(spec))
    return path


async def test_up_apply_history_stop_and_up_again(
    berth: Berth, running: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await eventually(lambda: "berth is up" in berth.output(), timeout=60, what="the ready panel")
    assert await berth.healthy()
    # The control-plane services share one process and one log (docs/architecture.md); the router has its own.
    assert str(berth.data_dir / "logs" / "control-plane.log") in berth.output()
    assert str(berth.data_dir / "logs" / "router.log") in berth.output()
    # The web console's address is printed, and berth serves it there (docs/console.md).
    assert f"{berth.api_url}/ui/" in berth.output()
    async with httpx.AsyncClient() as browser:
        page = await browser.get(f"{berth.api_url}/ui/")
    assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text

    first = berth.cli("apply", "-f", str(write_spec(tmp_path / "echo.yaml")))
    assert first.exit_code == 0, first.output
    assert "created deployment" in first.stdout and "echo-server" in first.stdout
    second = berth.cli("apply", "-f", str(write_spec(tmp_path / "echo.yaml", replicas=2)))
    assert second.exit_code == 0, second.output
    assert "updated deployment" in second.stdout

    monkeypatch.setattr(client, "PAGE_LIMIT", 1)  # the CLI reads every page
    history = berth.cli_json("deployments", "history", "Echo Server")["items"]
    assert [v["spec_version"] for v in history] == [2, 1]
    assert history[0]["spec_id"] != history[1]["spec_id"]
    assert history[0]["spec"]["resources"]["replicas"] == 2
    table = berth.cli("deployments", "history", "echo-server")
    assert table.exit_code == 0
    assert history[0]["spec_id"][:12] in table.stdout and history[1]["spec_id"][:12] in table.stdout

    deployment = berth.cli_json("deployments", "get", "echo-server")
    assert deployment["spec_version"] == 2 and "phase" in deployment["status"]
    assert yaml.safe_load(berth.cli("deployments", "list", "-o", "yaml").stdout)["items"][0]["slug"] == "echo-server"

    # A second `up` on the same data dir is refused while the first runs.
    refused = subprocess.run(
        [sys.executable, "-m", "berth", "up"], env=berth.env, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1
    assert "another `berth up`" in refused.stderr and str(berth.data_dir) in refused.stderr

    tree = await _tree_with_replicas(running.pid)
    running.send_signal(signal.SIGINT)
    assert running.wait(60) == 0
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    assert "berth stopped." in berth.output()

    again = berth.up()
    try:
        await eventually(berth.healthy, timeout=60, what="the registry answers again")
        items = berth.cli_json("deployments", "list")["items"]
        assert [(d["slug"], d["spec_version"]) for d in items] == [("echo-server", 2)]
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(60) == 0


async def test_api_errors_and_secrets_through_the_cli(
    berth: Berth, running: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    await eventually(berth.healthy, timeout=60, what="the registry answers /healthz")

    set_ = berth.cli("secrets", "set", "hf_token", input="s3cr3t-value\n")
    assert set_.exit_code == 0, set_.output
    listed = berth.cli("secrets", "list")
    assert "hf_token" in listed.stdout and "s3cr3t-value" not in listed.output
    assert berth.cli_json("secrets", "list")["names"] == ["hf_token"]

    spec = {**SPEC, "env": [{"name": "TOKEN", "value": "secret:not_there"}]}
    (tmp_path / "needs-secret.yaml").write_text(yaml.safe_dump(spec))
    refused = berth.cli("apply", "-f", str(tmp_path / "needs-secret.yaml"))
    assert refused.exit_code == 1
    assert "env[0].value" in refused.stderr, refused.output

    missing = berth.cli("deployments", "get", "no-such-deployment")
    assert missing.exit_code == 1 and "404" in missing.stderr

    assert berth.cli("secrets", "delete", "hf_token").exit_code == 0
    assert berth.cli_json("secrets", "list")["names"] == []


async def test_up_runs_private_with_a_user_per_service_and_json_logs(
    berth: Berth, running: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Secrets flow registry -> scheduler (env) and registry -> router (basic auth) over the
    authenticated bus; none of it lands in a file; every file is the owner's; every log line is JSON."""
    await eventually(berth.healthy, timeout=60, what="the registry answers /healthz")
    passwords = json.loads((berth.data_dir / "nats" / "credentials.json").read_text())
    assert {"spec-registry", "scheduler", "health-monitor", "router", "alerting"} <= set(passwords)
    # The alerting service reads what it needs (specs, metrics, status, alerts, webhooks, secrets) as its own user.
    # Its lines in the control plane's shared log name it.
    plane_log = berth.data_dir / "logs" / "control-plane.log"
    await eventually(lambda: plane_log.exists() and _logged(plane_log, "alerting", "alerting started"), timeout=60,
                     what="the alerting service started under its NATS user")  # fmt: skip
    with pytest.raises(Exception, match="Authorization Violation"):
        await nats.connect(f"nats://127.0.0.1:{berth.env['BERTH_NATS_PORT']}", allow_reconnect=False)

    env_secret, gate_secret = "hf-v4lue-kept-off-disk", "gate-v4lue-kept-off-disk"
    assert berth.cli("secrets", "set", "hf_token", input=f"{env_secret}\n").exit_code == 0
    assert berth.cli("secrets", "set", "gate", input=f"{gate_secret}\n").exit_code == 0
    spec = {
        **SPEC,
        "command": ["python", "-m", "tests.servers.echo"],
        "env": [{"name": "HF_TOKEN", "value": "secret:hf_token"}],
        "basicAuthKey": "secret:gate",
    }
    (tmp_path / "private.yaml").write_text(yaml.safe_dump(spec))
    applied = berth.cli("apply", "-f", str(tmp_path / "private.yaml"))
    assert applied.exit_code == 0, applied.output
    assert berth.cli_json("secrets", "list")["used_by"] == {"gate": ["Echo Server"], "hf_token": ["Echo Server"]}
    assert "Echo Server" in berth.cli("secrets", "list").stdout

    url = f"http://127.0.0.1:{berth.env['BERTH_ROUTER_PORT']}/default/echo-server/?env=HF_TOKEN"

    async def answer() -> httpx.Response | None:
        async with httpx.AsyncClient(timeout=2) as http:
            response = await http.get(url, auth=("anyone", gate_secret))
        return response if response.status_code == 200 else None

    response = await eventually(answer, timeout=60, what="the replica answers through the router")
    assert response.json()["env"] == {"HF_TOKEN": env_secret}
    async with httpx.AsyncClient(timeout=2) as http:
        assert (await http.get(url)).status_code == 401

    # Rotating the sealing key while berth runs: the router opens the resealed value without a restart.
    key_file = berth.data_dir / "secrets.key"
    key_before = key_file.read_text()
    rotated = await asyncio.to_thread(berth.cli_json, "secrets", "rotate-key")  # the CLI runs its own loop
    assert rotated == {"resealed": 2, "key_file_rotated": True}
    assert key_file.read_text() != key_before and key_file.stat().st_mode & 0o077 == 0
    response = await eventually(answer, timeout=30, what="the router opens the value resealed under the new key")
    # A value set after the rotation is sealed under the new key, and the router opens it.
    first_gate, gate_secret = gate_secret, "gate-v4lue-after-rotation"
    assert berth.cli("secrets", "set", "gate", input=f"{gate_secret}\n").exit_code == 0
    response = await eventually(answer, timeout=30, what="the router opens the value set after the rotation")
    # Every API answer about the deployment and its secrets, as scripts see them: no value in any.
    answers = [berth.cli(*args, "-o", "json").output for args in (
        ("deployments", "get", "echo-server"), ("deployments", "history", "echo-server"), ("secrets", "list"),
    )]  # fmt: skip
    values = (env_secret, first_gate, gate_secret)
    assert all(value not in text for text in answers for value in values)

    running.send_signal(signal.SIGINT)
    assert running.wait(60) == 0
    files = [p for p in berth.data_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in [berth.data_dir, *berth.data_dir.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is open to others"
        # The secrets bucket's own store included: it holds only sealed values.
        if path.is_file():
            data = path.read_bytes()
            assert not [v for v in values if v.encode() in data], f"a secret in {path}"
    for log in (berth.data_dir / "logs").glob("*.log"):
        if log.name != "nats-server.log":  # nats-server's own format
            for line in log.read_text().splitlines():
                record = json.loads(line)
                assert record["level"] != "error", f"{log.name}: {line}"


def _logged(log: Path, service: str, event: str) -> bool:
    """Whether a JSON line of `log` from `service` says `event`."""
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("service") == service and record.get("event") == event:
                return True
    return False


async def _tree_with_replicas(pid: int) -> list[psutil.Process]:
    """Every process under `up`, once the scheduler (when present) runs the spec's replicas."""
    root = psutil.Process(pid)

    def replicas_running() -> list[psutil.Process]:
        tree = root.children(recursive=True)
        return tree if any("http.server" in " ".join(_cmdline(p)) for p in tree) else []

    if (Path(__file__).resolve().parents[2] / "services" / "scheduler" / "__main__.py").exists():
        return await eventually(replicas_running, timeout=60, what="replicas started")
    return root.children(recursive=True)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
