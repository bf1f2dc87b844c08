"""The local runtime: each replica is an OS process on this machine, supervised through a shim.

    runtime = LocalRuntime(data_dir / "replicas", grace_seconds=10, on_replica_event=hook)
    await runtime.start()          # adopts replicas still running from before
    await runtime.apply(workload)  # creates / scales; idempotent
    ...
    await runtime.close(stop_replicas=settings.stop_replicas_on_exit)

A replica is `python -I -S libs/runtime/shim.py --dir <state_dir>/<replica_id> ... -- <command>`, started
in a session of its own so that it outlives the scheduler (see libs/runtime/shim.py). Its directory is
the command's working directory and holds `output.log` (rotated), the command's `pid` and `exit_code`
(written by the shim) and `replica.json` (written here: ports, shim pid and create time, restarts).
`_workloads/<name>.json` keeps each workload, so that a new runtime on the same directory knows what
should run: `start()` adopts every shim still alive (pid and create time match, so a reused pid is never
mistaken for it), restarts replicas whose shim died while nobody watched, terminates shims of replicas
nobody knows, and brings each workload to its count. Everything here is owner-only (0700 / 0600).

Values of the env vars named in `Workload.secret_env` never reach the disk: the workload file keeps
their names only. A workload read back after a restart therefore lacks them; until `apply()` brings
them again (the scheduler applies every workload on its first reconcile) none of its replicas is
started or restarted (one still running keeps running), and it is not scaled up.

Every spec port gets a free host port, kept across restarts: PORT is the first one's, PORT_<spec port>
each one's, and `$PORT` / `${PORT}` / `$PORT_<spec port>` in the command's arguments are replaced.
The command also gets BERTH_REPLICA_ID, BERTH_DEPLOYMENT_ID and BERTH_SPEC_ID, and the workload's env
over this process's environment minus BERTH_* (the scheduler's own settings may hold tokens).

A replica whose command exits is restarted with the same id and ports after restart_backoff, as the
kubelet does: at once after its first exit, then 10 s, 20 s ... 5 min; back to the start once it ran
more than 10 min. `on_replica_event(kind, replica, exit_code)` is
awaited on each change: "started" (first start and each restart), "exited" (on its own; the replica is
then in state "backoff" with next_restart_at), "stopped" (on purpose: scale down, delete,
close(stop_replicas=True); restart() is an "exited" then a "started"), after which the replica's
directory is gone but its output is kept in `_retained_logs/<replica_id>/` (with `retained.json`:
deployment, revision, when it stopped) for `logs_retention_seconds`; the oldest go first once they
hold more than `logs_retained_max_bytes`. A timer prunes them. Errors of the hook are logged, never
raised here.
`Replica.pid` is the shim's pid: signalling it stops the replica gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from libs.events import utcnow
from libs.logging import get_logger
from libs.natsd import free_port, write_private
from libs.runtime import shim
from libs.runtime.gpu import GpuMeter
from libs.runtime.base import (
    RESTART_BACKOFF_INITIAL_SECONDS,
    RESTART_BACKOFF_RESET_SECONDS,
    InvalidWorkload,
    Mount,
    Replica,
    ReplicaEventHook,
    ReplicaEventKind,
    ReplicaNotFound,
    RetainedLog,
    Usage,
    Workload,
    restart_backoff,
)
from libs.runtime.logfiles import follow, follow_unstamped, tail_lines, unstamped
from libs.runtime.mounts import link_mounts, read_only_not_enforced, read_only_prefix
from libs.runtime.processes import alive, detect_gpus, find_process, send_signal, wait_exited
from libs.tasks import cancel_and_wait

HOST = "127.0.0.1"
WORKLOADS_DIR = "_workloads"  # not a DNS-1123 name: no replica directory can be called so
RETAINED_DIR = "_retained_logs"  # the output of stopped replicas (not a DNS-1123 name either)
RETAINED_FILE = "retained.json"
LOGS_RETENTION_SECONDS = 24 * 3600.0
LOGS_RETAINED_MAX_BYTES = 1024**3
LOGS_PRUNE_INTERVAL_SECONDS = 300.0
STATE_FILE = "replica.json"
SHIM_LOG = "shim.log"
GIB = 1024**3
CPU_SAMPLE_SECONDS = 0.1
STOP_MARGIN_SECONDS = 5.0  # past the grace period, a shim that has not exited is killed itself
_PORT_REF = re.compile(r"\$(?:\{(PORT(?:_\d+)?)\}|(PORT(?:_\d+)?)\b)")
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,251}[a-z0-9])?")  # a replica id: never a path

log = get_logger(__name__)


# -- pure helpers ---------------------------------------------------------------------------------


def port_env(ports: dict[int, int]) -> dict[str, str]:
    """PORT (the first spec port's host port) and PORT_<spec port> for each."""
    env = {f"PORT_{spec}": str(host) for spec, host in ports.items()}
    if ports:
        env["PORT"] = str(next(iter(ports.values())))
    return env


def substitute_ports(args: Iterable[str], ports: dict[str, str]) -> list[str]:
    """Replace $PORT, ${PORT}, $PORT_8000, ${PORT_8000}; every other `$` is left as it is."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return ports.get(name, match.group(0))

    return [_PORT_REF.sub(value, arg) for arg in args]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


# -- one supervised replica -----------------------------------------------------------------------


@dataclass(eq=False)
class _Supervised:
    """A replica and what it takes to watch it; `replica` is the view the runtime hands out (copied)."""

    replica: Replica
    dir: Path
    created_at: datetime
    consecutive_failures: int = 0
    shim: psutil.Process | None = None
    popen: subprocess.Popen[bytes] | None = None  # set when the shim is our own child, to reap it
    restart_requested: bool = False
    task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[int | None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    restart_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    cpu_meters: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def stopping(self) -> bool:
        return self.stop_task is not None

    def save(self) -> None:
        r = self.replica
        state = {
            "replica_id": r.replica_id,
            "workload": r.workload,
            "deployment_id": r.deployment_id,
            "spec_id": r.spec_id,
            "revision_id": r.revision_id,
            "host": r.host,
            "ports": {str(spec): host for spec, host in r.ports.items()},
            "created_at": self.created_at.isoformat(),
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "restart_count": r.restart_count,
            "consecutive_failures": self.consecutive_failures,
            "last_exit_code": r.last_exit_code,
            "next_restart_at": r.next_restart_at.isoformat() if r.next_restart_at else None,
            "shim_pid": self.shim.pid if self.shim else None,
            "shim_create_time": self.shim.create_time() if self.shim else None,
        }
        shim.write_atomically(self.dir / STATE_FILE, json.dumps(state, indent=1))

    @classmethod
    def load(cls, directory: Path) -> _Supervised | None:
        try:
            state: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
            started_at, next_restart_at = state["started_at"], state["next_restart_at"]
            replica = Replica(
                replica_id=state["replica_id"],
                workload=state["workload"],
                deployment_id=state["deployment_id"],
                spec_id=state["spec_id"],
                revision_id=state.get("revision_id", ""),
                host=state["host"],
                ports={int(spec): host for spec, host in state["ports"].items()},
                state="running",
                restart_count=state["restart_count"],
                last_exit_code=state["last_exit_code"],
                started_at=datetime.fromisoformat(started_at) if started_at else None,
                next_restart_at=datetime.fromisoformat(next_restart_at) if next_restart_at else None,
                created_at=datetime.fromisoformat(state["created_at"]),
            )
            supervised = cls(
                replica,
                directory,
                datetime.fromisoformat(state["created_at"]),
                consecutive_failures=state["consecutive_failures"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # never got as far as a whole state file: nothing ran from it
        supervised.shim = find_process(state["shim_pid"], state["shim_create_time"])
        if supervised.shim is not None:
            supervised.replica.pid = supervised.shim.pid
        elif replica.started_at is None:
            replica.state = "starting"  # created, never launched
        elif state["shim_pid"] is None:
            replica.state = "backoff"  # its exit is counted already; next_restart_at says when
        else:
            replica.state = "exited"  # ended while nobody watched
        return supervised


# -- the runtime ----------------------------------------------------------------------------------


class LocalRuntime:
    """Replicas as OS processes on this machine (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        grace_seconds: float = 10.0,
        *,
        backoff_initial_seconds: float = RESTART_BACKOFF_INITIAL_SECONDS,
        backoff_reset_seconds: float = RESTART_BACKOFF_RESET_SECONDS,
        log_max_bytes: int = shim.LOG_MAX_BYTES,
        log_backups: int = shim.LOG_BACKUPS,
        logs_retention_seconds: float = LOGS_RETENTION_SECONDS,
        logs_retained_max_bytes: int = LOGS_RETAINED_MAX_BYTES,
        on_replica_event: ReplicaEventHook | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.grace_seconds = grace_seconds
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_reset_seconds = backoff_reset_seconds
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.logs_retention_seconds = logs_retention_seconds
        self.logs_retained_max_bytes = logs_retained_max_bytes
        self.on_replica_event = on_replica_event
        self.fetches_integrations = False  # the integrations service's cache, linked into each workdir
        self._pruner: asyncio.Task[None] | None = None
        self._workloads: dict[str, Workload] = {}
        self._secrets_known: dict[str, asyncio.Event] = {}  # set once the workload's env is whole
        self._replicas: dict[str, _Supervised] = {}
        self._gpus: int | None = None
        self._gpu_meter: GpuMeter | None = None  # loaded at the first usage() of a replica given a GPU
        self._closing = False

    # -- lifecycle --

    async def start(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.state_dir / WORKLOADS_DIR).mkdir(mode=0o700, exist_ok=True)
        self._workloads = {w.name: w for w in self._load_workloads()}
        orphans: list[_Supervised] = []
        for directory in sorted(
            p for p in self.state_dir.iterdir() if p.is_dir() and p.name not in (WORKLOADS_DIR, RETAINED_DIR)
        ):
            supervised = _Supervised.load(directory)
            if supervised is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._replicas[supervised.replica.replica_id] = supervised
            launch = supervised.replica.state == "starting"
            supervised.task = asyncio.create_task(self._supervise(supervised, launch=launch))
            if supervised.replica.workload not in self._workloads:
                orphans.append(supervised)  # its workload was deleted while this one kept running
            log.info("replica adopted" if supervised.shim else "replica found ended", **self._ids(supervised))
        self._terminate_unknown_shims()
        await self._stop_all(orphans)
        self._pruner = asyncio.create_task(self._prune_every(LOGS_PRUNE_INTERVAL_SECONDS))
        for workload in self._workloads.values():
            if self._secrets_gate(workload.name).is_set():
                await self._scale(workload)

    async def close(self, stop_replicas: bool = False) -> None:
        # From now on no replica is created: a reconcile still under way must not start one after
        # the stop below has looked, which would leave it running with nobody to stop it.
        self._closing = True
        if self._pruner is not None:
            await cancel_and_wait([self._pruner])
        if stop_replicas:
            while self._replicas:
                await self._stop_all(list(self._replicas.values()))
            return
        # Let go: the shims run on, for the next runtime to adopt.
        await cancel_and_wait([s.task for s in self._replicas.values() if s.task is not None])
        self._replicas.clear()

    # -- desired state --

    async def apply(self, workload: Workload) -> None:
        if not workload.command:
            raise InvalidWorkload(
                f"workload {workload.name} has no command: the local runtime runs the spec's command"
            )
        if workload.replicas < 0:
            raise InvalidWorkload(f"workload {workload.name} asks for {workload.replicas} replicas")
        if self._workloads.get(workload.name) != workload:  # every reconcile applies; most change nothing
            self._workloads[workload.name] = workload
            self._save_workload(workload)
        self._secrets_gate(workload.name).set()
        await self._scale(workload)

    async def scale(self, name: str, replicas: int) -> None:
        workload = self._workloads.get(name)
        if workload is None:
            return
        if replicas < 0:
            raise InvalidWorkload(f"workload {name} asks for {replicas} replicas")
        workload = replace(workload, replicas=replicas)
        self._workloads[name] = workload
        self._save_workload(workload)
        await self._scale(workload)  # the secrets gate stays as apply left it: a scale up still waits

    async def delete(self, name: str) -> None:
        self._workloads.pop(name, None)
        self._secrets_known.pop(name, None)
        (self.state_dir / WORKLOADS_DIR / f"{name}.json").unlink(missing_ok=True)
        await self._stop_all(self._of(name))

    async def workloads(self) -> list[Workload]:
        return list(self._workloads.values())

    async def replicas(self, name: str | None = None) -> list[Replica]:
        return [
            replace(s.replica, ports=dict(s.replica.ports))
            for s in self._replicas.values()
            if name is None or s.replica.workload == name
        ]

    async def restart(self, replica_id: str) -> None:
        """Stop gracefully and start again at once; repeated restarts back off like crashes do."""
        supervised = self._get(replica_id)
        if supervised.stopping:
            return
        restarted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        supervised.restart_waiters.append(restarted)
        supervised.restart_requested = True
        if supervised.shim is not None:
            send_signal(supervised.shim, signal.SIGTERM)
        else:
            supervised.wake.set()  # waiting in back-off: start now
        await restarted

    def not_provided(self, workload: Workload) -> list[str]:
        missing = []
        if workload.machine_type:
            missing.append(f"machineType {workload.machine_type} (local runtime runs on this machine's CPU)")
        if workload.gpu_count > 0:
            if self._gpus is None:
                self._gpus = detect_gpus()
            if workload.gpu_count > self._gpus:
                gpus = f"{workload.gpu_count} GPU{'s' if workload.gpu_count > 1 else ''}"
                if workload.gpu_type:
                    gpus += f" of type {workload.gpu_type}"
                missing.append(f"{gpus} (this machine has {self._gpus or 'none'})")
        cores = psutil.cpu_count() or 1
        if workload.cpu and workload.cpu > cores:
            missing.append(f"{workload.cpu:g} CPU cores (this machine has {cores})")
        memory_gb = psutil.virtual_memory().total / GIB
        if workload.memory_gb and workload.memory_gb > memory_gb:
            missing.append(f"{workload.memory_gb:g} GB of memory (this machine has {memory_gb:.1f} GB)")
        if (read_only := read_only_not_enforced(workload.mounts)) is not None:
            missing.append(read_only)
        # The command runs on this machine as it is: no image is pulled, no registry is asked.
        missing.append(f"image {workload.image} (the local runtime runs the command on this machine)")
        if workload.container_registry:
            missing.append(f"containerRegistry {workload.container_registry} (the local runtime pulls no image)")
        return missing

    # -- observation --

    async def logs(self, replica_id: str, tail: int = 100, timestamps: bool = False) -> list[str]:
        supervised = self._replicas.get(replica_id)
        if supervised is not None:
            files = self._log_files(supervised.dir)
        elif _ID.fullmatch(replica_id) and (self._retained_dir / replica_id / RETAINED_FILE).exists():
            files = self._log_files(self._retained_dir / replica_id)
        else:
            raise ReplicaNotFound(f"no replica {replica_id} runs here")
        lines = await asyncio.to_thread(tail_lines, files, tail)
        return lines if timestamps else unstamped(lines)

    async def retained_logs(self, deployment_id: str) -> list[RetainedLog]:
        return [r for r in await asyncio.to_thread(self._retained) if r.deployment_id == deployment_id]

    async def prune_logs(self, now: datetime | None = None) -> int:
        """Remove the kept output of replicas stopped more than the retention period before `now`,
        then the oldest while they hold more than the size bound; returns how many went."""
        return await asyncio.to_thread(self._prune, now or utcnow())

    @property
    def _retained_dir(self) -> Path:
        return self.state_dir / RETAINED_DIR

    def _retained(self) -> list[RetainedLog]:
        found = []
        for directory in self._retained_dir.glob(f"*/{RETAINED_FILE}"):
            try:
                data = json.loads(directory.read_text())
                found.append(RetainedLog(
                    replica_id=data["replica_id"], deployment_id=data["deployment_id"],
                    revision_id=data["revision_id"], stopped_at=datetime.fromisoformat(data["stopped_at"]),
                ))  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half written by a stop that was killed: the size bound removes it in time
        return found

    def _retain_output(self, s: _Supervised) -> None:
        """Move the stopped replica's output aside, for `logs` to read until the retention ends."""
        files = [f for f in self._log_files(s.dir) if f.exists()]
        if not files or self.logs_retention_seconds <= 0:
            return
        target = self._retained_dir / s.replica.replica_id
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file in files:
            file.replace(target / file.name)
        r = s.replica
        record = {"replica_id": r.replica_id, "deployment_id": r.deployment_id, "revision_id": r.revision_id,
                  "stopped_at": utcnow().isoformat()}  # fmt: skip
        shim.write_atomically(target / RETAINED_FILE, json.dumps(record))
        self._prune(utcnow())

    def _prune(self, now: datetime) -> int:
        kept = sorted(self._retained(), key=lambda r: r.stopped_at)
        expired = [r for r in kept if (now - r.stopped_at).total_seconds() > self.logs_retention_seconds]
        kept = kept[len(expired) :] if expired else kept
        sizes = {r.replica_id: _size(self._retained_dir / r.replica_id) for r in kept}
        total = sum(sizes.values())
        while kept and total > self.logs_retained_max_bytes:
            oldest = kept.pop(0)
            total -= sizes[oldest.replica_id]
            expired.append(oldest)
        for gone in expired:
            shutil.rmtree(self._retained_dir / gone.replica_id, ignore_errors=True)
        return len(expired)

    async def _prune_every(self, seconds: float) -> None:
        while True:
            try:
                await self.prune_logs()
            except Exception:  # a full or read-only disk: try again at the next interval
                log.warning("pruning kept replica logs failed", exc_info=True)
            await asyncio.sleep(seconds)

    def follow_logs(self, replica_id: str) -> AsyncIterator[str]:
        """Lines written from now on, across rotations, until the replica is gone."""
        supervised = self._get(replica_id)
        lines = follow(supervised.dir / shim.OUTPUT_LOG, lambda: self._replicas.get(replica_id) is supervised)
        return follow_unstamped(lines)

    async def usage(self, replica_id: str) -> Usage | None:
        """CPU and memory of the command's process tree (the shim itself is not counted)."""
        supervised = self._get(replica_id)
        if supervised.shim is None or not alive(supervised.shim):
            return None
        try:
            tree = supervised.shim.children(recursive=True)
        except psutil.Error:
            return None
        meters = supervised.cpu_meters
        fresh = [p for p in tree if p.pid not in meters]
        for process in fresh:  # psutil measures CPU between two calls: the first one only starts
            meters[process.pid] = process
            with contextlib.suppress(psutil.Error):
                process.cpu_percent(None)
        if fresh:
            await asyncio.sleep(CPU_SAMPLE_SECONDS)
        cpu = 0.0
        memory = 0
        for process in tree:
            with contextlib.suppress(psutil.Error):
                cpu += meters[process.pid].cpu_percent(None)
                memory += process.memory_info().rss
        for pid in set(meters) - {p.pid for p in tree}:
            del meters[pid]
        workload = self._workloads.get(supervised.replica.workload)
        cores = workload.cpu if workload and workload.cpu else 1.0
        memory_limit = (
            workload.memory_gb * GIB if workload and workload.memory_gb else psutil.virtual_memory().total
        )
        gpu = None
        if workload and workload.gpu_count > 0:
            self._gpu_meter = self._gpu_meter or GpuMeter()
            gpu = self._gpu_meter.percent([p.pid for p in tree], workload.gpu_count)
        return Usage(
            cpu_percent=cpu / cores, memory_percent=100.0 * memory / memory_limit, memory_bytes=memory,
            gpu_percent=gpu,
        )

    # -- supervision --

    async def _supervise(self, s: _Supervised, launch: bool) -> None:
        """One replica's life: start it, wait for its shim to end, restart it after the back-off."""
        try:
            if launch and await self._until_secrets(s):
                self._launch(s)
                self._notify_restarted(s)
                await self._emit("started", s, None)
            while True:
                if s.shim is not None:
                    await wait_exited(s.shim)
                    if s.popen is not None:
                        s.popen.wait()  # our own child: reap it
                    s.shim, s.popen = None, None
                if s.stopping:
                    return
                if s.replica.state != "backoff":  # an exit not counted yet
                    exit_code = _read_int(s.dir / shim.EXIT_CODE_FILE)
                    delay = self._record_exit(s, exit_code)
                    log.info("replica exited", exit_code=exit_code, restart_in_seconds=delay, **self._ids(s))
                    await self._emit("exited", s, exit_code)
                await self._back_off(s)
                if not await self._until_secrets(s):
                    return
                self._launch(s)
                self._notify_restarted(s)
                await self._emit("started", s, None)
        except Exception:
            log.exception("replica supervision failed", **self._ids(s))
            raise
        finally:
            self._notify_restarted(s)

    async def _back_off(self, s: _Supervised) -> None:
        """Until next_restart_at, unless restart() or a stop cuts it short."""
        assert s.replica.next_restart_at is not None
        delay = (s.replica.next_restart_at - utcnow()).total_seconds()
        if delay > 0:
            self._notify_restarted(s)  # restart() returns once the replica waits here
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can swallow a cancel on 3.11
                    await s.wake.wait()

    async def _until_secrets(self, s: _Supervised) -> bool:
        """Wait until the workload's secret values are known; False when the replica is being stopped."""
        gate = self._secrets_gate(s.replica.workload)
        if not gate.is_set() and not s.stopping:
            log.info("replica waits for its workload's secrets from the scheduler", **self._ids(s))
        while not gate.is_set() and not s.stopping:
            self._notify_restarted(s)  # a restart() asked meanwhile returns: it cannot happen yet
            s.wake.clear()
            waits = [asyncio.ensure_future(gate.wait()), asyncio.ensure_future(s.wake.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return not s.stopping

    def _record_exit(self, s: _Supervised, exit_code: int | None) -> float:
        """Count the exit and return the back-off before the next start (see base.restart_backoff).

        Every exit counts alike, a crash or a restart the health-monitor asked for: the kubelet backs
        off a container its liveness probe killed just as one that crashed."""
        now = utcnow()
        started = s.replica.started_at
        if started is not None and (now - started).total_seconds() > self.backoff_reset_seconds:
            s.consecutive_failures = 0  # it ran long enough to count as healthy
        s.consecutive_failures += 1
        delay = restart_backoff(s.consecutive_failures, self.backoff_initial_seconds)
        s.replica.state = "backoff"
        s.replica.pid = None
        s.replica.last_exit_code = exit_code
        s.replica.next_restart_at = now + timedelta(seconds=delay)
        s.save()
        return delay

    def _launch(self, s: _Supervised) -> None:
        workload = self._workloads[s.replica.workload]
        restarting = s.replica.started_at is not None
        for name in (shim.EXIT_CODE_FILE, shim.PID_FILE):
            (s.dir / name).unlink(missing_ok=True)
        ports = port_env(s.replica.ports)
        env = self._environment(workload, s.replica, ports) | link_mounts(s.dir, workload.mounts)  # see mounts.py
        command = [
            # -I: the workload's PYTHON* env must not touch the shim; -S: it needs no site-packages (shim.py)
            sys.executable, "-I", "-S", shim.__file__,
            "--dir", str(s.dir),
            "--grace", str(self.grace_seconds),
            "--log-max-bytes", str(self.log_max_bytes),
            "--log-backups", str(self.log_backups),
            "--", *read_only_prefix(workload.mounts), *substitute_ports(workload.command, ports),
        ]  # fmt: skip
        with (s.dir / SHIM_LOG).open("ab") as shim_log:
            s.popen = subprocess.Popen(
                command,
                cwd=s.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=shim_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the scheduler; no terminal signal reaches it
            )
        s.shim = psutil.Process(s.popen.pid)
        s.restart_requested = False
        s.wake.clear()
        s.cpu_meters.clear()
        r = s.replica
        r.restart_count += 1 if restarting else 0
        r.state, r.pid, r.started_at, r.next_restart_at = "running", s.shim.pid, utcnow(), None
        s.save()
        log.info("replica started", pid=r.pid, restart_count=r.restart_count, **self._ids(s))

    def _environment(self, workload: Workload, replica: Replica, ports: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env["PYTHONUNBUFFERED"] = "1"  # Python servers' prints reach the log as they happen
        env.update(workload.env)
        env.update(ports)
        env.update(
            BERTH_REPLICA_ID=replica.replica_id,
            BERTH_DEPLOYMENT_ID=replica.deployment_id,
            BERTH_SPEC_ID=replica.spec_id,
        )
        return env

    def _notify_restarted(self, s: _Supervised) -> None:
        for waiter in s.restart_waiters:
            if not waiter.done():
                waiter.set_result(None)
        s.restart_waiters.clear()

    async def _emit(self, kind: ReplicaEventKind, s: _Supervised, exit_code: int | None) -> None:
        if self.on_replica_event is None:
            return
        try:
            await self.on_replica_event(kind, replace(s.replica), exit_code)
        except Exception:
            log.exception("replica event hook failed", kind=kind, **self._ids(s))

    # -- scale, stop --

    async def _scale(self, workload: Workload) -> None:
        current = sorted(self._of(workload.name), key=lambda s: s.created_at)
        for _ in range(0 if self._closing else workload.replicas - len(current)):
            self._create(workload)
        await self._stop_all(current[workload.replicas :])  # newest go first

    def _create(self, workload: Workload) -> None:
        replica_id = self._new_replica_id(workload.name)
        directory = self.state_dir / replica_id
        directory.mkdir(mode=0o700, parents=True)
        created_at = utcnow()
        replica = Replica(
            replica_id=replica_id,
            workload=workload.name,
            deployment_id=workload.deployment_id,
            spec_id=workload.spec_id,
            revision_id=workload.revision_id,
            host=HOST,
            ports={spec: free_port() for spec in workload.ports},
            state="starting",
            created_at=created_at,
        )
        s = _Supervised(replica, directory, created_at)
        s.save()
        self._replicas[replica_id] = s
        s.task = asyncio.create_task(self._supervise(s, launch=True))

    async def _stop_all(self, replicas: Iterable[_Supervised]) -> None:
        """Stop replicas and wait until they are stopped. A stop is shared by whoever waits for it (a
        reconcile scaling down, `close`): a caller cancelled while it waits (the scheduler cancels its
        reconciles when it shuts down) must not cancel the stop itself, which would leave the replica
        half stopped and every other waiter with a CancelledError."""
        await asyncio.shield(asyncio.gather(*(self._stop(s) for s in replicas)))

    def _stop(self, s: _Supervised) -> asyncio.Task[int | None]:
        """Stop a replica gracefully and forget it; marks it stopping at once (so a second apply
        counts it out), and any number of callers may await the same stop. A stop cancelled with the
        caller that awaited it (a reconcile cancelled at shutdown) is started again: the replica still
        has to go."""
        if s.stop_task is None or s.stop_task.cancelled():
            s.replica.state = "stopping"
            s.stop_task = asyncio.create_task(self._stop_now(s))
            s.wake.set()
        return s.stop_task

    async def _stop_now(self, s: _Supervised) -> int | None:
        shim_process = s.shim
        send_signal(shim_process, signal.SIGTERM)  # the shim passes it on, and SIGKILLs after the grace
        assert s.task is not None
        try:
            async with asyncio.timeout(self.grace_seconds + STOP_MARGIN_SECONDS):
                await asyncio.shield(s.task)
        except TimeoutError:
            log.warning("replica shim did not stop: killing it", **self._ids(s))
            send_signal(shim_process, signal.SIGKILL)  # its command dies with it (parent-death signal)
            child = _read_int(s.dir / shim.PID_FILE)
            if child is not None:
                with contextlib.suppress(OSError):
                    os.killpg(child, signal.SIGKILL)
            await s.task
        exit_code = _read_int(s.dir / shim.EXIT_CODE_FILE) if shim_process is not None else None
        s.replica.pid = None
        s.replica.last_exit_code = exit_code
        try:  # before it is forgotten: once `replicas()` no longer lists it, `logs()` reads the kept copy
            await asyncio.to_thread(self._retain_output, s)
        except OSError:
            log.warning("the stopped replica's output could not be kept", exc_info=True, **self._ids(s))
        self._replicas.pop(s.replica.replica_id, None)
        await asyncio.to_thread(shutil.rmtree, s.dir, True)
        log.info("replica stopped", exit_code=exit_code, **self._ids(s))
        await self._emit("stopped", s, exit_code)
        return exit_code

    def _terminate_unknown_shims(self) -> None:
        """Shims of this directory that no state file names (a crash between spawn and save)."""
        known = {s.shim.pid for s in self._replicas.values() if s.shim is not None}
        prefix = str(self.state_dir) + os.sep
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if process.pid in known or shim.__file__ not in cmdline or "--dir" not in cmdline:
                continue
            directory = cmdline[cmdline.index("--dir") + 1]
            if directory.startswith(prefix):
                log.warning("terminating a replica shim nobody knows", pid=process.pid, dir=directory)
                send_signal(process, signal.SIGTERM)

    # -- small things --

    def _of(self, name: str) -> list[_Supervised]:
        return [s for s in self._replicas.values() if s.replica.workload == name and not s.stopping]

    def _get(self, replica_id: str) -> _Supervised:
        try:
            return self._replicas[replica_id]
        except KeyError:
            raise ReplicaNotFound(f"no replica {replica_id} runs here") from None

    def _new_replica_id(self, name: str) -> str:
        while True:
            replica_id = f"{name}-{''.join(secrets.choice(_ID_ALPHABET) for _ in range(5))}"
            taken = (self.state_dir / replica_id).exists() or (self._retained_dir / replica_id).exists()
            if replica_id not in self._replicas and not taken:
                return replica_id

    def _log_files(self, directory: Path) -> list[Path]:
        current = directory / shim.OUTPUT_LOG
        return [
            current,
            *(current.with_name(f"{shim.OUTPUT_LOG}.{i}") for i in range(1, self.log_backups + 1)),
        ]

    def _secrets_gate(self, name: str) -> asyncio.Event:
        """Set when the workload's env holds every secret value it names (see the module docstring)."""
        gate = self._secrets_known.get(name)
        if gate is None:
            gate = self._secrets_known[name] = asyncio.Event()
            workload = self._workloads.get(name)
            if workload is None or workload.secret_env <= workload.env.keys():
                gate.set()
        return gate

    def _save_workload(self, workload: Workload) -> None:
        path = self.state_dir / WORKLOADS_DIR / f"{workload.name}.json"
        data = asdict(workload)
        data["env"] = {k: v for k, v in workload.env.items() if k not in workload.secret_env}
        data["secret_env"] = sorted(workload.secret_env)
        data["integration_secrets"] = {}  # the scheduler gives none to this runtime; never to disk anyway
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(data))

    def _load_workloads(self) -> list[Workload]:
        workloads = []
        for path in (self.state_dir / WORKLOADS_DIR).glob("*.json"):
            data = json.loads(path.read_text())
            data["command"], data["ports"] = tuple(data["command"]), tuple(data["ports"])
            data["secret_env"] = frozenset(data.get("secret_env", ()))
            data["mounts"] = tuple(Mount(**m) for m in data.get("mounts", ()))
            data["integrations"] = tuple(data.get("integrations", ()))
            workloads.append(Workload(**data))
        return workloads

    @staticmethod
    def _ids(s: _Supervised) -> dict[str, str]:
        r = s.replica
        return {"replica_id": r.replica_id, "deployment_id": r.deployment_id, "spec_id": r.spec_id}


def _size(directory: Path) -> int:
    total = 0
    for file in directory.glob("*"):
        with contextlib.suppress(OSError):  # removed meanwhile
            total += file.stat().st_size
    return total
