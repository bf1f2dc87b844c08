"""The shim between the local runtime and one replica process (containerd-shim's job, in small).

    python -I -S libs/runtime/shim.py --dir <replica dir> --grace <s> [--log-max-bytes N --log-backups K] -- cmd...

The runtime starts the shim in a session of its own, so the replica outlives a scheduler that is
killed; a restarted scheduler finds the shim by pid and adopts it. The shim:
- runs the command (cwd and environment are the shim's own) in a process group of its own, and
  makes the kernel kill it should the shim die (no orphan);
- copies the command's stdout and stderr into `output.log` in the replica dir, rotated by size, each
  line after the UTC time it was read (RFC 3339 and a space, as `kubectl logs --timestamps` shows);
- writes the command's pid to `pid`, and when it ends its exit code (killed by signal N: 128+N) to
  `exit_code`, kills what is left of its process group, and exits with that same code;
- on SIGTERM (or SIGINT) forwards SIGTERM to the process group and SIGKILLs it after the grace period.

Standard library only, and little of it: the shim's CPU is spent while the command starts, on the same
cores (docs/benchmarks.md, "Apply -> first request": from its spawn to the command's exec it took
76 ms at median on the loaded 2-core machine, 27 ms now; its CPU 54 -> 24 ms). The local runtime starts it with `-S` (it needs no site-packages, and a venv's .pth files cost
milliseconds); up to the command's exec it uses `os`, `signal`, `sys`, `time` and `ctypes` alone (fork
and exec are written out: importing subprocess cost more than they do; the runtime's command line is
read without argparse), then `threading` for the copier. The log is written without the logging
package (`OutputLog`).
"""

from __future__ import annotations

