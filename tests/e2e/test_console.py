"""The web console in a real browser (Chromium through Playwright) against the whole platform: a user
signs in, creates the iris deployment through the form (after the API refused a field of it), watches
it become Ready without reloading, and drives it through every action of seeds/002. Each step checks
what the page shows and what the API then says. The screenshots in docs/console/ come from here:
`BERTH_CONSOLE_SHOTS=docs/console pytest tests/e2e/test_console.py` refreshes them; otherwise they go to
a temporary directory, so running the suite changes no tracked file."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.browser import ARGS, CHROMIUM, missing
from tests.e2e.conftest import Platform
from tests.helpers import eventually
from tests.servers.registry import RegistryProcess

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=missing() or "")]

SETOSA = [5.1, 3.5, 1.4, 0.2]
# The iris form as a user fills it (examples/iris.yaml).
IRIS_FORM = {
    "name": "iris",
    "description": "scikit-learn logistic regression on the iris data set",
    "model.id": "iris-logistic-regression",
    "model.version": "1",
    "resources.replicas": "2",
    "image": "python:3.11-slim",
    "command": "python\n-m\nexamples.iris.server",
    "healthChecks.startup.path": "/startup",
    "healthChecks.startup.periodSeconds": "1",
    "healthChecks.startup.failureThreshold": "30",
    "healthChecks.readiness.path": "/readiness",
    "healthChecks.readiness.periodSeconds": "1",
    "healthChecks.readiness.timeoutSeconds": "2",
    "healthChecks.readiness.failureThreshold": "2",
    "healthChecks.liveness.path": "/liveness",
    "healthChecks.liveness.periodSeconds": "5",
    "healthChecks.liveness.timeoutSeconds": "2",
}


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            await browser.close()


@functools.cache
def shots() -> Path:
    chosen = os.environ.get("BERTH_CONSOLE_SHOTS")
    folder = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="berth-console-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(shots() / f"{name}.png"), full_page=name != "details")


async def deployment(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.get("/v1/deployments/iris")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def phase_shown(page: Any, phase: str, timeout: float = 60_000) -> None:
    await page.locator("h1 + .phase", has_text=phase).wait_for(timeout=timeout)


async def test_the_iris_deployment_through_every_page_of_the_console(
    platform: Platform, api: httpx.AsyncClient, router: httpx.AsyncClient, page: Any
) -> None:
    from playwright.async_api import expect

    console = f"{platform.settings.resolved_api_url}/ui/"
    # Sign in: the token is asked for, kept in the tab's sessionStorage and never put in a URL.
    await page.goto(console)
    await page.get_by_label("API token").wait_for()
    await shot(page, "login")
    await page.get_by_label("API token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#token-error")).to_contain_text("not valid")
    await page.get_by_label("API token").fill(platform.token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="No deployments yet")).to_be_visible()
    assert platform.token not in page.url

    # Create through the form; the API's refusal of a port shows beside the Ports field.
    await page.locator(".page-head").get_by_role("link", name="Create Deployment").click()
    for name, value in IRIS_FORM.items():
        await page.locator(f'[name="{name}"]').fill(value)
    await page.locator('[name="resources.ports"]').fill("70000")
    await page.get_by_role("button", name="Create Deployment").click()
    ports_error = page.locator('[data-field="resources.ports"] .error')
    await expect(ports_error).to_be_visible()
    await expect(ports_error).to_contain_text("65535")
    await shot(page, "create-error")
    assert (await api.get("/v1/deployments")).json()["items"] == []  # nothing was created
    await page.locator('[name="resources.ports"]').fill("8000")
    await page.get_by_role("tab", name="YAML").click()
    yaml_text = await page.locator("#yaml").input_value()
    assert "name: iris" in yaml_text and "ports: [8000]" in yaml_text and "path: /readiness" in yaml_text
    await shot(page, "create-yaml")
    await page.get_by_role("tab", name="Form").click()
    await shot(page, "create")
    await page.get_by_role("button", name="Create Deployment").click()

    # Ready shows on the details page without a reload (the SSE feed): a mark set on the page stays.
    await page.get_by_role("heading", name="iris", exact=True).wait_for()
    await page.evaluate("window.__sameDocument = true")
    await phase_shown(page, "Ready")
    await expect(page.locator(".current-instances")).to_contain_text("2 ready of 2 desired")
    assert await page.evaluate("window.__sameDocument") is True
    created = await deployment(api)
    assert created["status"]["phase"] == "Ready" and created["spec"]["model"] == {"id": "iris-logistic-regression", "version": "1"}
    await expect(page.locator("#endpoint")).to_have_text(created["endpoint"])
    answer = await router.post("/default/iris/predict", json={"instances": [SETOSA]})
    assert answer.status_code == 200, answer.text
    await expect(page.locator(".replicas-table tbody tr")).to_have_count(2)
    await expect(page.locator(".replicas-table")).to_contain_text("readiness passed")
    await shot(page, "details")

    # The list: the deployment at a glance, filtered by environment and searched by name.
    await page.get_by_role("link", name="Deployments", exact=True).click()
    row = page.locator(".deployments-table tbody tr", has_text="iris")
    await expect(row).to_contain_text("2/2")
    await expect(row).to_contain_text("Ready")
    await expect(row).to_contain_text("iris-logistic-regression · 1")
    await shot(page, "list")
    await page.get_by_label("Environment").select_option("production")
    await expect(page.get_by_role("heading", name="No deployment matches")).to_be_visible()
    await page.get_by_label("Environment").select_option("")
    await page.get_by_label("Search by name").fill("iri")
    await expect(row).to_be_visible()
    await row.get_by_role("link", name="iris").click()

    # Scale to 1.
    await page.get_by_role("link", name="Scale").click()
    await page.get_by_label("Replicas").fill("1")
    await shot(page, "scale")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator(".current-instances")).to_contain_text("1 ready of 1 desired", timeout=30_000)
    status = (await deployment(api))["status"]
    assert status["desired_replicas"] == 1 and status["desired_source"] == "user"

    # Edit: a live field and a restart field, each with its verdict before saving.
    await page.get_by_role("link", name="Edit").click()
    assert await page.locator('[name="name"]').is_disabled() and await page.locator('[name="model.id"]').is_disabled()
    await page.locator('[name="description"]').fill("iris, edited in the console")
    await page.get_by_role("button", name="Review changes").click()
    verdict = page.locator(".verdict")
    await expect(verdict.locator("tr", has_text="description")).to_contain_text("applies live")
    await expect(page.get_by_role("button", name="Update Deployment")).to_be_enabled()
    await page.locator('[name="resources.cpu"]').fill("1")
    await expect(page.get_by_role("button", name="Update Deployment")).to_be_disabled()  # review again first
    await page.get_by_role("button", name="Review changes").click()
    await expect(verdict.locator("tr", has_text="resources.cpu")).to_contain_text("replaces replicas")
    await expect(verdict.locator("tr", has_text="description")).to_contain_text("applies live")
    await shot(page, "edit")
    await page.get_by_role("button", name="Update Deployment").click()
    await page.get_by_role("heading", name="iris", exact=True).wait_for()
    edited = await deployment(api)
    assert edited["spec_version"] == 2 and edited["spec"]["description"] == "iris, edited in the console"
    assert edited["spec"]["resources"]["cpu"] == 1 and edited["spec"]["name"] == "iris"
    await expect(page.locator(".history")).to_contain_text("resources.cpu")

    async def settled() -> bool:
        d = await deployment(api)
        replicas = d["status"]["replicas"]
        return d["status"]["phase"] == "Ready" and bool(replicas) and all(r["revision_id"] == d["revision_id"] for r in replicas)

    await eventually(settled, timeout=60, interval=0.2, what="the edit rolled out")

    # Update Model with a canary, watched in progress, then promoted.
    await page.get_by_role("link", name="Update Model").click()
    await page.get_by_label("New model version").fill("2")
    await page.get_by_label("Canary", exact=True).check()
    await page.get_by_label("Canary traffic (%)").fill("50")
    await page.get_by_role("button", name="Review changes").click()
    await expect(page.locator(".verdict tr", has_text="model.version")).to_contain_text("replaces replicas")
    await shot(page, "update-model")
    await page.get_by_role("button", name="Update", exact=True).click()
    await page.get_by_role("heading", name="Canary in progress").wait_for(timeout=60_000)
    await expect(page.locator(".rollout")).to_contain_text("previous revision")
    await shot(page, "canary")
    canary = await deployment(api)
    assert canary["spec"]["updateStrategy"] == {"type": "canary", "canaryPercent": 50}
    await page.get_by_role("button", name="Promote").click()
    await page.get_by_role("heading", name="Canary in progress").wait_for(state="detached", timeout=60_000)
    await eventually(settled, timeout=60, interval=0.2, what="the promoted canary alone")
    promoted = await deployment(api)
    assert promoted["spec"]["model"]["version"] == "2" and promoted["spec_version"] == 3

    # Stop (confirmed in a dialog), then Start.
    await page.get_by_role("button", name="Stop", exact=True).click()
    await expect(page.get_by_role("dialog")).to_contain_text("endpoint will become unavailable")
    await shot(page, "stop")
    await page.get_by_role("button", name="Stop deployment").click()
    await phase_shown(page, "Stopped")
    stopped = await deployment(api)
    assert stopped["spec"]["enabled"] is False and stopped["status"]["phase"] == "Stopped"
    await page.get_by_role("button", name="Start").click()
    await phase_shown(page, "Ready")
    assert (await deployment(api))["spec"].get("enabled", True) is True

    # Logs of the replica that runs.
    await page.get_by_role("link", name="Logs").click()
    await expect(page.locator(".logs div").first).to_be_visible(timeout=30_000)
    await shot(page, "logs")
    await page.get_by_label("Search the lines").fill("no line says this")
    await expect(page.locator(".logs div")).to_have_count(0)
    await page.get_by_role("link", name="Back to details").click()

    # Roll back to version 1: its spec becomes a new version.
    await page.get_by_role("link", name="Rollback").click()
    await page.get_by_label("Version to roll back to").select_option("1")
    await expect(page.locator("form tr", has_text="model.version")).to_contain_text("replaces replicas")
    await shot(page, "rollback")
    await page.get_by_role("button", name="Roll back").click()
    await page.get_by_role("heading", name="iris", exact=True).wait_for()
    rolled = await deployment(api)
    assert rolled["spec_version"] == 6 and rolled["spec"]["model"]["version"] == "1"
    assert "cpu" not in rolled["spec"]["resources"]

    # Alerts: rules and firing alerts, or what to do while alerting is not installed.
    await page.get_by_role("link", name="Alerts").click()
    await expect(page.get_by_role("heading", name="Alerts", exact=True, level=1)).to_be_visible()
    await expect(page.locator("main")).to_contain_text("alert")
    await shot(page, "alerts")

    # A narrow window still reads.
    await page.get_by_role("link", name="Deployments", exact=True).click()
    await expect(page.locator(".deployments-table tbody tr", has_text="iris")).to_be_visible()
    await page.set_viewport_size({"width": 420, "height": 800})
    await shot(page, "list-narrow")
    await page.set_viewport_size({"width": 1280, "height": 800})

    # Delete: the seed's warnings and the name typed to confirm.
    await page.goto(f"{console}#/d/iris/delete")
    await expect(page.locator(".warning")).to_contain_text("This action cannot be undone!")
    delete = page.get_by_role("button", name="Delete deployment")
    await expect(delete).to_be_disabled()
    await page.get_by_label("Type the deployment's name").fill("iri")
    await expect(delete).to_be_disabled()
    await page.get_by_label("Type the deployment's name").fill("iris")
    await shot(page, "delete")
    await delete.click()
    await expect(page.get_by_role("heading", name="No deployments yet")).to_be_visible()
    assert (await api.get("/v1/deployments/iris")).status_code == 404


# -- the pages that read the metrics (contract A) and alerts (contract B) APIs -------------------------
# Answered here by the browser (Playwright's routing) in those APIs' documented shapes, so the charts,
# the list's figures and the alerts are checked whether or not those services are installed; the
# test above checks what the pages say while they answer 404.

NOW = 1_790_000_000
SUMMARY = {"at": "2026-09-21T10:00:00Z", "window_seconds": 60, "request_rate": 12.5, "error_rate": 0.02,
           "client_error_rate": 0.0, "latency_p50": 0.004, "latency_p95": 0.03, "latency_p99": 0.12,
           "in_flight": 1, "cpu_percent": 35.0, "memory_percent": 20.0, "gpu_percent": None}  # fmt: skip
ALERT = {"deployment_id": "d", "deployment": "stopped-one", "slug": "stopped-one", "name": "high-errors", "state": "firing",
         "since": "2026-09-21T09:55:00Z", "value": 7.5, "metric": "error_rate_percent", "op": ">", "threshold": 5.0,
         "for": "5m", "window": "5m"}  # fmt: skip


def series(value: float | None, steps: int = 60) -> list[list[float | None]]:
    return [[NOW - (steps - i) * 60, None if value is None or i < 10 else value] for i in range(steps)]


def metrics_answer(deployment_id: str) -> dict[str, Any]:
    names = {"request_rate": 12.5, "error_rate": 0.02, "client_error_rate": 0.0, "latency_p50": 0.004,
             "latency_p95": 0.03, "latency_p99": 0.12, "in_flight": 1, "replicas_desired": 2, "replicas_ready": 2,
             "restarts": 0, "cpu_percent": 35.0, "memory_percent": 20.0, "gpu_percent": None}  # fmt: skip
    replica = {k: series(names[k]) for k in ("request_rate", "error_rate", "latency_p99", "cpu_percent", "memory_percent", "gpu_percent", "restarts")}
    return {
        "deployment_id": deployment_id, "version": None, "window_seconds": 3600, "step_seconds": 60,
        "start": "2026-09-21T09:00:00Z", "end": "2026-09-21T10:00:00Z",
        "series": {name: series(value) for name, value in names.items()},
        "replicas": [{"replica_id": f"r{i}", "revision_id": "rev", "series": replica} for i in (1, 2)],
        "current": SUMMARY,
    }  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path, nats_url: str) -> Iterator[RegistryProcess]:
    with RegistryProcess.running(tmp_path, nats_url) as process:
        yield process


async def test_charts_list_figures_and_alerts_from_the_metrics_and_alerts_apis(registry: RegistryProcess, page: Any) -> None:
    from playwright.async_api import Route, expect

    seen: list[str] = []

    async def metrics(route: Route) -> None:
        seen.append(route.request.url)
        deployment_id = route.request.url.split("/v1/deployments/")[1].split("/")[0]
        await route.fulfill(json=metrics_answer(deployment_id))

    async def listing(route: Route) -> None:
        answer = await route.fetch()
        body = await answer.json()
        for item in body["items"]:
            item["status"]["metrics"] = SUMMARY
        await route.fulfill(response=answer, json=body)

    await page.route("**/v1/deployments/*/metrics?*", metrics)
    await page.route("**/v1/deployments?*", listing)
    await page.route("**/v1/deployments/*/alerts", lambda route: route.fulfill(json={"items": [ALERT]}))
    await page.route("**/v1/alerts*", lambda route: route.fulfill(json={"items": [ALERT]}))
    await page.context.add_init_script(f"sessionStorage.setItem('berth.token', {registry.token()!r})")

    # Created from the YAML tab, as `berth apply` would read it (after one the API refused).
    served = await page.goto(f"{registry.url}/ui/#/create")
    # Only the console's own files run, and they talk only to berth (the token cannot be sent away).
    assert "script-src 'self'" in served.headers["content-security-policy"]
    assert "connect-src 'self'" in served.headers["content-security-policy"]
    await page.get_by_role("tab", name="Form").focus()
    await page.keyboard.press("ArrowRight")  # the tabs answer the keyboard
    await expect(page.get_by_role("tab", name="YAML")).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#yaml")).to_be_visible()
    await page.locator("#yaml").fill("name: stopped-one\nimage: python:3.11\nresources: {ports: [8000]}\nreplica: 2\n")
    await page.get_by_role("button", name="Create Deployment").click()
    await expect(page.locator("#panel-yaml .error-summary")).to_contain_text("replica: unknown field")
    await page.locator("#yaml").fill("name: stopped-one\nimage: python:3.11\nenabled: false\nresources: {ports: [8000]}\n")
    await page.get_by_role("button", name="Create Deployment").click()
    await page.get_by_role("heading", name="stopped-one", exact=True).wait_for()
    async with registry.client() as api:
        created = (await api.get("/v1/deployments/stopped-one")).json()
    assert created["spec"] == {"name": "stopped-one", "image": "python:3.11", "enabled": False, "resources": {"ports": [8000]}}

    await page.get_by_role("link", name="Deployments", exact=True).click()
    row = page.locator(".deployments-table tbody tr", has_text="stopped-one")
    await expect(row).to_contain_text("12.5/s")
    await expect(row).to_contain_text("120 ms")

    await row.get_by_role("link", name="stopped-one").click()
    charts = page.locator(".chart")
    await expect(charts).to_have_count(6)
    await expect(page.locator(".chart", has_text="Latency").locator(".legend")).to_contain_text("p99: 120 ms")
    await expect(page.locator(".chart", has_text="Error rate").locator(".legend")).to_contain_text("5xx / failed: 2.00 %")
    await expect(page.locator(".chart", has_text="CPU per replica").locator(".legend li")).to_have_count(2)
    # No line is drawn through the steps without data: the path starts where the data does.
    assert (await page.locator(".chart", has_text="Request rate").locator("path").get_attribute("d") or "").count("M") == 1
    assert "window=1h&step=1m" in seen[-1]
    await page.get_by_label("Time range").select_option("24h")
    await eventually(lambda: "window=24h&step=15m" in seen[-1], what="the 24 h range asked for")
    alerts = page.locator("section.card", has=page.get_by_role("heading", name="Alerts", exact=True))
    await expect(alerts).to_contain_text("high-errors")
    await expect(alerts).to_contain_text("error_rate_percent > 5 for 5m")
    await shot(page, "details-metrics")

    await page.get_by_role("link", name="Alerts").click()
    await expect(page.get_by_role("heading", name="Alerts", exact=True, level=1)).to_be_visible()
    await expect(page.locator("tbody tr", has_text="high-errors")).to_contain_text("firing")
    await shot(page, "alerts-firing")
