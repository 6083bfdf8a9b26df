"""Browser tests: Playwright (async API) driving Debian's Chromium against a real `hubbub serve`.

Every test gets its own server (SQLite in a fresh data dir, the in-memory layer), its own browser,
and a console watch: every page opened through ``pages.new()`` records console errors and
uncaught page errors, and the test fails if any happened that it did not declare as expected
(``pages.expect_console_error``, which names the exact message and says why it is expected).
Everything started here is stopped here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
    expect,
)

from tests.live.servers import ROOT, HubbubServer, new_data_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = ROOT / "docs" / "screenshots"
DESKTOP = {"width": 1200, "height": 760}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct-horse-battery-9"
TIMEOUT_MS = 10_000  # any single wait for the page (locators, expect, navigation)

E2E_DIR = Path(__file__).resolve().parent

# Chromium is optional on a developer's machine (the suite is then skipped, saying why);
# Playwright itself is a dev requirement.
SKIP_REASON: str | None = None
if not os.access(CHROMIUM, os.X_OK):
    SKIP_REASON = (f"{CHROMIUM} is missing (apt-get install chromium): the browser tests drive Debian's "
                   "Chromium; Playwright's own browser download is not used")

expect.set_options(timeout=TIMEOUT_MS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives a real browser against a real hubbub serve")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.live)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


# -- the server ---------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[HubbubServer]:
    """One `hubbub serve` (embedded default: SQLite, in-memory layer) in a fresh data dir."""
    data_dir = new_data_dir()
    srv = HubbubServer(data_dir / "embedded", name="e2e")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- the browser and the console watch ----------------------------------------------------------


@dataclass
class Allowed:
    pattern: re.Pattern[str]
    why: str
    url: re.Pattern[str] | None = None
    seen: int = 0

    def matches(self, text: str, url: str) -> bool:
        return bool(self.pattern.search(text)) and (self.url is None or bool(self.url.search(url)))


@dataclass
class Pages:
    """Opens browser contexts and pages, and watches every page's console."""

    browser: Browser
    base: str
    contexts: list[BrowserContext] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    allowed: list[Allowed] = field(default_factory=list)

    async def new(self, *, viewport: dict[str, int] | None = None, color_scheme: Any = "light",
                  **context_options: Any) -> Page:
        """A page in a new browser context (a separate cookie jar: another person)."""
        context = await self.browser.new_context(
            base_url=self.base, viewport=viewport or DESKTOP, color_scheme=color_scheme,
            locale="en-GB", timezone_id="UTC", **context_options,
        )
        context.set_default_timeout(TIMEOUT_MS)
        context.set_default_navigation_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        page = await context.new_page()
        self.watch(page)
        return page

    def watch(self, page: Page) -> None:
        label = f"page {len(self.contexts)}"

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type not in ("error", "assert"):
                return
            text = msg.text
            where = msg.location.get("url", "") if msg.location else ""
            for rule in self.allowed:
                if rule.matches(text, where):
                    rule.seen += 1
                    return
            self.problems.append(f"{label} console.{msg.type}: {text} (at {where})")

        def on_page_error(exc: Error) -> None:
            self.problems.append(f"{label} uncaught error: {exc.name}: {exc.message}\n{exc.stack}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)

    def expect_console_error(self, pattern: str, why: str, url: str | None = None) -> Allowed:
        """Declare one kind of console error as expected: a regular expression on its text and,
        if given, one on the URL the console reports it at (for a failed load: that resource)."""
        rule = Allowed(re.compile(pattern), why, re.compile(url) if url else None)
        self.allowed.append(rule)
        return rule

    def assert_clean(self) -> None:
        assert not self.problems, "console or page errors:\n" + "\n".join(self.problems)

    async def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Error):
                await context.close()
        self.contexts.clear()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=30_000,
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def pages(browser: Browser, server: HubbubServer) -> AsyncIterator[Pages]:
    """Pages on ``server``; the test fails when any page logged an unexpected console error."""
    watch = Pages(browser, server.http)
    try:
        yield watch
    finally:
        await watch.close()
    watch.assert_clean()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
