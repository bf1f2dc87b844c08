"""The web console's first page load, cold, and its deployments list with 500 deployments.

    .venv/bin/python bench/bench_console.py [--deployments 500] [--runs 5]

Starts `berth up` (as a user runs it), then opens /ui/ in Chromium (Playwright, the OS's browser: see
tests/e2e/browser.py) in a fresh browser context each run (no HTTP cache, the token already in the
tab's sessionStorage, as after signing in), and reads the browser's Performance API:

- time to interactive: from navigation start to the `berth:list-ready` mark the list page sets when
  its rows are rendered and its controls answer (the modules loaded, GET /v1/deployments read);
- DOM interactive (the HTML parsed) from the navigation entry;
- bytes transferred: the navigation's and every resource's transferSize (HTML, CSS, ES modules, the
  API's JSON; headers included; the registry gzips answers over 1 KiB);
- how long the list's API call took (request sent to answer read), the part of the time the server has.

First with no deployment, then with `--deployments` created through the API with `enabled: false`
(no replica starts: what is measured is the console, not the machine running replicas).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_apply_to_first_request import berth_up  # noqa: E402
from bench.harness import report  # noqa: E402
from tests.e2e.browser import ARGS, CHROMIUM, missing  # noqa: E402

MEASURE = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const ready = performance.getEntriesByName("berth:list-ready")[0];
  const resources = performance.getEntriesByType("resource");
  const api = resources.filter((r) => r.name.includes("/v1/"));
  return {
    tti: ready.startTime, domInteractive: nav.domInteractive,
    bytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
    apiBytes: api.reduce((n, r) => n + r.transferSize, 0), requests: resources.length + 1,
    listApi: Math.max(0, ...api.filter((r) => r.name.includes("/v1/deployments?")).map((r) => r.responseEnd - r.startTime)),
    rows: document.querySelectorAll("tbody tr").length,
  };
}"""


async def load_once(browser: Any, url: str, token: str) -> dict[str, float]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_init_script(f"sessionStorage.setItem('berth.token', {token!r})")
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function("performance.getEntriesByName('berth:list-ready').length > 0", timeout=60_000)
    figures: dict[str, float] = await page.evaluate(MEASURE)
    await context.close()
    return figures


async def measure(browser: Any, url: str, token: str, runs: int) -> dict[str, float]:
    samples = [await load_once(browser, url, token) for _ in range(runs + 1)][1:]  # the first warms the server
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def row(figures: dict[str, float]) -> str:
    return (
        f"interactive {figures['tti']:6.0f} ms   DOM interactive {figures['domInteractive']:5.0f} ms   "
        f"{figures['bytes'] / 1024:7.1f} KiB in {figures['requests']:.0f} requests "
        f"(API {figures['apiBytes'] / 1024:.1f} KiB)   GET /v1/deployments {figures['listApi']:4.0f} ms   rows {figures['rows']:.0f}"
    )


async def create_stopped(api: httpx.AsyncClient, count: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        spec = {"name": f"bench-{i:04d}", "image": "python:3.11-slim", "enabled": False,
                "environment": ("development", "staging", "production")[i % 3],
                "model": {"id": f"model-{i % 17}", "version": "1"}, "resources": {"ports": [8000], "replicas": 1}}  # fmt: skip
        async with gate:
            (await api.post("/v1/deployments", json=spec)).raise_for_status()

    await asyncio.gather(*(one(i) for i in range(count)))


async def bench(deployments: int, runs: int, work: Path) -> None:
    from playwright.async_api import async_playwright

    async with berth_up(work) as (api, _router), async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        token = api.headers["Authorization"].removeprefix("Bearer ")
        url = f"{str(api.base_url).rstrip('/')}/ui/"
        empty = await measure(browser, url, token, runs)
        await create_stopped(api, deployments)
        full = await measure(browser, url, token, runs)
        await browser.close()
    report(
        f"console first load, cold (Chromium headless, median of {runs}, fresh context each: no cache)",
        [("no deployments", row(empty)), (f"{deployments} deployments", row(full))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if reason := missing():
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="berth-bench-console-") as work:
        asyncio.run(bench(args.deployments, args.runs, Path(work)))


if __name__ == "__main__":
    main()
