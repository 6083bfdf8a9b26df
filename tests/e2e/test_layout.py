"""What the screens show, beyond the chat itself: found while looking at the screenshots."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import PHONE, Pages
from tests.e2e.ui import signup, tid, wait_open

pytestmark = [pytest.mark.timeout(90)]


async def test_presence_on_a_phone_lists_oneself_too(pages: Pages) -> None:
    desk = await pages.new()
    phone = await pages.new(viewport=PHONE, is_mobile=True, has_touch=True)
    for page, name in ((desk, "olga"), (phone, "pavel")):
        await page.goto("/r/lounge/")
        await signup(page, name)
        await wait_open(page)
    for page in (desk, phone):
        await expect(tid(page, "presence").locator("li")).to_have_text(["olga", "pavel"])
    pages.assert_clean()
    for name in ("olga", "pavel"):
        await expect(tid(phone, "presence").get_by_text(name, exact=True)).to_be_visible(timeout=3000)


async def test_phone_top_bar_fits_on_one_line(pages: Pages) -> None:
    page = await pages.new(viewport=PHONE, is_mobile=True, has_touch=True)
    await page.goto("/r/lounge/")
    await signup(page, "quinn")
    await wait_open(page)
    logout = tid(page, "logout")
    await expect(logout).to_be_visible()
    box = await logout.bounding_box()
    bar = await page.locator("header.topbar").bounding_box()
    assert box is not None and bar is not None
    pages.assert_clean()
    assert box["height"] < 40, f"the Log out button is {box['height']} px tall (two lines)"
    assert bar["height"] <= 56, f"the top bar is {bar['height']} px tall"


async def test_sign_in_screen_shows_no_identity(pages: Pages) -> None:
    page = await pages.new()
    await page.goto("/")
    await expect(tid(page, "auth")).to_be_visible()
    await expect(page.get_by_role("button", name="Continue as a guest")).to_be_visible()
    await page.wait_for_load_state("networkidle")
    pages.assert_clean()
    await expect(tid(page, "me")).to_have_text("", timeout=2000)
