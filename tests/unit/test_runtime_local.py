"""The local runtime's pieces that need no replica process: ports, logs tail, what it cannot provide,
the restart back-off schedule."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from libs.events import utcnow
from libs.runtime.base import InvalidWorkload, Replica, ReplicaNotFound, Workload, restart_backoff
from libs.runtime.local import LocalRuntime, _Supervised, port_env, substitute_ports
from libs.runtime.logfiles import tail_lines
from libs.runtime.processes import detect_gpus
from libs.runtime.shim import LOG_BACKUPS, LOG_MAX_BYTES, OutputLog, _parse_quickly, exit_code_of


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


# The kubelet's schedule, read from its source rather than from berth: kuberuntime_manager.go doBackOff
# restarts at once while the container has no back-off entry (its first exit) and then calls
# Backoff.Next, which creates the entry at containerBackOffPeriod (10 s, kubelet.go); every later exit
# waits the entry's delay from FinishedAt and Next doubles it (backoff.go: `delay := entry.backoff * 2`),
# capped at MaxContainerBackOff (300 s). The Pod lifecycle page says the same: "Initial crash: Kubernetes
# attempts an immediate restart", then "exponential backoff delay (10s, 20s, 40s, ...) capped at 300s".
@pytest.mark.parametrize(
    ("exits", "delay"),
    [(1, 0), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 300), (8, 300), (100, 300)],
)
def test_restart_backoff_is_the_kubelets_from_the_first_exit(exits: int, delay: float) -> None:
    assert restart_backoff(exits) == delay


def test_restart_backoff_scales_with_its_initial_delay_for_tests() -> None:
    assert [restart_backoff(n, initial=0.2) for n in (1, 2, 3, 4)] == [0, 0.2, 0.4, 0.8]


@pytest.mark.parametrize(
    ("ran_seconds", "exits_before", "delay"),
    [
        # kubelet.go HasExpiredFunc: `eventTime.Sub(lastUpdate) > 600*time.Second` resets the entry,
        # where eventTime is the exit and lastUpdate the (re)start: ran > 600 s is a first exit again
        (601, 5, 0),
        (599.5, 1, 10),  # not more than 600 s: the back-off goes on
        (599, 5, 160),
        (0, 0, 0),
    ],
)
def test_the_back_off_starts_over_once_the_replica_ran_more_than_ten_minutes(
    tmp_path: Path, ran_seconds: float, exits_before: int, delay: float
) -> None:
    runtime = LocalRuntime(tmp_path)
    now = utcnow()
    replica = Replica(
        replica_id="m-abcde", workload="w", deployment_id="d", spec_id="s", host="127.0.0.1", ports={},
        state="running", started_at=now - timedelta(seconds=ran_seconds),
    )  # fmt: skip
    supervised = _Supervised(replica, tmp_path, now, consecutive_failures=exits_before)
    assert runtime._record_exit(supervised, exit_code=1) == pytest.approx(delay, abs=0.01)
    assert replica.state == "backoff" and replica.next_restart_at is not None


def test_a_process_killed_by_a_signal_exits_with_128_plus_the_signal() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(3) == 3


def test_the_shim_reads_the_runtimes_command_line_and_leaves_anything_else_to_argparse() -> None:
    written = ["--dir", "d", "--grace", "2.5", "--log-max-bytes", "10", "--log-backups", "1", "--", "serve", "--dir", "x"]
    assert _parse_quickly(written) == ("d", 2.5, 10, 1, ["serve", "--dir", "x"])  # the command's own --dir kept
    assert _parse_quickly(["--dir", "d", "serve"]) == ("d", 10.0, LOG_MAX_BYTES, LOG_BACKUPS, ["serve"])
    for odd in (["--help"], ["--dir"], ["--dir", "d", "--"], ["--grace", "soon", "--dir", "d", "--", "serve"],
                ["-v", "--dir", "d", "--", "serve"]):  # fmt: skip
        assert _parse_quickly(odd) is None, odd


def test_the_shims_log_rotates_by_size_and_keeps_its_backups_only(tmp_path: Path) -> None:
    log = OutputLog(tmp_path, max_bytes=100, backups=1)
    for i in range(10):
        log.write(f"line {i}\n")  # 35 bytes once stamped: two to a file
    log.close()

    def text(name: str) -> list[str]:
        return [stamped.split(" ", 1)[1] for stamped in (tmp_path / name).read_text().splitlines()]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.log", "output.log.1"]
    assert (text("output.log.1"), text("output.log")) == (["line 6", "line 7"], ["line 8", "line 9"])
