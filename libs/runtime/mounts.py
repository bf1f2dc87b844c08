"""Integrations on the local runtime: a replica cannot have `/models/falcon` mounted (no container),
so it sees each integration through its working directory, `./models/falcon` (a symlink to the
cached content), and through `BERTH_INTEGRATION_<NAME>`, the absolute path of that link (name upper-
cased, every character other than a letter or digit made `_`: `falcon` -> BERTH_INTEGRATION_FALCON,
`my-s3-integration` -> BERTH_INTEGRATION_MY_S3_INTEGRATION).

Read-only is enforced where the machine allows it: the replica's command runs in a private mount
namespace (`unshare`) in which each read-only mount's content is bind-mounted onto itself read-only,
so the replica's writes there fail (EROFS) while every other process, berth's cache fetches included,
sees the directory as it was. Needs `unshare` and the right to make a mount namespace (root, or an
unprivileged user namespace); where it is missing the runtime says in status that readOnly is not
enforced."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from libs.runtime.base import Mount

ENV_PREFIX = "BERTH_INTEGRATION_"


def env_name(name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def link_mounts(workdir: Path, mounts: tuple[Mount, ...]) -> dict[str, str]:
    """Make each mount's link under `workdir` (replacing an older one); the env variables naming them."""
    env = {}
    for mount in mounts:
        link = workdir / mount.path.lstrip("/")
        link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(mount.source, link, target_is_directory=True)
        env[env_name(mount.name)] = str(link)
    return env


# Bind each path given before `--` onto itself read-only (util-linux >= 2.27 remounts a read-only bind
# by itself), then become the command. Fails (126) rather than run the command with writable content.
_READ_ONLY_SCRIPT = 'while [ "$1" != -- ]; do mount --bind -o ro "$1" "$1" || exit 126; shift; done; shift; exec "$@"'


def _unshare() -> list[str] | None:
    """How to enter a private mount namespace here: as root directly, else in a user namespace that
    maps the user onto itself (its files stay its own)."""
    command = shutil.which("unshare")
    if command is None or shutil.which("mount") is None:
        return None
    if os.geteuid() == 0:
        return [command, "--mount", "--propagation", "private"]
    return [command, "--user", "--map-current-user", "--mount", "--propagation", "private"]


@functools.cache
def read_only_wrapper_works() -> bool:
    """Whether a read-only bind in a private mount namespace works on this machine (tried once)."""
    base = _unshare()
    if base is None:
        return False
    with tempfile.TemporaryDirectory(prefix="berth-ro-") as tmp:
        probe = f"{tmp}/probe"
        command = [*base, "--", "sh", "-c", _READ_ONLY_SCRIPT, "sh", tmp, "--", "sh", "-c", f": > {probe}"]
        try:
            done = subprocess.run(command, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        # Refused inside (non-zero, nothing written) and the directory is still writable outside.
        return done.returncode != 0 and not os.path.exists(probe) and os.access(tmp, os.W_OK)


def read_only_prefix(mounts: tuple[Mount, ...]) -> list[str]:
    """What to run the replica's command under so that its read-only mounts are read-only: empty when
    there is none, or when this machine cannot (`read_only_not_enforced` says so for status)."""
    sources = [m.source for m in mounts if m.read_only and m.source]
    base = _unshare()
    if not sources or base is None or not read_only_wrapper_works():
        return []
    return [*base, "--", "sh", "-c", _READ_ONLY_SCRIPT, "sh", *sources, "--"]


def read_only_not_enforced(mounts: tuple[Mount, ...]) -> str | None:
    """For status: the read-only integrations this machine cannot make read-only, and why."""
    names = [m.name for m in mounts if m.read_only]
    if not names or read_only_wrapper_works():
        return None
    return (f"readOnly for integrations {', '.join(names)} (this machine gives no private mount namespace: "
            "unshare missing or not permitted; replicas can write to the content)")  # fmt: skip
