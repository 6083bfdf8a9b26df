"""Live HTTP security checks against a real ``hubbub serve``: CSRF on session-authenticated calls,
the sign-in throttle across two instances and per client address, passwords never taken from
URLs, bearer tokens (stored as digests only; a deactivated user's token stops working), and
uploads (decompression bombs, path traversal in file names, content types that lie).
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.live import conversions_kit as kit
from tests.live.servers import HubbubServer, history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]

PASSWORD = "correct-horse-1"


def browser(server: HubbubServer, username: str) -> tuple[httpx.Client, str]:
    """A cookie-keeping client signed up as ``username``, and its CSRF token (set by the page)."""
    client = httpx.Client(base_url=server.http, timeout=10)
    made = client.post("/api/auth/signup", json={"username": username, "password": PASSWORD})
    assert made.status_code == 201, made.text
    client.get("/")
    return client, client.cookies["csrftoken"]


def json_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
    if code is not None:
        assert body["error"] == code, body
    return body


# -- CSRF ------------------------------------------------------------------------------------------


def test_session_calls_need_the_csrf_token_and_bearer_calls_do_not(embedded: HubbubServer) -> None:
    client, csrf = browser(embedded, "carol")
    try:
        # Every unsafe session call without the token: 403 JSON, and nothing happens.
        refused = [
            client.post("/api/rooms", json={"name": "nocsrf"}),
            client.post("/api/rooms/lobby/messages", json={"message": "forged"}),
            client.post("/api/auth/logout"),
            client.post("/api/rooms/lobby/members", json={"username": "carol"}),
            client.delete("/api/rooms/lobby/members/carol"),
            client.post("/api/rooms", json={"name": "badcsrf"}, headers={"X-CSRFToken": "x" * 32}),
            client.post("/api/rooms", json={"name": "othercsrf"},
                        headers={"X-CSRFToken": csrf[::-1]}),
        ]
        for response in refused:
            json_error(response, 403, "forbidden")
        assert client.get("/api/auth/me").json() == {"username": "carol", "guest": False}  # still in
        assert history_sync(embedded, "lobby") == []
        # A forged cross-site request that somehow carries the token is still refused by its Origin.
        cross = client.post("/api/rooms", json={"name": "crosssite"},
                            headers={"X-CSRFToken": csrf, "Origin": "http://evil.example"})
        json_error(cross, 403, "forbidden")
        # With the token (and a same-origin Origin, as a browser sends): allowed.
        ok = client.post("/api/rooms", json={"name": "withcsrf"},
                         headers={"X-CSRFToken": csrf, "Origin": embedded.http})
        assert ok.status_code == 201, ok.text
        posted = client.post("/api/rooms/withcsrf/messages", json={"message": "real"},
                             headers={"X-CSRFToken": csrf})
        assert posted.status_code == 201, posted.text
        # A bearer call needs no CSRF token, even when a session cookie rides along.
        creds = {"username": "carol", "password": PASSWORD}
        token = client.post("/api/auth/token", json=creds).json()["token"]
        with_bearer = client.post("/api/rooms/withcsrf/messages", json={"message": "by token"},
                                  headers={"Authorization": f"Bearer {token}"})
        assert with_bearer.status_code == 201, with_bearer.text
        assert [m["message"] for m in history_sync(embedded, "withcsrf", token)] == ["real", "by token"]
        # Log-out with the token ends the session.
        assert client.post("/api/auth/logout", headers={"X-CSRFToken": csrf}).status_code == 200
        assert client.get("/api/auth/me").json()["guest"] is True
    finally:
        client.close()


def history_sync(server: HubbubServer, room: str, token: str | None = None) -> list[dict[str, Any]]:
    return asyncio.run(history(server.http, room, token))


# -- the sign-in throttle ---------------------------------------------------------------------------


@pytest.fixture
def twins(data_dir: Path) -> Iterator[tuple[HubbubServer, HubbubServer]]:
    """Two instances on one data dir (one SQLite database): what one counts, the other sees."""
    a = HubbubServer(data_dir / "shared", name="a")
    b = HubbubServer(data_dir / "shared", name="b")
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def login(server: HubbubServer, username: str, password: str, address: str | None = None) -> httpx.Response:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 (a proxy on the same host, as in
    # docs/deployment); the throttle then counts the client's address, not the proxy's.
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(server.http + "/api/auth/login", json={"username": username, "password": password},
                      headers=headers, timeout=10)


def test_failed_sign_ins_are_counted_across_instances(twins: tuple[HubbubServer, HubbubServer]) -> None:
    a, b = twins
    token = a.make_user("dave", PASSWORD)
    for i in range(5):
        json_error(login(a if i % 2 else b, "dave", f"guess-{i}", f"198.51.100.{i}"), 401, "unauthorized")
    for server in (a, b):
        throttled = login(server, "dave", PASSWORD, "198.51.100.99")
        body = json_error(throttled, 429, "rate_limited")
        assert 250 <= body["retry_after"] <= 300
        assert throttled.headers["retry-after"] == str(body["retry_after"])
    creds = {"username": "dave", "password": PASSWORD}
    json_error(httpx.post(b.http + "/api/auth/token", json=creds, timeout=10), 429, "rate_limited")
    # The bearer token made before the attack still works: throttling is not a lock-out.
    for server in (a, b):
        assert server.get("/api/auth/me", token=token).json() == {"username": "dave", "guest": False}
    # Another name is not throttled.
    a.make_user("erin", PASSWORD)
    assert login(a, "erin", PASSWORD, "198.51.100.98").status_code == 200


def test_failed_sign_ins_from_one_address_throttle_that_address(embedded: HubbubServer) -> None:
    embedded.make_user("frank", PASSWORD)
    for i in range(20):
        json_error(login(embedded, f"user{i}", "guess", "203.0.113.7"), 401)
    json_error(login(embedded, "frank", PASSWORD, "203.0.113.7"), 429, "rate_limited")
    assert login(embedded, "frank", PASSWORD, "203.0.113.8").status_code == 200


# -- passwords and tokens ---------------------------------------------------------------------------


def test_passwords_are_never_taken_from_the_url(embedded: HubbubServer) -> None:
    embedded.make_user("gina", PASSWORD)
    query = {"username": "gina", "password": PASSWORD}
    for path in ("/api/auth/login", "/api/auth/token", "/api/auth/signup"):
        client = httpx.Client(base_url=embedded.http, timeout=10)
        with client:
            json_error(client.post(path, params=query), 400)
            json_error(client.post(path, params=query, json={}), 400)
            assert client.get(path, params=query).status_code == 405
            assert "sessionid" not in client.cookies
            assert client.get("/api/auth/me").json()["guest"] is True
    # A form-encoded body is not JSON: refused, not parsed.
    form = httpx.post(embedded.http + "/api/auth/login", data=query, timeout=10)
    json_error(form, 400)


async def test_a_token_in_the_socket_url_is_never_read(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "hank", PASSWORD)
    for param in ("token", "access_token", "authorization", "bearer"):
        conn = await websockets.connect(f"{embedded.ws}/ws/chat/url-{param}/?{param}={token}",
                                        subprotocols=["hubbub.v1"], open_timeout=10)  # type: ignore[list-item]
        sock = Socket(conn)
        ack = await sock.post("who am i", f"c-{param}")
        assert ack["user"].startswith("guest-"), ack  # a guest, not hank
        await sock.close()
    # The same token in the Authorization header is hank.
    sock = await Socket.open(embedded.ws, "url-header", rich=True, token=token)
    assert (await sock.post("who am i", "c-header"))["user"] == "hank"
    await sock.close()


def test_tokens_are_stored_as_digests_and_die_with_their_user(embedded: HubbubServer) -> None:
    token = embedded.make_user("ivan", PASSWORD)
    api_token = httpx.post(embedded.http + "/api/auth/token", json={"username": "ivan", "password": PASSWORD},
                           timeout=10).json()["token"]
    assert token != api_token and token.startswith("hb_") and len(token) > 40
    for t in (token, api_token):
        assert embedded.get("/api/auth/me", token=t).json() == {"username": "ivan", "guest": False}
    json_error(httpx.post(embedded.http + "/api/auth/token", json={"username": "ivan", "password": "nope"},
                          timeout=10), 401, "unauthorized")
    # Only digests are stored: the raw tokens appear nowhere in the database files.
    db_files = list(embedded.data_dir.glob("hubbub.sqlite3*"))
    assert db_files
    for path in db_files:
        raw = path.read_bytes()
        assert token.encode() not in raw and api_token.encode() not in raw and PASSWORD.encode() not in raw
    with sqlite3.connect(embedded.data_dir / "hubbub.sqlite3") as db:
        digests = [row[0] for row in db.execute("SELECT digest FROM accounts_apitoken")]
    assert len(digests) == 2 and all(len(d) == 64 for d in digests)
    # Deactivating the user revokes every token at once.
    done = embedded.cli("manage", "shell", "-c",
                        "from django.contrib.auth.models import User; "
                        "User.objects.filter(username='ivan').update(is_active=False)")
    assert done.returncode == 0, done.stderr
    for t in (token, api_token):
        json_error(embedded.get("/api/auth/me", token=t), 401, "unauthorized")
        json_error(embedded.post("/api/rooms/x/messages", {"message": "hi"}, token=t), 401, "unauthorized")


# -- uploads ------------------------------------------------------------------------------------------


async def upload_and_wait(server: HubbubServer, data: bytes, name: str, target: str, token: str,
                          content_type: str = "application/octet-stream") -> dict[str, Any]:
    files = {"file": (name, data, content_type)}
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
        answer = await client.post("/api/conversions", files=files, data={"target": target},
                                   headers=kit.auth(token))
        assert answer.status_code == 202, answer.text
        job: dict[str, Any] = answer.json()
        for _ in range(300):
            if job["state"] in kit.FINAL:
                return job
            await asyncio.sleep(0.1)
            job = (await client.get(f"/api/conversions/{job['id']}", headers=kit.auth(token))).json()
    raise AssertionError(f"job not final: {job}")


def zip_bomb(member: str = "xl/worksheets/sheet1.xml", size: int = 1024**3) -> bytes:
    """A zip whose one member inflates to ``size`` bytes of zeros (1 GiB from about 1 MB)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open(member, "w", force_zip64=True) as stream:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                stream.write(chunk)
    return out.getvalue()


