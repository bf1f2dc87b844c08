"""The local runtime's pieces that need no replica process: ports, logs tail, what it cannot provide."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from libs.runtime.base import InvalidWorkload, ReplicaNotFound, Workload, restart_backoff
from libs.runtime.local import LocalRuntime, port_env, substitute_ports
from libs.runtime.logfiles import tail_lines
from libs.runtime.processes import detect_gpus
from libs.runtime.shim import exit_code_of


def workload(**fields: object) -> Workload:
    values: dict[str, object] = {
        "name": "default-model-0a1b2c3d",
        "deployment_id": "dep-1",
        "project": "default",
        "slug": "model",
        "spec_id": "0a1b2c3d4e5f",
        "replicas": 1,
        "command": ("python", "serve.py"),
        "image": "python:3.11",
        "env": {},
        "ports": (8000,),
    }
    return Workload(**(values | fields))  # type: ignore[arg-type]


def test_port_env_names_the_first_port_and_each_one() -> None:
    assert port_env({8000: 31000, 9000: 31001}) == {
        "PORT": "31000",
        "PORT_8000": "31000",
        "PORT_9000": "31001",
    }
    assert port_env({}) == {}


def test_port_references_in_the_command_are_substituted_and_nothing_else() -> None:
    ports = port_env({8000: 31000, 9000: 31001})
    command = [
        "serve",
        "$PORT",
        "--port=${PORT}",
        "$PORT_9000",
        "${PORT_9000}",
        "$PORTS",
        "$HOME",
        "$PORT_1",
        "$$",
    ]
    assert substitute_ports(command, ports) == [
        "serve", "31000", "--port=31000", "31001", "31001", "$PORTS", "$HOME", "$PORT_1", "$$",
    ]  # fmt: skip


def test_tail_reads_across_rotated_files_oldest_first(tmp_path: Path) -> None:
    (tmp_path / "output.log.2").write_text("a\nb\n")
    (tmp_path / "output.log.1").write_text("c\nd\n")
    (tmp_path / "output.log").write_text("e\nf")  # the last line is still being written
    newest_first = [tmp_path / "output.log", tmp_path / "output.log.1", tmp_path / "output.log.2"]

    assert tail_lines(newest_first, 3) == ["d", "e", "f"]
    assert tail_lines(newest_first, 100) == ["a", "b", "c", "d", "e", "f"]
    assert tail_lines(newest_first, 0) == []
    assert tail_lines([tmp_path / "missing.log"], 5) == []


def test_tail_of_a_large_file_reads_only_its_end(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("".join(f"line {i}\n" for i in range(200_000)))

    assert tail_lines([log], 2) == ["line 199998", "line 199999"]


IMAGE_UNUSED = "image python:3.11 (the local runtime runs the command on this machine)"


async def test_a_plain_workload_lacks_only_its_image(tmp_path: Path) -> None:
    assert LocalRuntime(tmp_path).not_provided(workload(cpu=1, memory_gb=0.5)) == [IMAGE_UNUSED]
    with_registry = workload(container_registry="registry.example.com")
    assert LocalRuntime(tmp_path).not_provided(with_registry) == [
        IMAGE_UNUSED, "containerRegistry registry.example.com (the local runtime pulls no image)",
    ]  # fmt: skip


async def test_what_this_machine_cannot_provide_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi here
    asks = workload(machine_type="A100-80G", gpu_count=2, gpu_type="A100", cpu=10_000, memory_gb=100_000)
    cores = psutil.cpu_count()

    missing = LocalRuntime(tmp_path).not_provided(asks)

    memory = psutil.virtual_memory().total / 1024**3

    assert missing == [
        "machineType A100-80G (local runtime runs on this machine's CPU)",
        "2 GPUs of type A100 (this machine has none)",
        f"10000 CPU cores (this machine has {cores})",
        f"100000 GB of memory (this machine has {memory:.1f} GB)",
        IMAGE_UNUSED,
    ]


def test_gpus_are_counted_with_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the driver's tool: no GPU exists on the test machine.
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA A100 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA A100 (UUID: GPU-2)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert detect_gpus() == 2
    assert LocalRuntime(tmp_path).not_provided(workload(gpu_count=2, gpu_type="A100")) == [IMAGE_UNUSED]
    assert LocalRuntime(tmp_path).not_provided(workload(gpu_count=3)) == ["3 GPUs (this machine has 2)", IMAGE_UNUSED]


async def test_a_workload_without_command_is_refused(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / "replicas")
    await runtime.start()

    with pytest.raises(InvalidWorkload, match="has no command"):
        await runtime.apply(workload(command=()))

    assert await runtime.workloads() == [] and await runtime.replicas() == []


async def test_a_workload_of_zero_replicas_is_kept_privately(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / "replicas")
    await runtime.start()

    await runtime.apply(workload(replicas=0, env={"API_KEY": "s3cret"}))

    saved = tmp_path / "replicas" / "_workloads" / "default-model-0a1b2c3d.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert await runtime.replicas() == []
    again = LocalRuntime(tmp_path / "replicas")
    await again.start()
    assert await again.workloads() == [workload(replicas=0, env={"API_KEY": "s3cret"})]


async def test_an_unknown_replica_is_reported(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path)
    await runtime.start()

    with pytest.raises(ReplicaNotFound):
        await runtime.logs("nope-abcde")
    with pytest.raises(ReplicaNotFound):
        await runtime.restart("nope-abcde")


def test_restart_backoff_doubles_up_to_five_minutes() -> None:
    assert [restart_backoff(n) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
    assert restart_backoff(2, initial=0.2) == 0.4


def test_a_process_killed_by_a_signal_exits_with_128_plus_the_signal() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(3) == 3
