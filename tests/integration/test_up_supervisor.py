"""`berth up` as the supervisor of the embedded default: one per data dir, restarts what dies, and
leaves nothing running after Ctrl-C. Holds whatever services exist; needs none of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from libs.natsd import free_port
from tests.helpers import eventually


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    ports = {k: free_port() for k in ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "INTEGRATIONS_OPS",
                                   "METRICS_OPS", "AUTOSCALER_OPS", "ALERTING_OPS")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {f"BERTH_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"BERTH_DATA_DIR": str(tmp_path / "berth"), "BERTH_STOP_GRACE_SECONDS": "3"}
    # One process per service: the mode that is not the default keeps a test of its own (test_up_cli
    # and the crash-consistency test run the default, shared).
    env["BERTH_UP_PROCESSES"] = "per-service"
    return env


def start_up(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "berth", "up"], env=env, stdout=log, stderr=log)


@pytest.fixture
def up(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_up(env, tmp_path / "up.out")
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def nats_server(up: subprocess.Popen[bytes]) -> psutil.Process | None:
    children = psutil.Process(up.pid).children()
    return next((p for p in children if p.name() == "nats-server"), None)


def accepts(port: str) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=0.2).close()
        return True
    except OSError:
        return False


async def test_restarts_a_dead_child_and_leaves_nothing_after_ctrl_c(
    up: subprocess.Popen[bytes], env: dict[str, str], tmp_path: Path
) -> None:
    # Kill it only once `up` is supervising: a nats-server that dies while `up` starts it is a failed
    # start (reported, `up` exits), not a crash to restart.
    out = tmp_path / "up.out"
    await eventually(lambda: "berth is up" in out.read_text(), timeout=60, what="berth is up")
    first = nats_server(up)
    assert first is not None and accepts(env["BERTH_NATS_PORT"])
    logs = Path(env["BERTH_DATA_DIR"]) / "logs"
    assert str(logs / "nats-server.log") in (tmp_path / "up.out").read_text()
    assert str(logs / "scheduler.log") in (tmp_path / "up.out").read_text()  # one process per service

    first.kill()
    second = await eventually(
        lambda: (p := nats_server(up)) is not None and p.pid != first.pid and accepts(env["BERTH_NATS_PORT"]) and p,
        timeout=30,
        what="nats-server restarted",
    )
    assert "nats-server exited unexpectedly" in (tmp_path / "up.out").read_text()
    # Killed again at once: a SIGKILL from outside is no crash loop of its own, so no longer back-off.
    second.kill()
    third = await eventually(
        lambda: (p := nats_server(up)) is not None and p.pid != second.pid and accepts(env["BERTH_NATS_PORT"]) and p,
        timeout=30,
        what="nats-server restarted again",
    )
    assert (tmp_path / "up.out").read_text().count("nats-server exited unexpectedly (code -9); restarting in 1s") == 2

    tree = psutil.Process(up.pid).children(recursive=True)
    assert third in tree
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, f"left behind: {alive}"
    assert not accepts(env["BERTH_NATS_PORT"])


async def test_one_up_per_data_dir(up: subprocess.Popen[bytes], env: dict[str, str], tmp_path: Path) -> None:
    await eventually(lambda: (Path(env["BERTH_DATA_DIR"]) / "up.lock").exists(), what="lock taken")
    await eventually(lambda: nats_server(up), timeout=30, what="nats-server started")
    other_ports = env | {"BERTH_NATS_PORT": str(free_port()), "BERTH_API_PORT": str(free_port())}
    second = subprocess.run(
        [sys.executable, "-m", "berth", "up"], env=other_ports, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert f"another `berth up` (pid {up.pid}) is running with the data dir {env['BERTH_DATA_DIR']}" in second.stderr
    assert up.poll() is None, "the first one keeps running"


def test_refuses_ports_in_use(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "berth", "up"],
            env=env | {"BERTH_API_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"ports already in use: {port} (BERTH_API_PORT)" in result.stderr


def test_a_refused_setting_is_named_without_its_value(env: dict[str, str], tmp_path: Path) -> None:
    """The supervisor's settings are resolved in a child process (berth.prepare settings): a variable
    that does not parse stops `berth up` at once with its name and the rule, not the value given."""
    env["BERTH_API_PORT"] = "not-a-port-7f3a"
    done = subprocess.run([sys.executable, "-m", "berth", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "BERTH_API_PORT" in done.stderr and "valid integer" in done.stderr
    assert "not-a-port-7f3a" not in done.stderr + done.stdout
    assert not (tmp_path / "berth").exists()  # nothing started, nothing written
