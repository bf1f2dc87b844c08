"""volume integrations: an existing directory given to the replicas as it is (not copied, not
cached, never evicted). On the local runtime it is a directory of this machine, checked when
materialised: it must exist, be a directory and be named by its real path (a symlink on the way could
point it anywhere after the spec was reviewed). On the kubernetes runtime the kubelet mounts it (a
PersistentVolumeClaim, or a hostPath of the node the Pod lands on): this machine has nothing to check."""

from __future__ import annotations

import os
from pathlib import Path

from libs.spec import VolumeIntegration
from services.integrations.cache import Fetched, FetchFailed, Tally, digest

NOTHING = Tally(0, 0)  # a host directory is not walked: it may hold millions of files


def resolve(integration: VolumeIntegration, on_this_machine: bool = True) -> Fetched:
    if not on_this_machine:
        source = f"claim:{integration.claimName}" if integration.claimName else f"host:{integration.hostPath}"
        return Fetched(digest("volume", source), Path(integration.hostPath or "/"), NOTHING, NOTHING)
    if integration.hostPath is None:
        raise FetchFailed("the volume has no hostPath: a claimName (PersistentVolumeClaim) needs the kubernetes runtime")
    path = Path(integration.hostPath)
    if not path.exists():
        raise FetchFailed("the volume's hostPath does not exist on this machine")
    if not path.is_dir():
        raise FetchFailed("the volume's hostPath is not a directory")
    if Path(os.path.realpath(path)) != path:
        raise FetchFailed("the volume's hostPath goes through a symlink: give the directory's real path")
    return Fetched(digest("volume", str(path)), path, NOTHING, NOTHING)
