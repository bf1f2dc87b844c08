"""Aliases through the whole platform: `@<alias>` reaches the version it names, its replicas keep
running beside the current version's, and moving it under load fails no request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import iris_spec
from tests.e2e.load import ready_by_revision, settles_on, steady_load
from tests.e2e.test_endpoint import YAML, create, predict, wait_phase
from tests.helpers import eventually

pytestmark = pytest.mark.slow


async def test_moving_an_alias_under_load_fails_no_request(api: httpx.AsyncClient, router: httpx.AsyncClient) -> None:
    first = await create(api, iris_spec(replicas=1))
    await wait_phase(api, "iris", "Ready", ready=1)
    document = yaml.safe_load(iris_spec(replicas=1))
    document["command"] = ["python", "-X", "utf8", "-m", "examples.iris.server"]
    second = await api.put(
        "/v1/deployments/iris", content=yaml.safe_dump(document), headers={**YAML, "If-Match": f'"{first["spec_id"]}"'}
    )
    assert second.status_code == 200, second.text
    rev1, rev2 = first["revision_id"], second.json()["revision_id"]
    assert (await api.put("/v1/deployments/iris/aliases/prod", json={"spec_version": 1})).status_code == 200

    async def both_running() -> dict[str, set[str]] | None:
        by = await ready_by_revision(api, "iris")
        return by if set(by) == {rev1, rev2} else None

    running = await eventually(both_running, timeout=60, interval=0.2, what="v1 kept for the alias, v2 current")
    answered = await predict(router, "/default/iris@prod/predict")
    assert answered.status_code == 200 and answered.headers["X-Berth-Replica"] in running[rev1]
    plain = await predict(router)
    assert plain.status_code == 200 and plain.headers["X-Berth-Replica"] in running[rev2]
    unknown = await predict(router, "/default/iris@nope/predict")
    assert unknown.status_code == 404 and "nope" in unknown.text

    async with steady_load(router, "/default/iris@prod/predict") as load:
        await load.running()
        moved = await api.put("/v1/deployments/iris/aliases/prod", json={"spec_version": 2})
        assert moved.status_code == 200, moved.text

        async def v1_gone() -> dict[str, Any] | None:
            by = await ready_by_revision(api, "iris")
            return by if set(by) == {rev2} else None

        await eventually(v1_gone, timeout=60, interval=0.2, what="v1 retired once no alias names it")
        await settles_on(load, running[rev2], timeout=5)  # only v2 answers @prod now
    assert load.failures == []
