"""Headless Chromium (Debian's `chromium` package) driven by Playwright for Python, for the console's tests.

Playwright's own browser download is never used: the browser is `/usr/bin/chromium` (or
`DISPATCHER_TEST_CHROMIUM`). Where Playwright or the browser is missing, the tests are skipped with a printed
notice. With `DISPATCHER_CONSOLE_SCREENSHOTS=<dir>` the tests that visit every page save a PNG of each there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DISPATCHER_TEST_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}


def require_browser() -> None:
    """Skip the calling test (or fixture) with a notice when Playwright or chromium cannot run here."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _skip("Playwright for Python is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set DISPATCHER_TEST_CHROMIUM)")


def _skip(reason: str) -> None:
    print(f"NOTICE: the console's browser tests are skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


@asynccontextmanager
async def launched() -> AsyncIterator[Any]:
    """One headless chromium for a module's tests."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(page: Any, base: str, token: str) -> None:
    """Open the console, sign in with `token` and wait for the overview."""
    from playwright.async_api import expect

    await page.goto(f"{base}/console/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()


async def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now: "rule: target, ..." each."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in ("serious", "critical"):
            targets = ", ".join(str(node["target"]) for node in violation["nodes"][:5])
            found.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return found


async def screenshot(page: Any, name: str) -> None:
    """Save the viewport as <name>.png under $DISPATCHER_CONSOLE_SCREENSHOTS (made if missing), when it is set."""
    folder = os.environ.get("DISPATCHER_CONSOLE_SCREENSHOTS")
    if folder:
        await page.screenshot(path=str(Path(folder) / f"{name}.png"))
