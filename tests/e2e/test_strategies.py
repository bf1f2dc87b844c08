"""Update strategies through the whole platform, under a steady load through the router (4 clients in
a loop, each waiting for its answer): a blue-green switch and the switch back, a canary at 20 %
(its share of 2,000 requests) then aborted, and a canary promoted - each with no failed request, every request answered by
the revision the weights say."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import iris_spec
from tests.e2e.load import Load, ready_by_revision, settles_on, steady_load
from tests.e2e.test_endpoint import YAML, create, status_of, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow
V2_COMMAND = ["python", "-X", "utf8", "-m", "examples.iris.server"]


async def put_spec(api: httpx.AsyncClient, document: dict[str, Any]) -> dict[str, Any]:
    current = (await api.get("/v1/deployments/iris")).json()
    response = await api.put(
        "/v1/deployments/iris", content=yaml.safe_dump(document), headers={**YAML, "If-Match": f'"{current["spec_id"]}"'}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def iris(strategy: dict[str, Any], command: list[str] | None = None) -> dict[str, Any]:
    document = yaml.safe_load(iris_spec(replicas=1))
    document["updateStrategy"] = strategy
    if command:
        document["command"] = command
    return document


async def serving(api: httpx.AsyncClient, strategy: dict[str, Any]) -> tuple[str, set[str]]:
    """Version 1 with `strategy`, ready: its revision and its ready replicas."""
    first = await create(api, yaml.safe_dump(iris(strategy)))
    await wait_phase(api, "iris", "Ready", ready=1)
    return first["revision_id"], (await ready_by_revision(api, "iris"))[first["revision_id"]]


async def test_blue_green_switch_and_switch_back_fail_no_request(api: httpx.AsyncClient, router: httpx.AsyncClient) -> None:
    blue_green = {"type": "blue-green", "scaleDownDelaySeconds": 600}
    blue_rev, blue = await serving(api, blue_green)
    async with steady_load(router, "/default/iris/predict") as load:
        await load.running()
        green_rev = (await put_spec(api, iris(blue_green, V2_COMMAND)))["revision_id"]

        async def switched() -> set[str] | None:
            by = await ready_by_revision(api, "iris")
            return by.get(green_rev) if set(by) == {blue_rev, green_rev} else None

        green = await eventually(switched, timeout=60, interval=0.2, what="green ready beside blue")
        await settles_on(load, green)  # all at once: blue takes nothing though it still runs
        assert blue <= (await ready_by_revision(api, "iris"))[blue_rev]

        rolled = await api.post("/v1/deployments/iris/rollback", json={"spec_version": 1})
        assert rolled.status_code == 200 and rolled.json()["revision_id"] == blue_rev
        await settles_on(load, blue, timeout=5)  # switched back at once
        assert (await ready_by_revision(api, "iris"))[blue_rev] == blue  # nothing was started again
    assert load.failures == []


CANARY_AT_20 = {"type": "canary", "canarySteps": [20], "canaryStepSeconds": 3600}


async def canary_taking_traffic(api: httpx.AsyncClient, load: Load) -> tuple[str, set[str]]:
    """Version 2 as a canary at 20 % under `load`: its revision and its ready replicas, once it answers."""
    canary_rev = (await put_spec(api, iris(CANARY_AT_20, V2_COMMAND)))["revision_id"]

    async def ready_canaries() -> set[str] | None:
        return (await ready_by_revision(api, "iris")).get(canary_rev)

    canaries = await eventually(ready_canaries, timeout=60, interval=0.2, what="the canary ready")
    # The assignment with the weights follows its readiness.
    await eventually(lambda: bool(set(load.answered_by) & canaries), timeout=10, what="the canary takes traffic")
    return canary_rev, canaries


async def only_revision_left(api: httpx.AsyncClient, revision: str) -> None:
    async def left() -> bool:
        return {r["revision_id"] for r in (await status_of(api, "iris"))["replicas"]} == {revision}

    await eventually(left, timeout=30, what=f"only revision {revision} running")


async def test_a_canary_at_20_percent_takes_its_share_then_aborts_without_a_failed_request(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    stable_rev, stable = await serving(api, CANARY_AT_20)
    async with steady_load(router, "/default/iris/predict") as load:
        await load.running()
        _, canaries = await canary_taking_traffic(api, load)
        load.answered_by.clear()
        await eventually(lambda: load.answered >= 2000, timeout=120, interval=0.1, what="2,000 requests")
        share = sum(n for replica, n in load.answered_by.items() if replica in canaries) / load.answered
        assert 0.15 <= share <= 0.25, share
        assert set(load.answered_by) <= stable | canaries

        assert (await api.post("/v1/deployments/iris/rollback", json={"spec_version": 1})).status_code == 200
        await settles_on(load, stable, timeout=5)  # aborted: all traffic back at once
        await only_revision_left(api, stable_rev)  # the canary stopped
    assert load.failures == []


async def test_a_promoted_canary_takes_all_traffic_and_the_stable_set_stops_without_a_failed_request(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    _, stable = await serving(api, CANARY_AT_20)
    async with steady_load(router, "/default/iris/predict") as load:
        await load.running()
        canary_rev, canaries = await canary_taking_traffic(api, load)
        load.answered_by.clear()
        await eventually(lambda: load.answered >= 100, timeout=30, what="100 answers at the first step")
        assert set(load.answered_by) & stable and set(load.answered_by) & canaries  # 20 %: both answer

        promoted = await api.post("/v1/deployments/iris/promote")
        assert promoted.status_code == 200, promoted.text
        await settles_on(load, canaries, timeout=10)  # promoted: all traffic on the canary
        await only_revision_left(api, canary_rev)  # the stable set stopped
    assert load.failures == []


async def test_an_update_that_never_gets_ready_is_rolled_back_and_the_endpoint_keeps_answering(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    rolling = {"type": "rolling", "progressDeadlineSeconds": 5}
    stable_rev, stable = await serving(api, rolling)
    async with steady_load(router, "/default/iris/predict") as load:
        await load.running()
        never_ready = ["python", "-c", "import time; time.sleep(3600)"]  # starts, never answers a probe
        broken_rev = (await put_spec(api, iris(rolling, never_ready)))["revision_id"]

        async def rolled_back() -> dict[str, Any] | None:
            status = await status_of(api, "iris")
            return status if status["phase"] == "Degraded" and "rolled back" in status["reason"] else None

        status = await eventually(rolled_back, timeout=30, interval=0.2, what="rolled back at the deadline")
        assert "progress deadline (5 s)" in status["reason"]

        async def in_history() -> dict[str, Any] | None:
            newest = (await api.get("/v1/deployments/iris/history")).json()["items"][0]
            return newest if newest["rolled_back_at"] else None

        recorded = await eventually(in_history, timeout=10, what="the rollback in history")
        assert recorded["spec_version"] == 2 and "progress deadline (5 s)" in recorded["rolled_back_reason"]

        async def broken_gone() -> bool:
            replicas = (await status_of(api, "iris"))["replicas"]
            return {r["revision_id"] for r in replicas} == {stable_rev}

        await eventually(broken_gone, timeout=30, what="the broken revision's replicas stopped")
        await settles_on(load, stable)
    assert load.failures == []
    assert broken_rev != stable_rev


async def test_a_canary_whose_error_rate_exceeds_its_bound_aborts_by_itself(
    api: httpx.AsyncClient, router: httpx.AsyncClient
) -> None:
    analysed = {
        "type": "canary", "canarySteps": [50], "canaryStepSeconds": 3600,
        "analysis": {"maxErrorRateIncrease": 5, "minRequests": 20},
    }  # fmt: skip
    stable_rev, stable = await serving(api, analysed)
    async with steady_load(router, "/default/iris/predict") as load:
        await load.running()
        bad = iris(analysed, ["python", "-m", "tests.servers.switchable"])  # probes pass, /predict answers 500
        bad["env"] = [{"name": "PREDICT", "value": "500"}]
        canary_rev = (await put_spec(api, bad))["revision_id"]

        async def aborted() -> dict[str, Any] | None:
            status = await status_of(api, "iris")
            return status if status["phase"] == "Degraded" and "canary analysis" in status["reason"] else None

        status = await eventually(aborted, timeout=60, interval=0.2, what="the canary aborted by its analysis")
        assert "error rate" in status["reason"] and "maxErrorRateIncrease (5 points)" in status["reason"]
        assert load.failures and all(f.startswith("500") for f in load.failures)  # the canary's answers

        async def canary_gone() -> bool:
            return {r["revision_id"] for r in (await status_of(api, "iris"))["replicas"]} == {stable_rev}

        await eventually(canary_gone, timeout=30, what="the canary stopped")
        failed_before = len(load.failures)
        await settles_on(load, stable)
        assert len(load.failures) == failed_before  # the stable revision answers everything again
    assert canary_rev != stable_rev
