"""Secrets never reach the server's output: a live ``hubbub serve`` whose stdout and stderr are
captured is driven through sign-up, sign-in (right and wrong passwords), the throttle, tokens (API
and CLI), bearer and session sockets, posts, an upload and log-out; then its whole output is
searched for every secret it handled.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from tests.live import conversions_kit as kit
from tests.live.servers import HubbubServer
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

SECRET_KEY = "s3cret-key-for-the-log-test-0123456789abcdef"
PASSWORD = "pw-Correct-Horse-7391"
WRONG = "pw-Wrong-Guess-5522"
FORGED = "hb_forged-token-value-8842"


@pytest.mark.parametrize("debug", ["false", "true"])
async def test_no_secret_appears_in_the_servers_output(data_dir: Path, debug: str) -> None:
    server = HubbubServer(data_dir / f"logs-{debug}",
                          {"HUBBUB_SECRET_KEY": SECRET_KEY, "HUBBUB_DEBUG": debug}, name="logs")
    server.start()
    secrets: dict[str, str] = {"secret key": SECRET_KEY, "password": PASSWORD, "wrong password": WRONG,
                               "forged token": FORGED}
    try:
        async with httpx.AsyncClient(base_url=server.http, timeout=30) as browser:
            made = await browser.post("/api/auth/signup", json={"username": "mallory", "password": PASSWORD})
            assert made.status_code == 201
            await browser.get("/")
            secrets["first session id"] = browser.cookies["sessionid"]
            secrets["csrf token"] = browser.cookies["csrftoken"]
            for _ in range(3):
                bad = await browser.post("/api/auth/login", json={"username": "mallory", "password": WRONG})
                assert bad.status_code == 401
            good = await browser.post("/api/auth/login", json={"username": "mallory", "password": PASSWORD})
            assert good.status_code == 200
            secrets["session id"] = browser.cookies["sessionid"]
            secrets["rotated csrf token"] = browser.cookies["csrftoken"]  # sign-in rotates it
            token = (await browser.post("/api/auth/token",
                                        json={"username": "mallory", "password": PASSWORD})).json()["token"]
            secrets["api token"] = token
            secrets["api token digest"] = hashlib.sha256(token.encode()).hexdigest()
            cli_token = await asyncio.to_thread(server.cli, "token", "create", "mallory")
            secrets["cli token"] = cli_token.stdout.strip()
            # Requests that carry secrets in headers, bodies, and (refused) in the URL.
            assert (await browser.get("/api/auth/me", headers=kit.auth(token))).status_code == 200
            assert (await browser.get("/api/auth/me", headers=kit.auth(FORGED))).status_code == 401
            await browser.post("/api/auth/login", params={"username": "mallory", "password": PASSWORD})
            await browser.get(f"/api/rooms/lobby/messages?token={token}&password={PASSWORD}")
            posted = await browser.post("/api/rooms/lobby/messages", json={"message": "over http"},
                                        headers={"X-CSRFToken": browser.cookies["csrftoken"]})
            assert posted.status_code == 201
            for _ in range(5):  # into the throttle
                await browser.post("/api/auth/token", json={"username": "mallory", "password": WRONG})
            assert (await browser.post("/api/auth/login",
                                       json={"username": "mallory", "password": PASSWORD})).status_code == 429
            up = await kit.upload(server, kit.png(), "x.png", "jpeg", token=secrets["cli token"])
            assert up.status_code == 202
            # Sockets: bearer, session cookie, a forged token, a token in the URL (ignored).
            bearer = await Socket.open(server.ws, "lobby", token=token, rich=True)
            await bearer.post("over a socket", "s-1")
            cookie = await Socket.open(server.ws, "lobby", rich=True,
                                       headers={"Cookie": kit.cookie_header(browser)})
            await cookie.post("with a cookie", "s-2")
            forged = await Socket.open(server.ws, "lobby", token=FORGED)
            assert await forged.wait_closed(5) == 4401
            in_url = await Socket.open(server.ws, "lobby", after=0, headers={"X-Token": token})
            await in_url.close()
            await bearer.close()
            await cookie.close()
            csrf = {"X-CSRFToken": browser.cookies["csrftoken"]}
            out = await browser.post("/api/auth/logout", headers=csrf)
            assert out.status_code == 200
    finally:
        code = server.stop()
    assert code == 0
    log = server.log_path.read_text(errors="replace")
    assert "serving on" in log  # the capture worked
    leaked = {name: value for name, value in secrets.items() if value and value in log}
    assert not leaked, f"secrets in the server's output: {sorted(leaked)}"
    # Nor in anything else the server wrote beside its database (the secret key's own file aside).
    for path in server.data_dir.rglob("*"):
        if path.is_file() and not path.name.startswith(("hubbub.sqlite3", "secret_key")):
            data = path.read_bytes()
            for name, value in secrets.items():
                assert value.encode() not in data, (name, path)
