"""Stopping tasks: a loop whose cancellation a library swallowed still stops."""

from __future__ import annotations

import asyncio

from libs.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_stops() -> None:
    swallowed = 0

    async def loop_that_swallows_once() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:  # as Python 3.11's asyncio.wait_for does when the call completes as it is cancelled
                    raise
                swallowed += 1

    task = asyncio.create_task(loop_that_swallows_once())
    await asyncio.sleep(0)
    await cancel_and_wait([task], timeout=10)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_stops_is_given_up_after_the_timeout() -> None:
    let_go = False

    async def immortal() -> None:
        while not let_go:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    await cancel_and_wait([task], timeout=0.2)
    assert not task.done()
    let_go = True
    task.cancel()
    await task
