"""The page survives a server restart under it: it reconnects by itself with ?after=<last id>,
catches up on what others posted meanwhile, delivers what was typed while the server was down
exactly once, and ends showing every message once, in id order."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import Pages
from tests.e2e.ui import (
    api_post,
    delivered,
    expect_message,
    ids,
    make_user,
    pending,
    send,
    signup,
    tid,
    wait_open,
)
from tests.live.servers import HubbubServer, history

pytestmark = [pytest.mark.timeout(150)]

ROOM = "ops"


async def test_page_reconnects_after_a_server_restart(pages: Pages, server: HubbubServer) -> None:
    token = await make_user(server, "carol")
    page = await pages.new()
    await page.goto(f"/r/{ROOM}/")
    await signup(page, "dave")
    await wait_open(page)

    # Before: one message from each side, live.
    await api_post(server.http, ROOM, token, "before 1 (carol)")
    await send(page, "before 2 (dave)")
    await expect_message(page, "before 2 (dave)")
    assert await ids(page) == [1, 2]

    # While the server is down the page cannot reach it: Chromium logs each failed WebSocket
    # handshake to the console as "WebSocket connection to '<url>' failed: …". That message, for
    # this room's socket URL on this server, is the only console error expected (and required).
    ws_failed = pages.expect_console_error(
        rf"^WebSocket connection to '{re.escape(server.ws)}/ws/chat/{ROOM}/\?after=\d+' failed",
        "the page retries its socket while the server is stopped (the restart under test)")

    await asyncio.to_thread(server.stop)
    await expect(tid(page, "conn-state")).to_have_attribute("data-state", "reconnecting")

    # Typed while the server is down: shown at once as pending, not yet delivered.
    await send(page, "typed while down (dave)")
    waiting = pending(page)
    await expect(waiting).to_have_count(1)
    await expect(waiting).to_have_attribute("data-client-id", re.compile(r".+"))
    await expect(waiting.locator(".text")).to_have_text("typed while down (dave)")
    await expect(waiting.locator(".state")).to_have_text("sending…")
    # Let the back-off grow (about 0.5, 1, 2, 4 s between tries) so the page is still away
    # when the others post below, then bring the server back on the same port and data dir.
    await expect(tid(page, "conn-state")).to_have_text(re.compile(r"^Reconnecting in \d+ s…$"))
    await page.wait_for_timeout(3000)
    assert ws_failed.seen >= 1, "the page did not try to reconnect while the server was down"
    await expect(delivered(page)).to_have_count(2)
    await expect(waiting).to_have_count(1)

    await asyncio.to_thread(server.start)
    started = time.monotonic()
    others = [await api_post(server.http, ROOM, token, f"while away {i} (carol)") for i in (1, 2, 3)]
    state_after_posts = await tid(page, "conn-state").get_attribute("data-state")

    # The page comes back by itself (the longest back-off here is well under 20 s).
    await wait_open(page, timeout=20_000)
    reconnected_after = time.monotonic() - started
    await expect(pending(page)).to_have_count(0, timeout=10_000)
    for other in others:
        await expect_message(page, other["message"], author="carol")
    mine = await expect_message(page, "typed while down (dave)", author="dave")

    # One more from each side, live again.
    await api_post(server.http, ROOM, token, "after (carol)")
    await expect_message(page, "after (carol)")
    await send(page, "after (dave)")
    await expect_message(page, "after (dave)")

    stored = await history(server.http, ROOM, token)
    n = len(stored)
    assert [m["id"] for m in stored] == list(range(1, n + 1))
    assert n == 8, [m["message"] for m in stored]
    assert sum(m["message"] == "typed while down (dave)" for m in stored) == 1
    # Every message exactly once, in id order, the same as the server's; nothing left pending.
    await expect(delivered(page)).to_have_count(n)
    assert await ids(page) == list(range(1, n + 1))
    texts = await delivered(page).locator("[data-testid=message-text]").all_text_contents()
    assert texts == [m["message"] for m in stored]
    await expect(page.locator("[data-testid=messages] > li")).to_have_count(n)
    assert int(await mine.get_attribute("data-id") or 0) == next(
        m["id"] for m in stored if m["message"] == "typed while down (dave)")
    await expect(tid(page, "conn-state")).to_have_attribute("data-state", "open")
    await expect(tid(page, "conn-state")).to_have_text("Connected")
    print(f"page state while the others posted: {state_after_posts}; "
          f"open again {reconnected_after:.1f} s after the server was back; "
          f"{ws_failed.seen} failed socket handshakes logged")
    pages.assert_clean()
