"""Two people chatting in real time, a guest in a public room, a private room refused and then
opened to a member (the browser UI against a real server)."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import Pages
from tests.e2e.ui import delivered, expect_message, ids, pending, send, signup, tid, wait_open
from tests.live.servers import HubbubServer

pytestmark = [pytest.mark.timeout(120)]


async def test_two_users_chat_in_real_time(pages: Pages) -> None:
    alice = await pages.new()
    bob = await pages.new()
    for page, name in ((alice, "alice"), (bob, "bob")):
        await page.goto("/r/tea/")
        await signup(page, name)
        await expect(tid(page, "room-title")).to_have_text("tea")
        await wait_open(page)

    # Presence lists both, on both pages.
    for page in (alice, bob):
        await expect(tid(page, "presence").locator("li")).to_have_text(["alice", "bob"], ignore_case=False)

    # Bob types: Alice is told, Bob is not told about himself.
    await tid(bob, "composer-input").press_sequentially("hello al", delay=20)
    await expect(tid(alice, "typing")).to_have_text("bob is typing…")
    await expect(tid(bob, "typing")).to_have_text("")
    await tid(bob, "composer-input").press_sequentially("ice", delay=20)
    await tid(bob, "composer-input").press("Enter")

    # The message appears on both pages without a reload; the typing line clears on it.
    await expect_message(alice, "hello alice", author="bob")
    await expect_message(bob, "hello alice", author="bob")
    await expect(tid(alice, "typing")).to_have_text("")

    await tid(alice, "composer-input").press_sequentially("hi bob!", delay=20)
    await expect(tid(bob, "typing")).to_have_text("alice is typing…")
    await alice.keyboard.press("Enter")
    await expect_message(bob, "hi bob!", author="alice")
    await expect_message(alice, "hi bob!", author="alice")

    for page in (alice, bob):
        assert await ids(page) == [1, 2]
    # Own messages are styled as one's own, the other's are not.
    await expect(delivered(alice).filter(has_text="hi bob!")).to_have_class("message mine")
    await expect(delivered(bob).filter(has_text="hi bob!")).to_have_class("message")

    # Bob leaves: Alice's presence follows.
    await bob.context.close()
    await expect(tid(alice, "presence").locator("li")).to_have_text(["alice"])
    pages.assert_clean()


async def test_guest_joins_a_public_room_and_posts(pages: Pages, server: HubbubServer) -> None:
    page = await pages.new()
    await page.goto("/r/commons/")
    await expect(tid(page, "auth")).to_be_visible()
    await page.get_by_role("button", name="Continue as a guest").click()
    await expect(tid(page, "chat")).to_be_visible()
    await expect(tid(page, "room-title")).to_have_text("commons")
    await wait_open(page)
    await expect(tid(page, "me")).to_have_text(re.compile(r"^guest-\S+ \(guest\)$"))
    # A guest cannot make a private room, and there is no log-out for a guest.
    await expect(page.locator("#private-label")).to_be_hidden()
    await expect(tid(page, "logout")).to_be_hidden()

    await send(page, "a guest says hello")
    item = await expect_message(page, "a guest says hello")
    author = await item.locator(".author").text_content()
    assert author is not None and author.startswith("guest-"), author
    await expect(tid(page, "me")).to_have_text(f"{author} (guest)")
    await expect(tid(page, "presence").locator("li")).to_have_text([author])
    await expect(pending(page)).to_have_count(0)

    stored = (await asyncio.to_thread(server.get, "/api/rooms/commons/messages")).json()
    assert [(m["id"], m["user"], m["message"]) for m in stored["messages"]] == [
        (1, author, "a guest says hello")]
    pages.assert_clean()


async def test_private_room_refused_then_admitted(pages: Pages) -> None:
    alice = await pages.new()
    await alice.goto("/")
    await signup(alice, "alice")
    await wait_open(alice)  # the lobby

    # Alice makes a private room from the sidebar.
    await tid(alice, "room-name").fill("secret")
    await tid(alice, "room-private").check()
    await tid(alice, "room-create").click()
    await expect(tid(alice, "room-title")).to_have_text("secret")
    await expect(alice.locator("#room-private-badge")).to_be_visible()
    await expect(tid(alice, "room-list").locator("button[data-room=secret]")).to_contain_text("🔒")
    await expect(alice).to_have_url(f"{pages.base}/r/secret/")
    await wait_open(alice)
    await send(alice, "for members only")
    await expect_message(alice, "for members only")

    # Bob is not a member: the page says so and shows nothing of the room.
    # Chromium logs every HTTP error answer to fetch() as a console error; the page asks for the
    # room's history and the server answers 403, which is exactly the refusal under test.
    refused = pages.expect_console_error(
        r"^Failed to load resource: the server responded with a status of 403 \(Forbidden\)$",
        "bob's page asks for the private room's history and is refused (the behaviour under test)",
        url=rf"^{re.escape(pages.base)}/api/rooms/secret/messages\?limit=50$")
    bob = await pages.new()
    await bob.goto("/r/secret/")
    await signup(bob, "bob")
    await expect(tid(bob, "room-notice")).to_be_visible()
    await expect(tid(bob, "room-notice")).to_have_text("This room is private and you are not a member.")
    await expect(tid(bob, "conn-state")).to_have_attribute("data-state", "refused")
    await expect(bob.locator("[data-testid=messages] > li")).to_have_count(0)
    await expect(tid(bob, "room-list").locator("button[data-room=secret]")).to_have_count(0)
    await expect(bob.get_by_text("for members only")).to_have_count(0)
    await expect(tid(bob, "members")).to_be_hidden()
    assert refused.seen == 1, f"expected exactly one refused history request, saw {refused.seen}"

    # Alice admits Bob through the "Admit a member" form.
    await tid(alice, "members").locator("summary").click()
    await tid(alice, "member-name").fill("bob")
    await tid(alice, "member-add").click()
    await expect(tid(alice, "member-status")).to_have_text("bob can now join.")

    # Bob reloads: he reads the history and posts; Alice sees it live.
    await bob.reload()
    await expect(tid(bob, "room-title")).to_have_text("secret")
    await wait_open(bob)
    await expect(tid(bob, "room-notice")).to_be_hidden()
    await expect_message(bob, "for members only", author="alice")
    await expect(tid(bob, "room-list").locator("button[data-room=secret]")).to_have_count(1)
    await send(bob, "thanks for letting me in")
    await expect_message(bob, "thanks for letting me in", author="bob")
    await expect_message(alice, "thanks for letting me in", author="bob")
    await expect(tid(alice, "presence").locator("li")).to_have_text(["alice", "bob"])
    assert await ids(bob) == [1, 2]
    assert refused.seen == 1
    pages.assert_clean()



async def test_typing_shows_again_right_after_a_message(pages: Pages) -> None:
    ivan = await pages.new()
    judy = await pages.new()
    for page, name in ((ivan, "ivan"), (judy, "judy")):
        await page.goto("/r/quick/")
        await signup(page, name)
        await wait_open(page)
    await expect(tid(ivan, "presence").locator("li")).to_have_text(["ivan", "judy"])

    box = tid(judy, "composer-input")
    await box.press_sequentially("first", delay=20)
    await expect(tid(ivan, "typing")).to_have_text("judy is typing…")
    await box.press("Enter")
    await expect_message(ivan, "first", author="judy")
    await expect(tid(ivan, "typing")).to_have_text("")
    # Judy goes straight on with the next message (a second or so later) and pauses.
    await judy.wait_for_timeout(1000)
    await box.press_sequentially("and second", delay=20)
    await expect(tid(ivan, "typing")).to_have_text("judy is typing…", timeout=3500)
    pages.assert_clean()
