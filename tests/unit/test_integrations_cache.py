"""The integrations cache's size limit on real files: least recently used first, contents a running
revision uses never, a file linked from a source and a content counted once."""

from __future__ import annotations

import os
from pathlib import Path

from services.integrations.cache import Cache

KB = 1000


def tree(root: Path, name: str, size: int = KB) -> Path:
    path = root / "trees" / name
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(os.urandom(size))
    return path


def published(cache: Cache, root: Path, name: str, last_used: float) -> Path:
    content, _ = cache.publish("s3", name, tree(root, name))
    os.utime(content, (last_used, last_used))
    return content


def test_the_least_recently_used_content_goes_first_until_the_cache_fits(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    old, middle, new = (published(cache, tmp_path, n, t) for n, t in (("old", 100), ("middle", 200), ("new", 300)))
    outcome = cache.evict(2 * KB, keep=())
    assert (outcome.bytes_before, outcome.bytes_after) == (3 * KB, 2 * KB)
    assert not old.exists() and middle.exists() and new.exists()
    assert (new / "weights.bin").stat().st_size == KB


def test_content_a_running_revision_uses_is_never_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    old, middle, new = (published(cache, tmp_path, n, t) for n, t in (("old", 100), ("middle", 200), ("new", 300)))
    cache.evict(2 * KB, keep={old})
    assert old.exists() and not middle.exists() and new.exists()
    everything_in_use = cache.evict(KB, keep={old, new})
    assert old.exists() and new.exists() and everything_in_use.bytes_after == 2 * KB  # above the limit: all in use
    assert everything_in_use.removed == []


def test_a_fetch_that_reuses_content_makes_it_recently_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    first = published(cache, tmp_path, "first", 100)
    second = published(cache, tmp_path, "second", 200)
    again, _ = cache.publish("s3", "first", tmp_path / "trees" / "first")  # a new revision with the same content
    assert again == first
    cache.evict(KB, keep=())
    assert first.exists() and not second.exists()


def test_bytes_linked_from_a_source_and_its_content_count_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    source = cache.source_dir("s3", "bucket")
    (source / "weights.bin").write_bytes(os.urandom(KB))
    content, _ = cache.publish("s3", "linked", source)
    os.utime(content, (100, 100))
    os.utime(source, (200, 200))
    assert cache.evict(10 * KB, keep=()).bytes_before == KB
    # Removing the content alone frees nothing (the source holds the same file): the source goes too.
    outcome = cache.evict(KB // 2, keep=())
    assert not content.exists() and not source.exists() and outcome.bytes_after == 0
