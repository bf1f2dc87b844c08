"""The content cache of the integrations service, on this machine (`<data dir>/integrations`).

- `sources/<key>/`: one working copy per source (a git mirror, an s3 mirror with its manifest), kept
  between fetches so that a re-sync fetches only what changed.
- `content/<identity>/`: one immutable copy per content identity (a commit, a set of ETags), made of
  hard links to the source's files (no second copy of the bytes). Revisions whose integration has the
  same identity share it; a replica links to it from its working directory.

With a size limit, the least recently used sources and contents are removed until the cache fits
(`Cache.evict`); "used" is the directory's modification time, set whenever a fetch makes or reuses it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


class FetchFailed(Exception):
    """An integration could not be fetched; the message is the status reason (never a credential)."""


class Refused(Exception):
    """Content berth will not serve to a replica (e.g. a symlink leading out of it); says why."""


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Tally:
    files: int
    bytes: int


@dataclass(frozen=True)
class Fetched:
    identity: str
    path: Path  # the immutable content
    total: Tally
    fetched: Tally  # what this fetch downloaded


def os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full while fetching the integration"
    return f"cannot write the integration's files: {exc.strerror or type(exc).__name__}"


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def source_dir(self, *identifying: str) -> Path:
        path = self.root / "sources" / digest(*identifying)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        used(path)
        return path

    def written(self, identifying: tuple[str, ...]) -> Tally:
        """Files and bytes in a source's working copy (a fetch's progress is how this grows)."""
        path = self.root / "sources" / digest(*identifying)
        return tally(path) if path.exists() else Tally(0, 0)

    def content_dir(self, kind: str, identity: str) -> Path:
        return self.root / "content" / f"{kind}-{identity}"

    def publish(self, kind: str, identity: str, tree: Path, skip: tuple[str, ...] = ()) -> tuple[Path, Tally]:
        """The immutable copy of `tree` for `identity` (made once, by hard links; its own files when
        the cache lies on another file system); a symlink leading out of `tree` refuses it."""
        check_links(tree, skip)
        target = self.content_dir(kind, identity)
        if not target.exists():
            staging = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(tree, staging, symlinks=True, copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns(*skip))
            os.replace(staging, target)
        used(target)
        return target, tally(target)

    def evict(self, max_bytes: int, keep: Iterable[Path]) -> Eviction:
        """Remove the least recently used sources and contents until the cache holds at most
        `max_bytes` (a file linked from several places counts once); contents in `keep` (what running
        revisions use) are never removed. Call it when no fetch is writing (the fetch lock)."""
        kept = {Path(path).resolve() for path in keep}
        units = [p for area in ("content", "sources") if (self.root / area).is_dir() for p in (self.root / area).iterdir()
                 if not p.name.startswith(".")]  # fmt: skip
        inodes = {unit: _inodes(unit) for unit in units}
        links = Counter(inode for held in inodes.values() for inode in held)
        sizes = {inode: size for held in inodes.values() for inode, size in held.items()}
        total = sum(sizes.values())
        outcome = Eviction(bytes_before=total, bytes_after=total)
        for unit in sorted(units, key=_last_used):
            if outcome.bytes_after <= max_bytes:
                break
            if unit.resolve() in kept:
                continue
            shutil.rmtree(unit, ignore_errors=True)
            outcome.removed.append(unit.name)
            for inode in inodes[unit]:
                links[inode] -= 1
                if links[inode] == 0:
                    outcome.bytes_after -= sizes[inode]
        return outcome


@dataclass
class Eviction:
    bytes_before: int
    bytes_after: int
    removed: list[str] = field(default_factory=list)


def used(path: Path) -> None:
    """Mark a cache directory as used now (its modification time orders eviction)."""
    now = time.time()
    os.utime(path, (now, now))


def _last_used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _inodes(tree: Path) -> dict[tuple[int, int], int]:
    found: dict[tuple[int, int], int] = {}
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            try:
                info = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            found[(info.st_dev, info.st_ino)] = info.st_size
    return found


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_links(tree: Path, skip: tuple[str, ...] = ()) -> None:
    """Every symlink in `tree` must resolve inside it: content must not reach into the host."""
    root = tree.resolve()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise Refused(f"the symlink {path.relative_to(tree)} leads outside the integration")


def tally(tree: Path) -> Tally:
    files = size = 0
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                files += 1
                size += path.stat().st_size
    return Tally(files, size)
