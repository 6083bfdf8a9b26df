"""The page itself: message text is never markup, a clean console, older history on scrolling up,
and a keyboard-only sign-up and post."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import Pages
from tests.e2e.ui import api_post, delivered, expect_message, ids, make_user, send, signup, tid, wait_open
from tests.live.servers import HubbubServer

pytestmark = [pytest.mark.timeout(120)]

IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "<script>window.__xss=1</script>"
JS_URL = "javascript:window.__xss=1"
HOSTILE = [
    IMG,
    SCRIPT,
    JS_URL,
    f"see [this]({JS_URL}) and <a href=\"{JS_URL}\">that</a>",
    "<svg onload=window.__xss=1></svg><iframe src=\"javascript:window.__xss=1\"></iframe>",
    "a link https://example.com/a?b=1&c=<b>bold</b> and http://example.org/x.",
    "\"><img src=x onerror=window.__xss=1> https://example.net/\"onmouseover=\"window.__xss=1",
]


async def _assert_inert(page: Page) -> None:
    messages = tid(page, "messages")
    await expect(delivered(page)).to_have_count(len(HOSTILE))
    # Shown as the literal text that was posted, in order.
    assert await delivered(page).locator("[data-testid=message-text]").all_text_contents() == HOSTILE
    # No element was made from it: message bodies hold text nodes and links only.
    made = await messages.locator("[data-testid=message-text] *").evaluate_all(
        "els => els.map(e => e.tagName.toLowerCase())")
    assert set(made) <= {"a"}, made
    for tag in ("img", "script", "svg", "iframe", "b"):
        await expect(messages.locator(tag)).to_have_count(0)
    assert await page.evaluate("typeof window.__xss") == "undefined"
    # Only http(s) URLs became links, each opening a new tab without a window.opener.
    links = messages.locator("a")
    hrefs = await links.evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs == [
        "https://example.com/a?b=1&c=",
        "http://example.org/x",
        "https://example.net/",
    ], hrefs
    await expect(messages.locator('a[href^="http"]')).to_have_count(len(hrefs))
    for i in range(len(hrefs)):
        rel = (await links.nth(i).get_attribute("rel") or "").split()
        assert "noopener" in rel, rel
        await expect(links.nth(i)).to_have_attribute("target", "_blank")
    handlers = messages.locator('a[href^="javascript"], [onerror], [onload], [onmouseover]')
    await expect(handlers).to_have_count(0)


async def test_hostile_text_is_shown_literally(pages: Pages, server: HubbubServer) -> None:
    token = await make_user(server, "mallory")
    page = await pages.new()
    await page.goto("/r/xss/")
    await signup(page, "victim")
    await wait_open(page)

    # Half typed in this page (the sender's own rendering), half posted by someone else and
    # delivered live over the socket.
    for i, text in enumerate(HOSTILE):
        if i % 2:
            await api_post(server.http, "xss", token, text)
        else:
            await send(page, text)
        await expect(delivered(page)).to_have_count(i + 1)
    await _assert_inert(page)

    # The same from the history (HTTP) after a reload.
    await page.reload()
    await wait_open(page)
    await _assert_inert(page)
    assert await ids(page) == list(range(1, len(HOSTILE) + 1))
    pages.assert_clean()


async def test_no_console_errors_signed_out_and_in_a_room(pages: Pages, server: HubbubServer) -> None:
    await make_user(server, "erin")
    page = await pages.new()
    await page.goto("/", wait_until="networkidle")
    await expect(tid(page, "auth")).to_be_visible()
    await expect(page.get_by_role("button", name="Continue as a guest")).to_be_visible()
    await expect(tid(page, "conn-state")).to_have_attribute("data-state", "idle")
    await expect(tid(page, "chat")).to_be_hidden()
    pages.assert_clean()

    await tid(page, "auth-username").fill("erin")
    await tid(page, "auth-password").fill("correct-horse-battery-9")
    await tid(page, "login").click()
    await wait_open(page)
    await page.goto("/r/general/", wait_until="networkidle")
    await expect(tid(page, "room-title")).to_have_text("general")
    await wait_open(page)
    await send(page, "all quiet")
    await expect_message(page, "all quiet", author="erin")
    await expect(tid(page, "room-list").locator("button[data-room=general]")).to_have_count(1)
    await page.wait_for_load_state("networkidle")
    pages.assert_clean()


async def test_older_history_loads_on_scrolling_up(pages: Pages, server: HubbubServer) -> None:
    token = await make_user(server, "frank")
    for i in range(1, 121):
        await api_post(server.http, "archive", token, f"message number {i}")
    page = await pages.new()
    await page.goto("/r/archive/")
    await signup(page, "grace")
    await wait_open(page)

    await expect(delivered(page)).to_have_count(50)
    assert await ids(page) == list(range(71, 121))
    messages = tid(page, "messages")
    # It opened at the newest message.
    await expect(delivered(page).last).to_be_in_viewport()
    await expect(delivered(page).first).not_to_be_in_viewport()

    for want in (100, 120):
        await messages.evaluate("el => { el.scrollTop = 0; }")
        await expect(delivered(page)).to_have_count(want)
        got = await ids(page)
        assert got == list(range(121 - want, 121)), got
        # The reader's place is kept: the list did not jump to the oldest loaded message.
        assert await messages.evaluate("el => el.scrollTop") > 40

    # All there: scrolling to the top again loads nothing more.
    await messages.evaluate("el => { el.scrollTop = 0; }")
    await page.wait_for_timeout(500)
    assert await ids(page) == list(range(1, 121))
    texts = await delivered(page).locator("[data-testid=message-text]").all_text_contents()
    assert texts == [f"message number {i}" for i in range(1, 121)]

    # A live message still lands at the bottom, after the older ones.
    await send(page, "and one more")
    await expect_message(page, "and one more", author="grace")
    assert await ids(page) == list(range(1, 122))
    pages.assert_clean()


async def test_keyboard_only_sign_up_and_post(pages: Pages) -> None:
    page = await pages.new()
    await page.goto("/r/quiet/")
    await expect(tid(page, "auth")).to_be_visible()
    kb = page.keyboard

    async def tab_to(testid: str, limit: int = 10) -> list[str]:
        """Press Tab until ``testid`` has the focus; the path taken."""
        path = []
        for _ in range(limit):
            await kb.press("Tab")
            here = await page.evaluate(
                "() => { const a = document.activeElement;"
                " return a ? (a.dataset.testid || a.id || a.className || a.tagName) : ''; }")
            path.append(here)
            if here == testid:
                return path
        raise AssertionError(f"Tab never reached {testid}: {path}")

    await tab_to("auth-username")
    await kb.type("heidi")
    await kb.press("Tab")
    await expect(tid(page, "auth-password")).to_be_focused()
    await kb.type("correct-horse-battery-9")
    await tab_to("signup", limit=3)
    await kb.press("Enter")
    await expect(tid(page, "chat")).to_be_visible()
    await expect(tid(page, "me")).to_have_text("heidi")
    await wait_open(page)

    # On a desktop-sized page the message box has the focus once the room is open.
    box = tid(page, "composer-input")
    if not await box.evaluate("el => el === document.activeElement"):
        await tab_to("composer-input", limit=25)
    await expect(box).to_be_focused()
    await kb.type("typed, not clicked")
    await kb.press("Shift+Enter")
    await kb.type("second line")
    await kb.press("Enter")
    item = await expect_message(page, "typed, not clicked\nsecond line", author="heidi")
    await expect(box).to_have_value("")
    await expect(box).to_be_focused()
    assert await item.get_attribute("data-id") == "1"
    pages.assert_clean()