import os
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs milliseconds before the command starts
if TYPE_CHECKING:
    from collections.abc import Callable
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


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Readers see the whole file or none of it."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _die_with_parent() -> Callable[[], None] | None:
    """For the child before exec: the kernel SIGKILLs it when the shim dies, whatever kills the shim."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    shim_pid = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != shim_pid:  # the shim died before the request was in place
            os._exit(EXIT_CODE_NOT_STARTED)

    return in_child


def spawn(command: list[str]) -> tuple[int, int]:
    """Run `command` in a process group of its own, stdin from /dev/null, stdout and stderr into a pipe;
    returns its pid and the pipe's read end. Raises the OSError of a command that cannot be run, as
    subprocess.Popen does (whose import alone took ~12 ms, more than the fork and exec written out)."""
    die_with_parent = _die_with_parent()
    read_end, write_end = os.pipe()
    failed_read, failed_write = os.pipe()  # close-on-exec: EOF once the exec succeeded, else its errno
    null = os.open(os.devnull, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:  # the child: nothing but system calls until the exec
        try:
            os.setpgid(0, 0)
            if die_with_parent is not None:
                die_with_parent()
            for ignored in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the command must not
                signal.signal(ignored, signal.SIG_DFL)
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(failed_write, str(exc.errno or 0).encode())
        finally:
            os._exit(EXIT_CODE_NOT_STARTED)
    for fd in (write_end, failed_write, null):
        os.close(fd)
    try:
        failure = os.read(failed_read, 32)
    finally:
        os.close(failed_read)
    if failure:
        os.waitpid(pid, 0)
        os.close(read_end)
        code = int(failure)
        raise OSError(code, os.strerror(code), command[0])  # FileNotFoundError and the like, by errno
    return pid, read_end


def stamp(line: str, at_ns: int) -> str:
    """`line` as the log file holds it: the UTC time it was written (time.time_ns()), a space, the line."""
    seconds, ns = divmod(at_ns, 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{ns // 1000:06d}Z {line}"


class OutputLog:
    """`output.log`, each line stamped, rotated by size as logging's RotatingFileHandler rotates (the
    newest backup is `.1`, at most `backups` of them; with no backups, never), written out because the
    logging package cost ~10 ms of CPU, which the shim spent beside the command's own start."""

    def __init__(self, replica_dir: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        self.path = os.path.join(os.fspath(replica_dir), OUTPUT_LOG)
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the replica's life

    def write(self, line: str) -> None:
        data = stamp(line, time.time_ns()).encode("utf-8")
        if self.backups > 0 and 0 < self.max_bytes <= self._file.tell() + len(data):
            self._rotate()
        self._file.write(data)  # unbuffered: a reader sees each line as soon as it is written

    def _rotate(self) -> None:
        self._file.close()
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(older := f"{self.path}.{i}"):
                os.replace(older, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def close(self) -> None:
        self._file.close()


def _copy_output(stream: IO[bytes], log: OutputLog) -> None:
    for raw in iter(lambda: stream.readline(_MAX_LINE_BYTES), b""):
        log.write(raw.decode("utf-8", errors="replace"))


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class _Stopper:
    """SIGTERM to the process group now, SIGKILL when the grace period is over (a SIGALRM timer)."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = max(grace_seconds, 0.001)  # a zero timer would mean "no timer"
        self.requested = False
        self.child: int | None = None  # the command's pid, which is also its process group's id

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
            _kill_group(self.child, signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, self.grace_seconds)

    def _on_grace_over(self, _signum: int, _frame: FrameType | None) -> None:
        if self.child is not None:
            _kill_group(self.child, signal.SIGKILL)


def run(
    replica_dir: str | os.PathLike[str], command: list[str], grace_seconds: float, max_bytes: int, backups: int
) -> int:
    stopper = _Stopper(grace_seconds)
    stopper.install()
    if stopper.requested:  # stopped before anything ran
        write_atomically(os.path.join(replica_dir, EXIT_CODE_FILE), "0")
        return 0
    try:
        pid, output = spawn(command)
    except OSError as exc:
        log = OutputLog(replica_dir, max_bytes, backups)
        log.write(f"berth: cannot run {command[0]!r}: {exc}\n")
        log.close()
        write_atomically(os.path.join(replica_dir, EXIT_CODE_FILE), str(EXIT_CODE_NOT_STARTED))
        return EXIT_CODE_NOT_STARTED
    stopper.child = pid
    if stopper.requested:  # the signal came while the child was being spawned
        stopper.terminate()
    import threading  # only now: what is left is for the copying and the exit

    log = OutputLog(replica_dir, max_bytes, backups)
    write_atomically(os.path.join(replica_dir, PID_FILE), str(pid))
    copier = threading.Thread(target=_copy_output, args=(os.fdopen(output, "rb"), log), daemon=True)
    copier.start()
    _, status = os.waitpid(pid, 0)
    code = exit_code_of(os.waitstatus_to_exitcode(status))
    signal.setitimer(signal.ITIMER_REAL, 0)
    # As when a container's main process ends: what it left running in its group goes too.
    _kill_group(pid, signal.SIGKILL)
    copier.join(timeout=2)
    log.close()
    write_atomically(os.path.join(replica_dir, EXIT_CODE_FILE), str(code))
    return code


_OPTIONS = frozenset({"--dir", "--grace", "--log-max-bytes", "--log-backups"})


def _parse_quickly(argv: list[str]) -> tuple[str, float, int, int, list[str]] | None:
    """The arguments as the local runtime writes them (`--option value` ..., `--`, the command), without
    argparse, whose import took ~20 ms before the command could start; None for anything else, which
    argparse then reads (or explains)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != "--" and argv[i].startswith("-"):
        if argv[i] not in _OPTIONS or i + 1 >= len(argv):
            return None
        found[argv[i]] = argv[i + 1]
        i += 2
    command = argv[i + 1 :] if argv[i : i + 1] == ["--"] else argv[i:]
    if "--dir" not in found or not command:
        return None
    try:
        grace = float(found.get("--grace", 10.0))
        max_bytes = int(found.get("--log-max-bytes", LOG_MAX_BYTES))
        backups = int(found.get("--log-backups", LOG_BACKUPS))
    except ValueError:
        return None
    return found["--dir"], grace, max_bytes, backups, command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = _parse_quickly(argv)
    if quick is not None:
        directory, grace, max_bytes, backups, command = quick
        return run(directory, command, grace, max_bytes, backups)
    import argparse

    parser = argparse.ArgumentParser(prog="python -I -S libs/runtime/shim.py")
    parser.add_argument("--dir", required=True, help="the replica's directory")
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
