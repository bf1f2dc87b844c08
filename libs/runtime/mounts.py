"""Integrations on the local runtime: a replica cannot have `/models/falcon` mounted (no container),
so it sees each integration through its working directory, `./models/falcon` (a symlink to the
cached content), and through `BERTH_INTEGRATION_<NAME>`, the absolute path of that link (name upper-
cased, every character other than a letter or digit made `_`: `falcon` -> BERTH_INTEGRATION_FALCON,
`my-s3-integration` -> BERTH_INTEGRATION_MY_S3_INTEGRATION)."""

from __future__ import annotations

import os
import re
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