def data_dir_bytes(server: HubbubServer) -> int:
    return sum(p.stat().st_size for p in server.data_dir.rglob("*") if p.is_file())


async def test_decompression_bombs_fail_cleanly_and_the_server_lives(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "judy", PASSWORD)
    bomb = await asyncio.to_thread(zip_bomb)
    assert len(bomb) < 2 * 1024 * 1024
    before = data_dir_bytes(embedded)
    outcomes = {}
    for data, name, target in ((bomb, "book.xlsx", "csv"), (bomb, "book.xlsx", "json"),
                               (kit.bomb_png(), "huge.png", "jpeg"),
                               (kit.bomb_png(60_000, 60_000), "huge.png", "pdf")):
        files = {"file": (name, data, "application/octet-stream")}
        async with httpx.AsyncClient(base_url=embedded.http, timeout=30) as client:
            answer = await client.post("/api/conversions", files=files, data={"target": target},
                                       headers=kit.auth(token))
        if answer.status_code == 400:  # refused at once (not a workbook at all): fine too
            outcomes[(name, target)] = json_error(answer, 400)["error"]
            continue
        job = await upload_and_wait(embedded, data, name, target, token)
        assert job["state"] == "failed" and job["error"], job
        outcomes[(name, target)] = job["error"]
        assert embedded.get("/livez").status_code == 200
    assert embedded.proc is not None and embedded.proc.poll() is None
    # Nothing was inflated to disk (the uploads themselves are a few MB).
    assert data_dir_bytes(embedded) - before < 50 * 1024 * 1024, outcomes
    ok = await upload_and_wait(embedded, kit.png(), "fine.png", "jpeg", token)
    assert ok["state"] == "done", ok


