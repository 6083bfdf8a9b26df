"""What a person does with the page, and what the tests read back from it (the `data-testid`s of
src/hubbub/web/templates/hubbub/app.html)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from playwright.async_api import Locator, Page, expect

from tests.e2e.conftest import PASSWORD

OPEN = "open"


def tid(page: Page, testid: str) -> Locator:
    return page.get_by_test_id(testid)


def delivered(page: Page) -> Locator:
    """Messages the server acknowledged or delivered (pending ones have no data-id)."""
    return page.locator("[data-testid=messages] > li.message[data-id]")


def pending(page: Page) -> Locator:
    return page.locator("[data-testid=messages] > li.message.pending")


async def signup(page: Page, username: str, password: str = PASSWORD) -> None:
    """Sign up through the form on the page that is showing the sign-in screen."""
    await expect(tid(page, "auth")).to_be_visible()
    await tid(page, "auth-username").fill(username)
    await tid(page, "auth-password").fill(password)
    await tid(page, "signup").click()
    await expect(tid(page, "chat")).to_be_visible()
    await expect(tid(page, "me")).to_have_text(username)


async def login(page: Page, username: str, password: str = PASSWORD) -> None:
    await expect(tid(page, "auth")).to_be_visible()
    await tid(page, "auth-username").fill(username)
    await tid(page, "auth-password").fill(password)
    await tid(page, "login").click()
    await expect(tid(page, "chat")).to_be_visible()
    await expect(tid(page, "me")).to_have_text(username)


async def wait_open(page: Page, timeout: float = 10_000) -> None:
    await expect(tid(page, "conn-state")).to_have_attribute("data-state", OPEN, timeout=timeout)


async def send(page: Page, text: str) -> None:
    """Type into the composer and press Enter."""
    box = tid(page, "composer-input")
    await box.fill(text)
    await box.press("Enter")
    await expect(box).to_have_value("")


async def ids(page: Page) -> list[int]:
    return [int(x) for x in await delivered(page).evaluate_all("els => els.map(e => e.dataset.id)")]


async def texts(page: Page) -> list[str]:
    return await delivered(page).locator("[data-testid=message-text]").all_text_contents()


async def expect_message(page: Page, text: str, author: str | None = None) -> Locator:
    """The one delivered message whose text is exactly ``text``."""
    item = delivered(page).filter(has=page.get_by_test_id("message-text").get_by_text(text, exact=True))
    await expect(item).to_have_count(1)
    if author is not None:
        await expect(item.locator(".author")).to_have_text(author)
    return item


async def api_post(base: str, room: str, token: str, text: str,
                   client_id: str | None = None) -> dict[str, Any]:
    """Post ``text`` through the HTTP API with a bearer token; the stored MessageEvent."""
    body: dict[str, Any] = {"message": text}
    if client_id:
        body["client_id"] = client_id
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        resp = await client.post(f"/api/rooms/{room}/messages", json=body,
                                 headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code in (200, 201), resp.text
    return dict(resp.json())


async def make_user(server: Any, name: str) -> str:
    """A user created with the CLI (password ``PASSWORD``); returns a bearer token."""
    return str(await asyncio.to_thread(server.make_user, name, PASSWORD))
