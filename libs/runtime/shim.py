"""The shim between the local runtime and one replica process (containerd-shim's job, in small).

    python -m libs.runtime.shim --dir <replica dir> --grace <s> [--log-max-bytes N --log-backups K] -- cmd...

The runtime starts the shim in a session of its own, so the replica outlives a scheduler that is
killed; a restarted scheduler finds the shim by pid and adopts it. The shim:
- runs the command (cwd and environment are the shim's own) in a process group of its own, and
  makes the kernel kill it should the shim die (no orphan);
- copies the command's stdout and stderr into `output.log` in the replica dir, rotated by size, each
  line after the UTC time it was read (RFC 3339 and a space, as `kubectl logs --timestamps` shows);
- writes the command's pid to `pid`, and when it ends its exit code (killed by signal N: 128+N) to
  `exit_code`, kills what is left of its process group, and exits with that same code;
- on SIGTERM (or SIGINT) forwards SIGTERM to the process group and SIGKILLs it after the grace period.

Standard library only: it starts fast and depends on nothing the replica could break.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import FrameType
from typing import IO

OUTPUT_LOG = "output.log"
PID_FILE = "pid"
EXIT_CODE_FILE = "exit_code"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
EXIT_CODE_NOT_STARTED = 127  # what a shell answers for a command it cannot run
_MAX_LINE_BYTES = 64 * 1024
_PR_SET_PDEATHSIG = 1


def exit_code_of(returncode: int) -> int:
    """A shell's convention: a process killed by signal N exited with 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def write_atomically(path: Path, text: str) -> None:
    """Readers see the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _die_with_parent() -> Callable[[], None] | None:
    """For the child before exec: the kernel SIGKILLs it when the shim dies, whatever kills the shim."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    shim_pid = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != shim_pid:  # the shim died before the request was in place
            os._exit(EXIT_CODE_NOT_STARTED)

    return in_child


def stamp(line: str, at: datetime) -> str:
    """`line` as the log file holds it: the UTC time it was written, a space, the line."""
    return f"{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {line}"


def _output_log(replica_dir: Path, max_bytes: int, backups: int) -> RotatingFileHandler:
    handler = RotatingFileHandler(
        replica_dir / OUTPUT_LOG, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.terminator = ""  # lines keep their own newline: the file holds what the process printed
    return handler


def _copy_output(stream: IO[bytes], handler: RotatingFileHandler) -> None:
    for raw in iter(lambda: stream.readline(_MAX_LINE_BYTES), b""):
        line = raw.decode("utf-8", errors="replace")
        handler.handle(logging.makeLogRecord({"msg": stamp(line, datetime.now(UTC))}))


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


class _Stopper:
    """SIGTERM to the process group now, SIGKILL when the grace period is over (a SIGALRM timer)."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = max(grace_seconds, 0.001)  # a zero timer would mean "no timer"
        self.requested = False
        self.child: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGALRM, self._on_grace_over)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        self.terminate()

    def terminate(self) -> None:
        if self.child is not None:
            _kill_group(self.child.pid, signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, self.grace_seconds)

    def _on_grace_over(self, _signum: int, _frame: FrameType | None) -> None:
        if self.child is not None:
            _kill_group(self.child.pid, signal.SIGKILL)


def run(replica_dir: Path, command: list[str], grace_seconds: float, max_bytes: int, backups: int) -> int:
    handler = _output_log(replica_dir, max_bytes, backups)
    stopper = _Stopper(grace_seconds)
    stopper.install()
    if stopper.requested:  # stopped before anything ran
        write_atomically(replica_dir / EXIT_CODE_FILE, "0")
        return 0
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        message = stamp(f"berth: cannot run {command[0]!r}: {exc}\n", datetime.now(UTC))
        handler.handle(logging.makeLogRecord({"msg": message}))
        write_atomically(replica_dir / EXIT_CODE_FILE, str(EXIT_CODE_NOT_STARTED))
        return EXIT_CODE_NOT_STARTED
    stopper.child = child
    write_atomically(replica_dir / PID_FILE, str(child.pid))
    if stopper.requested:  # the signal came while the child was being spawned
        stopper.terminate()
    assert child.stdout is not None
    copier = threading.Thread(target=_copy_output, args=(child.stdout, handler), daemon=True)
    copier.start()
    code = exit_code_of(child.wait())
    signal.setitimer(signal.ITIMER_REAL, 0)
    # As when a container's main process ends: what it left running in its group goes too.
    _kill_group(child.pid, signal.SIGKILL)
    copier.join(timeout=2)
    handler.close()
    write_atomically(replica_dir / EXIT_CODE_FILE, str(code))
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.runtime.shim")
    parser.add_argument("--dir", type=Path, required=True, help="the replica's directory")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL")
    parser.add_argument("--log-max-bytes", type=int, default=LOG_MAX_BYTES)
    parser.add_argument("--log-backups", type=int, default=LOG_BACKUPS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    return run(args.dir, command, args.grace, args.log_max_bytes, args.log_backups)


if __name__ == "__main__":
    sys.exit(main())
