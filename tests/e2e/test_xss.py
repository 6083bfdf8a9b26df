"""XSS in the browser: hostile text in messages (typed, posted over the API, loaded from history),
in file names (the convert form, the job card, the outcome message), in room addresses and in
sign-up names renders as text; nothing executes.

Every page gets an init script that turns ``alert``/``confirm``/``prompt`` into a flag and the
payloads themselves set ``window.__xss``; dialogs are recorded too. At the end the flag is unset,
no dialog opened, no ``javascript:`` link exists, and the message texts hold exactly the payloads.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image
from playwright.async_api import Dialog, Page, expect

from tests.e2e.conftest import Pages
from tests.e2e.ui import api_post, delivered, expect_message, make_user, send, signup, tid, wait_open
from tests.live.servers import HubbubServer

pytestmark = [pytest.mark.timeout(150)]

HOOK = """
window.__xss = undefined;
for (const name of ["alert", "confirm", "prompt", "print"]) {
  window[name] = (...args) => { window.__xss = `${name}(${args.join(",")})`; };
}
"""
PAYLOADS = [
    "<script>window.__xss='script'</script>",
    "<img src=x onerror=\"window.__xss='img'\">",
    "<svg onload=\"window.__xss='svg'\"></svg>",
    "<iframe srcdoc=\"<script>parent.__xss='iframe'</script>\"></iframe>",
    "<a href=\"javascript:window.__xss='a'\">click me</a>",
    "javascript:window.__xss='bare'",
    "[link](javascript:alert('md'))",
    "http://example.com/\"><img src=x onerror=alert('url')>",
    "https://example.com/?q=<script>alert('q')</script>",
    "<details open ontoggle=\"window.__xss='details'\">",
    "<style>body{display:none}</style>hidden?",
    "{{constructor.constructor('window.__xss=1')()}}",
    "&lt;b&gt;entities&lt;/b&gt; &amp; <b>bold</b>",
    "\u202e<script>alert('rtl')</script>",
]


async def watched(pages: Pages) -> tuple[Page, list[str]]:
    page = await pages.new()
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.add_init_script(HOOK)
    return page, dialogs


async def assert_inert(page: Page, dialogs: list[str]) -> None:
    assert await page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert await page.locator("a[href^='javascript' i]").count() == 0
    # Inside message texts the only elements are links the page made itself (http or https).
    hrefs = await page.locator("[data-testid=message-text] *").evaluate_all(
        "els => els.map(e => e.tagName + ' ' + (e.getAttribute('href') || ''))")
    assert all(h.startswith("A http://") or h.startswith("A https://") for h in hrefs), hrefs
    for tag in ("script", "iframe", "svg", "details", "style"):
        assert await page.locator(f"#messages {tag}").count() == 0, tag


async def test_hostile_messages_render_as_text(pages: Pages, server: HubbubServer) -> None:
    token = await make_user(server, "mallory")
    for i, text in enumerate(PAYLOADS[:7]):  # stored before the page opens: arrive as history
        await api_post(server.http, "xss", token, text, client_id=f"h-{i}")
    page, dialogs = await watched(pages)
    await page.goto("/r/xss/")
    await signup(page, "reader")
    await wait_open(page)
    for text in PAYLOADS[:7]:
        await expect_message(page, text, author="mallory")
    for i, text in enumerate(PAYLOADS[7:]):  # posted while the page is open: arrive live
        await api_post(server.http, "xss", token, text, client_id=f"l-{i}")
    for text in PAYLOADS[7:]:
        await expect_message(page, text, author="mallory")
    for text in PAYLOADS[:3]:  # typed into the composer
        await send(page, text + " (typed)")
        await expect_message(page, text + " (typed)", author="reader")
    await expect(delivered(page)).to_have_count(len(PAYLOADS) + 3)
    await assert_inert(page, dialogs)
    # The same after a reload (everything from history at once).
    await page.reload()
    await wait_open(page)
    await expect(delivered(page)).to_have_count(len(PAYLOADS) + 3)
    texts = await page.locator("[data-testid=message-text]").all_text_contents()
    assert texts[:len(PAYLOADS)] == PAYLOADS
    await assert_inert(page, dialogs)
    pages.assert_clean()


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


async def test_a_hostile_file_name_renders_as_text(pages: Pages) -> None:
    page, dialogs = await watched(pages)
    await page.goto("/r/files/")
    await signup(page, "uploader")
    await wait_open(page)
    # No double quotes: Chromium sends them as %22 in a multipart file name.
    name = "<img src=x onerror=window.__xss=1>.png"
    await tid(page, "attach-input").set_input_files(
        files=[{"name": name, "mimeType": "image/png", "buffer": png_bytes()}])
    await expect(tid(page, "convert-file-name")).to_have_text(name)
    await tid(page, "convert-target").select_option("jpeg")
    await tid(page, "convert-start").click()
    job = page.locator(".job").first
    await expect(job).to_have_attribute("data-state", "done", timeout=30_000)
    await expect(job.locator(".job-title")).to_contain_text(name)
    # The job posts its outcome to the room; the name in it is text too.
    outcome = delivered(page).filter(has_text="converted")
    await expect(outcome).to_have_count(1)
    await expect(outcome.locator("[data-testid=message-text]")).to_contain_text(name)
    assert await page.locator("img[src='x']").count() == 0
    await assert_inert(page, dialogs)
    pages.assert_clean()


async def test_hostile_room_addresses_and_names_render_as_text(pages: Pages) -> None:
    pages.expect_console_error(r"Failed to load resource.*\b40[034]\b",
                               "the refused room name, the room address that is no page, and sign-up")
    page, dialogs = await watched(pages)
    await page.goto("/")
    await signup(page, "visitor")
    await wait_open(page)
    # A room name is refused by the API, and the refusal is shown as text.
    hostile = "<img src=x onerror=\"window.__xss='room'\">"
    await tid(page, "room-name").fill(hostile)
    await tid(page, "room-create").click()
    await page.wait_for_timeout(500)
    await assert_inert(page, dialogs)
    # A hostile room address: the page never puts it into markup.
    for address in ("/r/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E/",
                    "/r/%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E/",
                    "/r/javascript:alert(1)/"):
        await page.goto(address)
        await page.wait_for_timeout(300)
        await assert_inert(page, dialogs)
        assert await page.locator("body script:not([type=module]):not([src])").count() == 0
    # A hostile user name is refused at sign-up, and the message says so as text.
    other, other_dialogs = await watched(pages)
    await other.goto("/")
    await tid(other, "auth-username").fill("<svg onload=alert('name')>")
    await tid(other, "auth-password").fill("correct-horse-battery-9")
    await tid(other, "signup").click()
    await expect(tid(other, "auth-error")).not_to_be_empty()
    await assert_inert(other, other_dialogs)
    pages.assert_clean()
