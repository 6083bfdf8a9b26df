"""Screenshots of the main screens for docs/screenshots/ (overwritten on every run, stable names):
signin.png (1200x760), room.png (1200x760, a conversation between two people), phone.png
(390x844) and dark.png (1200x760, the dark colour scheme)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import DESKTOP, PHONE, Pages
from tests.e2e.ui import api_post, delivered, expect_message, login, make_user, send, tid, wait_open
from tests.live.servers import HubbubServer

pytestmark = [pytest.mark.timeout(120)]

ROOM = "design-review"
CONVERSATION = [
    ("maya", "Morning! The new sidebar is up on staging."),
    ("noah", "Nice. Does the room list still scroll on small screens?"),
    ("maya", "It does, and the menu button opens it on phones."),
    ("noah", "Great. The notes from yesterday are here: https://example.com/notes/sidebar"),
    ("maya", "Thanks, I'll go through them after lunch."),
    ("noah", "One thing: reconnecting should keep unsent messages.\nIt does now, right?"),
]


async def _shoot(page: Page, path: Path) -> None:
    await page.wait_for_load_state("networkidle")
    await page.evaluate("document.fonts.ready")
    png = await page.screenshot(path=str(path), animations="disabled", caret="hide")
    assert len(png) > 5_000, f"{path} looks empty"


async def test_screenshots(pages: Pages, server: HubbubServer, screenshots: Path) -> None:
    tokens = {name: await make_user(server, name) for name in ("maya", "noah")}
    for user, text in CONVERSATION:
        await api_post(server.http, ROOM, tokens[user], text)

    # The sign-in screen.
    signin = await pages.new(viewport=DESKTOP)
    await signin.goto("/")
    await expect(tid(signin, "auth")).to_be_visible()
    await expect(signin.get_by_role("button", name="Continue as a guest")).to_be_visible()
    await _shoot(signin, screenshots / "signin.png")
    await signin.context.close()

    # Maya at her desk, Noah on his phone, both in the room.
    maya = await pages.new(viewport=DESKTOP)
    await maya.goto(f"/r/{ROOM}/")
    await login(maya, "maya")
    noah = await pages.new(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=1)
    await noah.goto(f"/r/{ROOM}/")
    await login(noah, "noah")
    for page in (maya, noah):
        await wait_open(page)
        await expect(tid(page, "presence").locator("li")).to_have_text(["maya", "noah"])

    await send(maya, "Yes: they stay pending and are sent once when the connection is back.")
    await expect_message(noah, "Yes: they stay pending and are sent once when the connection is back.")
    await send(noah, "Ship it.")
    await expect_message(maya, "Ship it.")
    await expect(delivered(maya)).to_have_count(len(CONVERSATION) + 2)
    # The page sends one typing signal per 2.5 s and does not reset that on sending (see
    # test_typing_shows_again_right_after_a_message): wait it out so the next one goes.
    await noah.wait_for_timeout(2600)
    await tid(noah, "composer-input").press_sequentially("Merging", delay=10)
    await expect(tid(maya, "typing")).to_have_text("noah is typing…")
    await _shoot(maya, screenshots / "room.png")

    # The phone: the room, then nothing covering it (the rooms drawer stays closed).
    await expect(tid(noah, "sidebar")).not_to_be_in_viewport()
    await expect(tid(noah, "toggle-rooms")).to_be_visible()
    await _shoot(noah, screenshots / "phone.png")

    # Dark mode: Maya again, in a second window with the dark scheme.
    dark = await pages.new(viewport=DESKTOP, color_scheme="dark")
    await dark.goto(f"/r/{ROOM}/")
    await login(dark, "maya")
    await wait_open(dark)
    await expect(delivered(dark)).to_have_count(len(CONVERSATION) + 2)
    assert await dark.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    await _shoot(dark, screenshots / "dark.png")

    pages.assert_clean()
