"""Chromium for the console's browser tests and benchmark: Playwright driving the OS's Chromium
(Debian's `chromium` package, which .ci/run installs), never a browser fetched by `playwright install`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = os.environ.get("BERTH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def missing() -> str | None:
    """Why no browser test can run here, or None when one can."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: the console's browser tests need one (apt-get install chromium; .ci/run does)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package (a dev dependency: make install) is missing"
    return None
