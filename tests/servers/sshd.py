"""A local ssh server for tests: OpenSSH's sshd on a free port of 127.0.0.1, run as the current user
with its own generated host key and one authorised client key (no password, no PAM, StrictModes off
for the temporary directory), serving git over ssh (`git-upload-pack`) for repositories on this
machine. Skipped where sshd is not installed (Debian: apt-get install openssh-server)."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from libs.natsd import free_port, wait_for_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    client_key: str  # the authorised private key (OpenSSH format)
    host_public_key: str

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


def keypair(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)
    return path.read_text(), path.with_suffix(".pub").read_text()


@contextmanager
def ssh_server(workdir: Path, port: int | None = None) -> Iterator[SshServer]:
    """`port`: the same port as an earlier server (a host whose key changed), else a free one."""
    workdir.mkdir(parents=True, exist_ok=True)
    _, host_public = keypair(workdir / "host_key")
    client_private, client_public = keypair(workdir / "client_key")
    (workdir / "authorized_keys").write_text(client_public)
    port = port or free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {workdir / 'host_key'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nPidFile {workdir / 'sshd.pid'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = (workdir / "sshd.log").open("w")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, process=process)
        yield SshServer(port, getpass.getuser(), client_private, host_public)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