TRAVERSAL_NAMES = [
    "../../../../etc/passwd.png", "..\\..\\..\\windows\\win.png", "/etc/shadow.png", "....//....//x.png",
    "%2e%2e%2f%2e%2e%2fescaped.png", 'quote"; filename="evil.sh.png', "new\r\nline: injected.png",
    "\u2025/\u2024\u2024/dots.png", "nul\x00byte.png", "..", ".png", "a/" * 100 + "deep.png",
]


async def test_upload_names_never_escape_the_data_dir_or_the_download_header(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "kim", PASSWORD)
    uploads = embedded.data_dir / "uploads"
    results = embedded.data_dir / "results"
    converted = 0
    for name in TRAVERSAL_NAMES:
        async with httpx.AsyncClient(base_url=embedded.http, timeout=10) as client:
            answer = await client.post("/api/conversions", files={"file": (name, kit.png(), "image/png")},
                                       data={"target": "jpeg"}, headers=kit.auth(token))
        if answer.status_code == 400:
            # A name the multipart parser will not take (a NUL, a line break): refused as a request
            # without a file. That is fine; a 500 or a file stored under that name would not be.
            json_error(answer, 400, "invalid")
            continue
        job = await upload_and_wait(embedded, kit.png(), name, "jpeg", token, "image/png")
        assert job["state"] == "done", (name, job)
        converted += 1
        shown = job["filename"]
        assert "/" not in shown and "\\" not in shown and shown not in ("..", ".") and "\x00" not in shown
        assert "\r" not in shown and "\n" not in shown, shown
        async with httpx.AsyncClient(base_url=embedded.http, timeout=10) as client:
            result = await client.get(f"/api/conversions/{job['id']}/result", headers=kit.auth(token))
        assert result.status_code == 200
        disposition = result.headers["content-disposition"]
        assert disposition.startswith("attachment;"), disposition
        assert "../" not in disposition and "..\\" not in disposition
        assert "/" not in disposition.split(";", 1)[1]
        assert "\r" not in disposition and "\n" not in disposition
        assert result.headers["x-content-type-options"] == "nosniff"
        assert result.content[:3] == b"\xff\xd8\xff"  # the jpeg itself
    assert converted >= len(TRAVERSAL_NAMES) - 3, converted
    # Everything written is under generated names in the data dir; nothing appeared elsewhere.
    for folder in (uploads, results):
        for path in folder.iterdir():
            assert path.resolve().parent == folder.resolve(), path
            assert all(c in "0123456789abcdef-." for c in path.name.split(".")[0]), path.name
    for outside in (Path("/etc/passwd.jpg"), embedded.data_dir.parent / "etc", Path("/windows")):
        assert not outside.exists()


