"""`berth up`: run the embedded default on this machine and supervise it.

It starts nats-server with JetStream (unless BERTH_NATS_URL names one), then the router in a process of
its own and the other services together in one (`python -m berth.plane`; with BERTH_UP_PROCESSES=
per-service, each service in its own: `python -m services.<name>`), restarts any that dies, and on
Ctrl-C or SIGTERM stops the services in reverse order and nats-server last. All state lives in the data directory (SQLite file,
JetStream store, token, logs, the key sealing secret values), so the next `up` on it finds every deployment again; a lock file keeps
two `up`s off one data directory. Everything in it is readable by its owner only (umask 077).

The nats-server it starts admits only berth's services, each as a user of its own with the
permissions of libs/busauth.py (passwords made on the first start, in `<data dir>/nats/`); before any
service starts, `up` creates the streams and the secrets bucket as the spec-registry, the one service
allowed to.

Its children get, besides the BERTH_* settings, this interpreter's bin directory first on PATH and the
berth checkout on PYTHONPATH: a replica whose command is `python -m examples.iris.server` then runs
with the same Python and packages as berth, whatever its working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import psutil
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

# Light on purpose: the supervisor idles for as long as berth runs, so what needs the bus libraries
# (faststream, nats, cryptography) runs in short-lived `python -m berth.prepare` processes instead.
from libs.natsd import read_passwords, start_nats_server

SERVICES = ("spec_registry", "integrations", "scheduler", "health_monitor", "router", "autoscaler", "metrics", "alerting")
# The data plane: its own process (and uvloop) whatever BERTH_UP_PROCESSES says, so that no control-plane
# work sits between a request and its replica.
OWN_PROCESS = ("router",)
PLANE = "control-plane"
CHECKOUT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 60.0
# The supervisor sleeps until something is due: a child's exit wakes it at once (SIGCHLD), else the
# next restart, census, or (until the API answers) readiness poll.
READY_POLL_SECONDS = 0.25
# A child that ran this long before dying starts its back-off from the beginning again.
STABLE_AFTER_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 30.0
CENSUS_SECONDS = 2.0
PREPARE_TIMEOUT_SECONDS = 60.0
PRIVATE_UMASK = 0o077  # files and directories berth writes: owner-only


class CannotStart(Exception):
    """berth cannot start as asked (data dir in use, ports taken, nats-server missing); says why."""


def restart_delay(failures: int) -> float:
    """1 s, 2 s, 4 s ... up to 30 s between restarts of a child that keeps dying."""
    return min(2.0 ** max(failures - 1, 0), BACKOFF_MAX_SECONDS)


@dataclass
class Child:
    """One supervised process: how to start it, and what became of it."""

    name: str
    log_file: Path
    spawn: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    descendants: list[psutil.Process] = field(default_factory=list)

    def start(self) -> None:
        self.process = self.spawn()
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class DataDirLock:
    """An exclusive flock on data_dir/up.lock, held for as long as `up` runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "up.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CannotStart(
                f"another `berth up` (pid {holder}) is running with the data dir {self.path.parent}; "
                "stop it first, or use another --data-dir"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class UpSettings:
    """What the supervisor needs of berth's settings (libs.config.Settings), resolved by a short-lived
    `python -m berth.prepare settings`: the supervisor runs as long as berth does, and importing
    pydantic-settings would make it hold about 15 MiB more (docs/benchmarks.md)."""

    data_dir: Path
    nats_url: str | None  # a NATS server of the user's; None: `up` runs nats-server
    nats_port: int
    api_host: str
    router_host: str
    ports: dict[str, int]  # BERTH_*_PORT of the API, the router and every ops surface
    stop_grace_seconds: float
    secrets_key_given: bool
    secrets_key_file: Path
    token_file: Path
    up_processes: str

    @classmethod
    def resolve(cls, data_dir: Path | None) -> UpSettings:
        command = [sys.executable, "-m", "berth.prepare", "settings"]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(CHECKOUT), env.get("PYTHONPATH", "")] if p)
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=PREPARE_TIMEOUT_SECONDS)  # fmt: skip
        if done.returncode != 0:  # a setting refused: pydantic's message names the variable and the rule
            raise CannotStart(f"berth's settings were refused:\n{done.stderr.strip()}")
        values = json.loads(done.stdout)
        for name in ("data_dir", "secrets_key_file", "token_file"):
            values[name] = Path(values[name])
        return cls(**values)

    @property
    def api_port(self) -> int:
        return self.ports["BERTH_API_PORT"]

    @property
    def router_port(self) -> int:
        return self.ports["BERTH_ROUTER_PORT"]

    @property
    def resolved_nats_url(self) -> str:
        return self.nats_url or f"nats://127.0.0.1:{self.nats_port}"


