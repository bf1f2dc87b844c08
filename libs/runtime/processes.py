"""OS processes of the local runtime, seen through psutil: is it (still) the one we started, signal
it, wait for it to end, and what this machine has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess

import psutil

POLL_SECONDS = 0.2  # only where pidfd_open is missing (not Linux)


def alive(process: psutil.Process) -> bool:
    """Running, and the same process (psutil compares create times); a zombie has ended."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def find_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The live process with this pid and create time; None when the pid is gone or reused."""
    if pid is None or create_time is None:
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > 0.01:
            return None  # the pid now belongs to someone else
    except psutil.Error:
        return None
    return process if alive(process) else None


def send_signal(process: psutil.Process | None, sig: signal.Signals) -> None:
    if process is not None:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)  # psutil checks the process is still the same one


async def wait_exited(process: psutil.Process) -> None:
    """Until the process ends. A pidfd wakes us, for our own children and adopted processes alike."""
    try:
        fd: int | None = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None
    try:
        if fd is not None and alive(process):  # checked after opening: the fd is of this process
            await _until_readable(fd)
        while fd is None and alive(process):
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if fd is not None:
            os.close(fd)


async def _until_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def detect_gpus() -> int:
    """GPUs of this machine: what `nvidia-smi -L` lists, 0 without it."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