async def test_content_types_are_sniffed_not_trusted(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "leo", PASSWORD)
    async with httpx.AsyncClient(base_url=embedded.http, timeout=30, headers=kit.auth(token)) as client:
        async def send(data: bytes, name: str, ctype: str, target: str) -> httpx.Response:
            return await client.post("/api/conversions", files={"file": (name, data, ctype)},
                                     data={"target": target})

        # A PNG that claims to be CSV is converted as the PNG it is; CSV targets are refused.
        refused = await send(kit.png(), "table.csv", "text/csv", "json")
        assert json_error(refused, 400, "unsupported_conversion")
        job = await upload_and_wait(embedded, kit.png(), "table.csv", "jpeg", token, "text/csv")
        assert job["state"] == "done" and job["source"] == "png", job
        # HTML, SVG and a script that claim to be images are not images: refused at once.
        for data, name in ((b"<html><script>alert(1)</script></html>", "pic.png"),
                           (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "pic.png"),
                           (b"#!/bin/sh\nrm -rf /\n", "pic.jpeg")):
            json_error(await send(data, name, "image/png", "jpeg"), 400, "unsupported_conversion")
        # Markdown with raw HTML becomes HTML with the markup escaped, served as a download.
        md = (b"# Title\n\n<script>alert(1)</script>\n\n"
              b"<img src=x onerror=alert(1)>\n[x](javascript:alert(1))\n")
        job = await upload_and_wait(embedded, md, "notes.md", "html", token, "text/markdown")
        assert job["state"] == "done", job
        result = await client.get(f"/api/conversions/{job['id']}/result")
        assert result.headers["content-disposition"].startswith("attachment;")
        assert result.headers["x-content-type-options"] == "nosniff"
        html = result.text
        assert "<script>" not in html and "<img" not in html and 'href="javascript:' not in html, html
        assert "&lt;script&gt;" in html
