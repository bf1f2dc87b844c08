"""Stopping asyncio tasks for certain.

On Python 3.11 `asyncio.wait_for` (which nats-py, FastStream and aiohttp use inside) can swallow a
cancellation that arrives just as the call it waits for completes. A loop task then runs on, and an
`await task` after a single `cancel()` waits for ever: a service that never stops. So cancel again
until the task is done, within a bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from libs.logging import get_logger

log = get_logger("berth")


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = 10.0) -> None:
    """Cancel `tasks` (the calling task excepted) and wait until they are done, cancelling again any
    that swallowed it; after `timeout`, log the ones still running and return."""
    current = asyncio.current_task()
    pending = {task for task in tasks if task is not current and not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            for task in pending:
                log.error("task did not stop when cancelled", task=task.get_name(), stack=_where(task))
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(1.0, remaining))
    for task in tasks:  # retrieve their outcome: no "exception was never retrieved" at exit
        if task is not current and task.done() and not task.cancelled():
            task.exception()


def _where(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=1)
    return f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