class Launcher:
    def __init__(self, settings: UpSettings, console: Console | None = None) -> None:
        self.settings = settings
        self.data_dir = self.settings.data_dir
        self.logs_dir = self.data_dir / "logs"
        self.auth_dir = self.data_dir / "nats"
        self.console = console or Console(soft_wrap=True)
        self.nats_url = self.settings.resolved_nats_url
        self.grace = self.settings.stop_grace_seconds
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by SIGCHLD and by the stop signals
        self.children: list[Child] = []
        self.registry_log: Path | None = None  # the log of the process that runs the spec-registry

    # -- the whole run ----------------------------------------------------------------------------

    def run(self) -> int:
        os.umask(PRIVATE_UMASK)  # the children inherit it: database, logs, replicas, JetStream store
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # also one made before berth kept its files private
        lock = DataDirLock(self.data_dir)
        lock.acquire()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child_signal)
        _become_subreaper()
        try:
            self._check_ports()
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            # One interpreter start for both: the secrets key, the NATS passwords and config.
            key = [] if self.settings.secrets_key_given else ["--key", str(self.settings.secrets_key_file)]
            auth = ["--auth", str(self.auth_dir)] if self.settings.nats_url is None else []
            if key or auth:
                self._prepare("files", *key, *auth, env=None)
            self.children = self._children()
            self._announce_logs()
            for child in self.children:
                if self._stopping.is_set():
                    break
                try:
                    child.start()
                    if child.name == "nats-server":
                        self._prepare("bus", env=self.child_env("spec_registry"))
                except (OSError, TimeoutError) as exc:
                    raise CannotStart(f"{child.name} did not start: {exc} (see {child.log_file})") from exc
            self._supervise()
            return 0
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            lock.release()

    def _prepare(self, *args: str, env: dict[str, str] | None) -> None:
        """One step of berth.prepare in a process of its own; its output goes to the terminal."""
        if env is None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in [str(CHECKOUT), env.get("PYTHONPATH", "")] if p)
        try:
            done = subprocess.run([sys.executable, "-m", "berth.prepare", *args], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=PREPARE_TIMEOUT_SECONDS)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise CannotStart(f"berth could not {args[0]} within {PREPARE_TIMEOUT_SECONDS:.0f}s") from None
        if done.stdout:
            self.console.print(escape(done.stdout.rstrip()))
        if done.returncode != 0:
            raise CannotStart(f"berth could not {' '.join(args[:1])}: {done.stderr.strip().splitlines()[-1:]}")

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if not self._stopping.is_set():
            self.console.print(f"\n[bold]{signal.Signals(signum).name}[/]: stopping berth …")
        self._stopping.set()
        self._wake.set()

    def _on_child_signal(self, _signum: int, _: FrameType | None) -> None:
        self._wake.set()

    # -- what to run ------------------------------------------------------------------------------

    def _children(self) -> list[Child]:
        children = []
        if self.settings.nats_url is None:
            children.append(Child("nats-server", self.logs_dir / "nats-server.log", self._spawn_nats))
        present = []
        for name in SERVICES:
            if not _runnable(f"services.{name}"):
                self.console.print(f"[yellow]services.{name} is not present: not started[/]")
                continue
            present.append(name)
        if self.settings.up_processes == "shared":
            shared = [n for n in present if n not in OWN_PROCESS]
            if shared:  # one child, restarted whole when any of its services fails (berth/plane.py)
                children.append(Child(PLANE, self.logs_dir / f"{PLANE}.log", self._plane_spawner(shared)))
            if "spec_registry" in shared:
                self.registry_log = self.logs_dir / f"{PLANE}.log"
            present = [n for n in present if n in OWN_PROCESS]
        if "spec_registry" in present:
            self.registry_log = self.logs_dir / "spec_registry.log"
        for name in present:
            children.append(Child(name, self.logs_dir / f"{name}.log", self._spawner(name)))
        return children

    def _spawn_nats(self) -> subprocess.Popen[bytes]:
        return start_nats_server(
            self.data_dir / "jetstream",
            self.settings.nats_port,
            self.logs_dir / "nats-server.log",
            own_session=True,
            auth_dir=self.auth_dir,
            write_config=False,  # berth.prepare wrote it
        )

    def _nats_credentials(self, name: str | None) -> tuple[str, str] | None:
        """A service's own NATS user and password when `up` runs nats-server; None for the plane (each
        of its services reads its own) and on a server of the user's (BERTH_NATS_* pass through)."""
        if self.settings.nats_url is not None or name is None:
            return None
        user = name.replace("_", "-")
        return user, read_passwords(self.auth_dir)[user]

    def _spawner(self, name: str) -> Callable[[], subprocess.Popen[bytes]]:
        def spawn() -> subprocess.Popen[bytes]:
            with open(self.logs_dir / f"{name}.log", "ab") as log:
                return subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"],
                    env=self.child_env(name),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

        return spawn

    def _plane_spawner(self, names: list[str]) -> Callable[[], subprocess.Popen[bytes]]:
        # Each service connects as its own NATS user: the plane reads the passwords from the auth dir.
        auth = ["--nats-auth-dir", str(self.auth_dir)] if self.settings.nats_url is None else []
        command = [sys.executable, "-m", "berth.plane", *auth, *(f"services.{n}" for n in names)]

        def spawn() -> subprocess.Popen[bytes]:
            with open(self.logs_dir / f"{PLANE}.log", "ab") as log:
                return subprocess.Popen(
                    command,
                    env=self.child_env(None),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )

        return spawn

    def child_env(self, name: str | None) -> dict[str, str]:
        """The environment of a service's process; `name` None: of the plane (no NATS user of its own)."""
        s = self.settings
        env = dict(os.environ)
        credentials = self._nats_credentials(name)
        if credentials is not None:
            env["BERTH_NATS_USER"], env["BERTH_NATS_PASSWORD"] = credentials
        env.update({variable: str(port) for variable, port in s.ports.items()})
        env.update(
            BERTH_DATA_DIR=str(self.data_dir),
            BERTH_NATS_URL=self.nats_url,
            BERTH_API_HOST=s.api_host,
            BERTH_ROUTER_HOST=s.router_host,
            BERTH_STOP_REPLICAS_ON_EXIT="true",
            PYTHONUNBUFFERED="1",
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(CHECKOUT), env.get("PYTHONPATH", "")] if p)
        return env

    def _check_ports(self) -> None:
        s = self.settings
        wanted = dict(s.ports)
        if s.nats_url is None:
            wanted["BERTH_NATS_PORT"] = s.nats_port
        busy = [f"{port} ({var})" for var, port in wanted.items() if not _port_free(port)]
        if busy:
            raise CannotStart(
                f"ports already in use: {', '.join(busy)}; stop what uses them or choose other ports with"
                " those variables"
            )

    # -- supervision ------------------------------------------------------------------------------

    def _supervise(self) -> None:
        announced = self.registry_log is None
        if announced:
            self._announce_ready(registry=False)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        next_census = 0.0
        while not self._stopping.is_set():
            for child in self.children:
                self._look_after(child)
            _reap_orphans({c.process.pid for c in self.children if c.process is not None})
            if time.monotonic() >= next_census:
                self._take_census()
                next_census = time.monotonic() + CENSUS_SECONDS
            if not announced and self._registry_healthy():
                self._announce_ready(registry=True)
                announced = True
            elif not announced and time.monotonic() > deadline:
                self.console.print(
                    f"[yellow]the API is not answering after {READY_TIMEOUT_SECONDS:.0f}s;"
                    f" see {escape(str(self.registry_log))}[/]"
                )
                deadline = float("inf")
            self._sleep(next_census, polling=not announced)

    def _sleep(self, next_census: float, polling: bool) -> None:
        """Until a child exits, a signal comes, or the next restart, census or readiness poll is due."""
        due = [next_census, *(c.restart_at for c in self.children if c.restart_at is not None)]
        if polling:
            due.append(time.monotonic() + READY_POLL_SECONDS)
        self._wake.wait(max(min(due) - time.monotonic(), 0.0))
        self._wake.clear()  # _look_after polls every child next: no exit is missed

    def _look_after(self, child: Child) -> None:
        if self._stopping.is_set() or child.process is None:
            return
        now = time.monotonic()
        if child.restart_at is None:
            code = child.process.poll()
            if code is None:
                return
            # SIGKILL comes from outside (an operator, the OOM killer, chaos): not a crash loop of the
            # child's own, so it does not grow the back-off; a child that fails by itself does.
            own_failure = code != -signal.SIGKILL and now - child.started_at <= STABLE_AFTER_SECONDS
            child.failures = child.failures + 1 if own_failure else 1
            delay = restart_delay(child.failures)
            child.restart_at = now + delay
            self.console.print(
                f"[red]{child.name} exited unexpectedly (code {code})[/]; restarting in {delay:.0f}s"
                f" — see {escape(str(child.log_file))}"
            )
        elif now >= child.restart_at:
            try:
                child.start()
                self.console.print(f"{child.name} restarted (pid {child.process.pid})")
            except (OSError, TimeoutError) as exc:
                child.failures += 1
                child.restart_at = now + restart_delay(child.failures)
                self.console.print(f"[red]{child.name} did not start: {escape(str(exc))}[/]")

    def _take_census(self) -> None:
        """Remember what each child started (replicas), to be sure none outlives `up`."""
        for child in self.children:
            if child.alive:
                seen = {p.pid: p for p in child.descendants if _running(p)}
                for pid in _descendant_pids(child.process.pid):  # type: ignore[union-attr]
                    if pid not in seen:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            seen[pid] = psutil.Process(pid)
                child.descendants = list(seen.values())

    def _registry_healthy(self) -> bool:
        url = f"http://{self.settings.api_host}:{self.settings.api_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:  # noqa: S310 - our own http:// URL
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- stopping ---------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Services in reverse order, then nats-server; then anything they started that outlived them."""
        started = [c for c in self.children if c.process is not None]
        self._take_census()
        # The scheduler stops its replicas (each with the grace period) before it exits: give it that.
        grace = self.grace + 5.0
        for child in reversed(started):
            self._stop(child, grace)
        leftovers = {p.pid: p for c in started for p in c.descendants if _running(p)}
        # Orphans of a child killed between two censuses came to `up` (the subreaper): they are left too.
        for pid in _descendant_pids(os.getpid()):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftovers.setdefault(pid, psutil.Process(pid))
        leftovers = {pid: p for pid, p in leftovers.items() if _running(p)}
        for process in leftovers.values():
            self.console.print(f"[yellow]killing leftover process {process.pid} ({process.name()})[/]")
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(list(leftovers.values()), timeout=5)
        if started:
            self.console.print("berth stopped.")

    def _stop(self, child: Child, grace: float) -> None:
        process = child.process
        assert process is not None
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            self.console.print(f"[yellow]{child.name} did not stop within {grace:.0f}s: killed[/]")
            process.kill()
            process.wait()

    # -- what the user sees -----------------------------------------------------------------------

    def _announce_logs(self) -> None:
        if self.settings.nats_url is not None:
            self.console.print(f"using the NATS server at {self.nats_url}")
        for child in self.children:
            self.console.print(f"[dim]{child.name:<15} log: {escape(str(child.log_file))}[/]")

    def _announce_ready(self, registry: bool) -> None:
        s = self.settings
        api = f"http://{s.api_host}:{s.api_port}"
        router = f"http://{s.router_host}:{s.router_port}"
        absent = "" if registry else "  [yellow](services.spec_registry is not present)[/]"
        lines = [
            f"[bold]API[/]          {api}{absent}",
            f"[bold]Console[/]      {api}/ui/",
            f"[bold]Router[/]       {router}/<project>/<deployment>/",
            f"[bold]Admin token[/]  {escape(str(s.token_file))}  (the CLI reads it)",
            f"[bold]NATS[/]         {escape(self.nats_url)}",
            f"[bold]Data dir[/]     {escape(str(self.data_dir))}",
            f"[bold]Logs[/]         {escape(str(self.logs_dir))}/",
            "",
            "[bold]Next steps[/]",
        ]
        if self.data_dir != Path(".berth").resolve():
            lines.append(f"  export BERTH_DATA_DIR={escape(str(self.data_dir))}")
        if s.api_port != 8080 or s.api_host != "127.0.0.1":
            lines.append(f"  export BERTH_API_URL={api}")
        lines += [
            "  berth apply -f examples/iris.yaml",
            "  berth deployments get iris",
            f"  curl -X POST {router}/default/iris/predict \\",
            "       -H 'content-type: application/json' \\",
            "       -d '{\"instances\": [[5.1, 3.5, 1.4, 0.2]]}'",
            "",
            "Ctrl-C stops berth and its replicas.",
        ]
        body = Text.from_markup("\n".join(lines), overflow="fold")
        self.console.print(Panel(body, title="berth is up", expand=False), soft_wrap=False)


def _runnable(package: str) -> bool:
    """Whether `python -m package` can run it (it exists and has a __main__). Looked up on disk: a
    find_spec of `package.__main__` would import `package`, and with it what the service uses, into
    the supervisor."""
    parent, _, name = package.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent)
    except ModuleNotFoundError:
        return False
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(location) / name / "__main__.py").is_file() for location in locations)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Linux: processes orphaned below `up` (the replicas of a killed scheduler) become its children
    rather than init's, so that `up` still finds them when it stops. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes  # only here: the supervisor stays small

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans(own: set[int]) -> None:
    """Collect the exit status of orphans that came to `up` (the subreaper) and ended, as init would.
    The children `up` started are left to their Popen, which reads their status itself."""
    for pid in _child_pids(os.getpid()):
        if pid not in own:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _child_pids(pid: int) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone, or no /proc (not Linux)
        return []
    found: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as listing:
                found += [int(k) for k in listing.read().split()]
        except OSError:  # the thread ended
            continue
    return found


def _descendant_pids(pid: int) -> list[int]:
    """The processes below `pid`, from the kernel's per-thread children lists. psutil's children()
    reads /proc/<pid>/stat of every process on the machine to find parents: about 440 files per
    census on a busy machine, the supervisor's largest idle cost (docs/benchmarks.md). Without
    those lists (not Linux) psutil's."""
    if not os.path.isdir(f"/proc/{pid}/task"):
        with contextlib.suppress(psutil.NoSuchProcess):
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        return []
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = _child_pids(todo.pop())
        found += kids
        todo += kids
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str] | None = None) -> int:
    """`berth up` execs this: the supervisor runs without the CLI's imports (typer, the API client)."""
    parser = argparse.ArgumentParser(prog="berth up")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        return Launcher(UpSettings.resolve(args.data_dir)).run()
    except CannotStart as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]✗[/] {escape(str(exc))}")  # as berth.render.failure
        return 1


if __name__ == "__main__":
    sys.exit(main())
