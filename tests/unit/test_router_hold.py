"""Scale to zero at the router: with `hold_seconds`, a request to a deployment without a serving
replica waits (bounded in time and number) for an assignment that brings one, then goes to it."""

from __future__ import annotations

import asyncio

from services.router import proxy
from services.router.table import RoutingTable
from tests.unit.test_router_table import assignment, target


async def test_a_held_request_goes_to_the_replica_the_next_assignment_brings() -> None:
    table = RoutingTable()
    table.apply(assignment(1, hold_seconds=10.0), None)
    route = next(iter(table.by_key.values()))
    waiting = asyncio.create_task(proxy._held(route))
    await asyncio.sleep(0)  # it waits
    assert not waiting.done() and route.held == 1
    table.apply(assignment(2, target("rev", 100, "r1"), hold_seconds=10.0), None)
    replicas = await asyncio.wait_for(waiting, 1.0)
    assert [r.replica_id for r in replicas] == ["r1"] and route.held == 0


async def test_holding_is_bounded_in_time_and_number_and_ends_with_the_deployment() -> None:
    table = RoutingTable()
    table.apply(assignment(1, hold_seconds=0.05), None)
    route = next(iter(table.by_key.values()))
    assert await proxy._held(route) == ()  # nothing came within 50 ms: answered 503 by the caller
    route.hold_seconds = 10.0
    route.held = proxy.MAX_HELD_PER_DEPLOYMENT
    assert await proxy._held(route) == ()  # the queue is full: at once
    route.held = 0
    waiting = asyncio.create_task(proxy._held(route))
    await asyncio.sleep(0)
    table.apply(assignment(2, deleted=True), None)
    assert await asyncio.wait_for(waiting, 1.0) == ()  # deleted: the held request is answered at once


async def test_without_hold_seconds_nothing_waits() -> None:
    table = RoutingTable()
    table.apply(assignment(1), None)
    route = next(iter(table.by_key.values()))
    assert route.hold_seconds == 0 and await asyncio.wait_for(proxy._held(route), 0.1) == ()
