"""A replica's output log, rotated by size (output.log, output.log.1 ...): its last lines, and the
lines written from now on. The shim starts each line with the time it read it, as Kubernetes'
`kubectl logs --timestamps` does (RFC 3339 UTC, then one space); `split_stamp` takes it off again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

FOLLOW_POLL_SECONDS = 0.2
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) ")


def split_stamp(line: str) -> tuple[datetime | None, str]:
    """(when the line was written, the line as printed); None for a line written without a time (by
    a berth before timestamps, or cut off mid-line)."""
    match = _STAMP.match(line)
    if match is None:
        return None, line
    text = match.group(1)
    if len(text) > 27:  # Kubernetes writes nanoseconds; Python reads at most microseconds
        text = text[:26] + "Z"
    try:
        return datetime.fromisoformat(text), line[match.end() :]
    except ValueError:
        return None, line


def unstamped(lines: list[str]) -> list[str]:
    return [split_stamp(line)[1] for line in lines]


async def follow_unstamped(lines: AsyncGenerator[str]) -> AsyncIterator[str]:
    """`lines` without their times; closing this closes `lines` (and the file it reads) at once."""
    try:
        async for line in lines:
            yield split_stamp(line)[1]
    finally:
        await lines.aclose()


def tail_lines(paths_newest_first: Iterable[Path], count: int) -> list[str]:
    """The last `count` lines across rotated files, oldest first, without reading whole files."""
    lines: list[str] = []
    for path in paths_newest_first:
        if len(lines) >= count:
            break
        lines = _last_lines(path, count - len(lines)) + lines
    return lines


def _last_lines(path: Path, count: int, block: int = 64 * 1024) -> list[str]:
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return []
    with file:
        position = file.seek(0, os.SEEK_END)
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(block, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    if position > 0:
        chunks = chunks[1:]  # the first one starts mid-line
    return [chunk.decode("utf-8", errors="replace") for chunk in chunks[-count:]] if count > 0 else []


async def follow(path: Path, while_true: Callable[[], bool]) -> AsyncIterator[str]:
    """Lines written to `path` from now on, across rotations, for as long as `while_true()`."""
    file: BinaryIO | None = None
    with contextlib.suppress(FileNotFoundError):
        file = path.open("rb")
        file.seek(0, os.SEEK_END)  # only what comes next
    pending = b""
    try:
        while while_true():
            if file is None:  # not written yet: all of it is new
                try:
                    file = path.open("rb")
                except FileNotFoundError:
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)
                    continue
            chunk = file.read()
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            elif _rotated(path, file):  # what the old file had is read: go on with the new one
                file.close()
                file = path.open("rb")
            else:
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
    finally:
        if file is not None:
            file.close()


def _rotated(path: Path, file: BinaryIO) -> bool:
    """The file we read is no longer the one at `path` (the shim rolled it over)."""
    try:
        return os.stat(path).st_ino != os.fstat(file.fileno()).st_ino
    except FileNotFoundError:
        return False
