"""Live WebSocket security checks after the OWASP WebSocket cheat sheet, against a real
``hubbub serve``: the Origin allow-list at the handshake (no substring matches, no ``null``, no
other schemes), cross-site WebSocket hijacking with a victim's session cookie, authentication of
sockets, authorisation per message (a removed member), and the socket-layer limits: sockets
closed when their session ends or their user is deleted or deactivated, a cap on sockets per
user, a per-user post rate shared by all of a user's sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets import InvalidStatus

from tests.live import conversions_kit as kit
from tests.live.conftest import Cluster
from tests.live.servers import HubbubServer, history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

PASSWORD = "correct-horse-1"
# Origins whose host is not an allowed host, or that are not http(s) origins at all. The default
# allowed hosts are localhost, 127.0.0.1 and [::1].
FOREIGN_ORIGINS = [
    "http://evil.example", "https://evil-localhost.com", "http://localhost.evil.com",
    "http://localhost.evil.com:8000", "http://evillocalhost", "http://127.0.0.1.nip.io",
    "http://127.0.0.10", "http://[::2]", "null", "NULL", "file://", "file:///etc/passwd",
    "chrome-extension://abcdefghijklmnop", "ws://localhost", "wss://localhost", "ftp://localhost",
    "localhost", "//localhost", "http://localhost@evil.com", "http://evil.com#localhost",
    "http://evil.com/localhost", "http://evil.com?localhost",
]
ALLOWED_ORIGINS = ["http://localhost", "http://localhost:5173", "https://localhost:1",
                   "http://127.0.0.1:65535", "http://[::1]:8000", "HTTP://LOCALHOST"]


async def handshake(url: str, *, origin: str | None = None, headers: dict[str, str] | None = None,
                    rich: bool = False) -> Socket | int:
    """A connected Socket, or the HTTP status the handshake was refused with."""
    try:
        conn = await websockets.connect(url, origin=origin, additional_headers=headers or {},  # type: ignore[arg-type]
                                        subprotocols=["hubbub.v1"] if rich else None,  # type: ignore[list-item]
                                        open_timeout=10, max_size=None)
    except InvalidStatus as exc:
        return exc.response.status_code
    return Socket(conn)


async def signed_in(server: HubbubServer, username: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=server.http, timeout=10)
    made = await client.post("/api/auth/signup", json={"username": username, "password": PASSWORD})
    assert made.status_code == 201, made.text
    await client.get("/")  # the page sets the csrftoken cookie
    return client


def cookies(client: httpx.AsyncClient) -> dict[str, str]:
    return {"Cookie": kit.cookie_header(client)}


# -- Origin ------------------------------------------------------------------------------------------


async def test_foreign_origins_are_refused_at_the_handshake_on_every_socket_path(
    embedded: HubbubServer,
) -> None:
    token = await asyncio.to_thread(embedded.make_user, "olga", PASSWORD)
    job = await kit.upload(embedded, kit.png(), "a.png", "jpeg", token=token)
    job_id = job.json()["id"]
    paths = ["/ws/chat/lobby/", f"/ws/jobs/{job_id}/", "/ws/other/"]
    refused = 0
    for origin in FOREIGN_ORIGINS:
        for path in paths:
            answer = await handshake(embedded.ws + path, origin=origin, headers=kit.auth(token))
            assert answer == 403, (origin, path, answer)
            refused += 1
    for origin in ALLOWED_ORIGINS:
        sock = await handshake(embedded.ws + "/ws/chat/lobby/", origin=origin, headers=kit.auth(token))
        assert isinstance(sock, Socket), (origin, sock)
        ack = await sock.post(f"from {origin}", f"o-{origin}")
        assert ack["user"] == "olga"
        await sock.close()
    # Programs send no Origin: admitted.
    sock = await handshake(embedded.ws + "/ws/chat/lobby/", headers=kit.auth(token))
    assert isinstance(sock, Socket)
    await sock.close()
    assert len(await history(embedded.http, "lobby")) == len(ALLOWED_ORIGINS)
    assert refused == len(FOREIGN_ORIGINS) * len(paths)


async def test_cross_site_websocket_hijacking_with_the_victims_cookie_is_refused(
    embedded: HubbubServer,
) -> None:
    victim = await signed_in(embedded, "victor")
    try:
        # evil.example's page opens a socket to Hubbub: the browser adds the victim's cookies and
        # evil.example as the Origin.
        for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
            assert await handshake(embedded.ws + "/ws/chat/lobby/", origin=origin,
                                   headers=cookies(victim)) == 403
        # The same cookie from Hubbub's own page is the victim.
        sock = await handshake(embedded.ws + "/ws/chat/lobby/", origin=embedded.http, headers=cookies(victim))
        assert isinstance(sock, Socket)
        assert (await sock.post("mine", "v-1"))["user"] == "victor"
        await sock.close()
    finally:
        await victim.aclose()


@pytest.fixture
def custom_hosts(data_dir: Path) -> Iterator[HubbubServer]:
    server = HubbubServer(data_dir / "hosts", {"HUBBUB_ALLOWED_HOSTS": "chat.example.com,127.0.0.1"},
                          name="hosts")
    server.start()
    yield server
    server.stop()


async def test_the_allow_list_follows_hubbub_allowed_hosts_exactly(custom_hosts: HubbubServer) -> None:
    url = custom_hosts.ws + "/ws/chat/lobby/"
    for origin in ("https://evil-chat.example.com", "https://chat.example.com.evil.org",
                   "https://sub.chat.example.com", "https://example.com", "http://localhost",
                   "https://chat.example.co"):
        assert await handshake(url, origin=origin) == 403, origin
    for origin in ("https://chat.example.com", "https://chat.example.com:8443", "http://CHAT.example.com"):
        sock = await handshake(url, origin=origin)
        assert isinstance(sock, Socket), origin
        await sock.close()


# -- authentication and authorisation ----------------------------------------------------------------


async def test_bad_credentials_on_a_socket_are_refused_before_any_event(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "paula", PASSWORD)
    url = embedded.ws + "/ws/chat/lobby/"
    for header in ("Bearer hb_not-a-token", "Bearer " + token + "x", "Basic cGF1bGE6eA==", "Bearer",
                   "Token " + token, "bearer  "):
        sock = await handshake(url, headers={"Authorization": header}, rich=True)
        if isinstance(sock, Socket):
            assert await sock.wait_closed(5) == 4401, header
            assert sock.received == [], header
        else:
            assert sock == 403, header
    # A forged session cookie is a guest, never someone.
    sock = await handshake(url, headers={"Cookie": "sessionid=forged0000000000000000000000000"}, rich=True)
    assert isinstance(sock, Socket)
    assert (await sock.post("hi", "forged"))["user"].startswith("guest-")
    await sock.close()


async def test_a_removed_member_stops_receiving_at_once(embedded: HubbubServer) -> None:
    owner = await asyncio.to_thread(embedded.make_user, "quinn", PASSWORD)
    member = await asyncio.to_thread(embedded.make_user, "rita", PASSWORD)
    assert embedded.post("/api/rooms", {"name": "inner", "private": True}, token=owner).status_code == 201
    assert embedded.post("/api/rooms/inner/members", {"username": "rita"}, token=owner).status_code == 201
    theirs = [await Socket.open(embedded.ws, "inner", token=member, rich=rich) for rich in (False, True)]
    mine = await Socket.open(embedded.ws, "inner", token=owner, rich=True)
    await mine.post("before", "b-1")
    for sock in theirs:
        await sock.wait_ids(1)
    removed = await asyncio.to_thread(httpx.delete, embedded.http + "/api/rooms/inner/members/rita",
                                      headers=kit.auth(owner), timeout=10)
    assert removed.status_code == 200, removed.text
    for sock in theirs:
        assert await sock.wait_closed(5) == 4403
    await mine.post("after", "a-1")
    assert all(sock.ids() == [1] for sock in theirs)  # nothing after the removal reached them
    again = await Socket.open(embedded.ws, "inner", token=member)
    assert await again.wait_closed(5) == 4403
    assert embedded.get("/api/rooms/inner/messages", token=member).status_code in (403, 404)
    await mine.close()


# -- the socket-layer limits (CONTRACT §4 extensions; the lead's socket-layer change) ---------------

async def job_for(server: HubbubServer, *, token: str | None = None,
                  client: httpx.AsyncClient | None = None) -> str:
    files = {"file": ("a.png", kit.png(), "image/png")}
    if client is not None:
        answer = await client.post("/api/conversions", files=files, data={"target": "jpeg"},
                                   headers={"X-CSRFToken": client.cookies["csrftoken"]})
    else:
        answer = await kit.upload(server, kit.png(), "a.png", "jpeg", token=token)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def closed_within(socks: list[Socket], code: int, seconds: float) -> None:
    start = time.monotonic()
    for sock in socks:
        got = await sock.wait_closed(max(0.1, seconds - (time.monotonic() - start)))
        assert got == code, got
    assert time.monotonic() - start <= seconds + 0.5


async def test_logging_out_closes_that_sessions_sockets_within_2_seconds(embedded: HubbubServer) -> None:
    client = await signed_in(embedded, "sam")
    other = await signed_in(embedded, "tess")
    try:
        job_id = await job_for(embedded, client=client)
        chat = [await handshake(embedded.ws + "/ws/chat/lobby/", headers=cookies(client), rich=rich)
                for rich in (False, True)]
        jobs = await handshake(embedded.ws + f"/ws/jobs/{job_id}/", headers=cookies(client))
        bystander = await handshake(embedded.ws + "/ws/chat/lobby/", headers=cookies(other))
        socks = [s for s in [*chat, jobs] if isinstance(s, Socket)]
        assert len(socks) == 3 and isinstance(bystander, Socket)
        out = await client.post("/api/auth/logout", headers={"X-CSRFToken": client.cookies["csrftoken"]})
        assert out.status_code == 200
        await closed_within(socks, 4401, 2.0)
        ack = await bystander.post("still here", "t-1")  # another user's socket is untouched
        assert ack["user"] == "tess" and bystander.closed_code is None
        await bystander.close()
    finally:
        await client.aclose()
        await other.aclose()


def change_user(server: HubbubServer, username: str, how: str) -> None:
    """Deactivate or delete ``username`` from another process, as an operator would."""
    code = (f"User.objects.filter(username='{username}').update(is_active=False)" if how == "deactivated"
            else f"User.objects.get(username='{username}').delete()")
    if how == "deactivated":  # update() sends no signal: save the model, as an admin would
        code = (f"u = User.objects.get(username='{username}'); u.is_active = False; u.save()")
    done = server.cli("manage", "shell", "-c", f"from django.contrib.auth.models import User; {code}")
    assert done.returncode == 0, done.stderr


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("how", ["deactivated", "deleted"])
async def test_a_deactivated_or_deleted_users_sockets_close_within_2_seconds_on_every_instance(
    cluster: Cluster, how: str,
) -> None:
    token = await asyncio.to_thread(cluster.a.make_user, "uma", PASSWORD)
    other = await asyncio.to_thread(cluster.a.make_user, "ugo", PASSWORD)
    job_id = await job_for(cluster.a, token=token)
    socks = [await Socket.open(server.ws, "lobby", token=token, rich=rich)
             for server in cluster.servers for rich in (False, True)]
    socks.append(await kit.job_socket(cluster.b, job_id, token=token))
    bystander = await Socket.open(cluster.b.ws, "lobby", token=other)
    await asyncio.to_thread(change_user, cluster.a, "uma", how)
    await closed_within(socks, 4401, 2.0)
    assert bystander.closed_code is None and (await bystander.post("still here", "u-1"))["user"] == "ugo"
    for server in cluster.servers:  # and the token no longer opens a socket
        again = await handshake(server.ws + "/ws/chat/lobby/", headers=kit.auth(token))
        assert isinstance(again, Socket) and await again.wait_closed(5) == 4401
    await bystander.close()


async def test_without_redis_another_process_s_change_is_caught_by_the_recheck(
    embedded: HubbubServer,
) -> None:
    """The embedded default has no channel between processes: a user deactivated by another
    process (``hubbub manage``) is caught by the server's own re-check, every 15 seconds."""
    token = await asyncio.to_thread(embedded.make_user, "vic", PASSWORD)
    socks = [await Socket.open(embedded.ws, "lobby", token=token, rich=rich) for rich in (False, True)]
    await asyncio.to_thread(change_user, embedded, "vic", "deactivated")
    await closed_within(socks, 4401, 15.0 + 2.0)


@pytest.fixture
def capped(data_dir: Path) -> Iterator[HubbubServer]:
    server = HubbubServer(data_dir / "capped", {"HUBBUB_MAX_SOCKETS_PER_USER": "3"}, name="capped")
    server.start()
    yield server
    server.stop()


async def test_sockets_over_the_per_user_cap_are_closed_with_4429(capped: HubbubServer) -> None:
    token = await asyncio.to_thread(capped.make_user, "vera", PASSWORD)
    other = await asyncio.to_thread(capped.make_user, "walt", PASSWORD)
    socks = [await Socket.open(capped.ws, f"room{i}", token=token) for i in range(3)]
    over = await Socket.open(capped.ws, "room9", token=token)
    assert await over.wait_closed(5) == 4429
    assert over.received == []
    assert all(s.closed_code is None for s in socks)
    # Another user is not affected; closing one socket makes room for a new one.
    theirs = await Socket.open(capped.ws, "room0", token=other)
    assert (await theirs.post("fine", "w-1"))["user"] == "walt"
    await socks[0].close()
    deadline = time.monotonic() + 5
    while True:
        again = await Socket.open(capped.ws, "room0", token=token)
        try:
            ack = await again.post("back", "v-1", timeout=2)
            break
        except AssertionError:
            assert again.closed_code == 4429 and time.monotonic() < deadline, again.closed_code
            await asyncio.sleep(0.2)
    assert ack["user"] == "vera"
    for sock in [*socks[1:], again, theirs]:
        await sock.close()


async def test_the_default_cap_is_50_sockets_per_user(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "xena", PASSWORD)
    socks = [await Socket.open(embedded.ws, "many", token=token) for _ in range(50)]
    over = await Socket.open(embedded.ws, "many", token=token)
    assert await over.wait_closed(5) == 4429
    assert all(s.closed_code is None for s in socks)
    await asyncio.gather(*(s.close() for s in socks))


async def test_a_users_sockets_share_one_post_rate_limit(embedded: HubbubServer) -> None:
    token = await asyncio.to_thread(embedded.make_user, "yann", PASSWORD)
    sockets = 8
    per_socket = 10  # per second: each socket alone is within its own 12/s, burst 24
    seconds = 3
    socks = [await Socket.open(embedded.ws, "busy", token=token, rich=True) for _ in range(sockets)]

    async def pace(sock: Socket, index: int) -> None:
        for n in range(per_socket * seconds):
            await sock.send({"message": f"{index}-{n}", "client_id": f"{index}-{n}"})
            await asyncio.sleep(1 / per_socket)

    await asyncio.gather(*(pace(s, i) for i, s in enumerate(socks)))
    await asyncio.sleep(1.0)
    limited = [e for s in socks for e in s.received if e.get("type") == "error"]
    assert limited, "80 posts/s from one user over 8 sockets were never limited"
    assert {e["code"] for e in limited} == {"rate_limited"}
    assert all(e["retry_after"] > 0 for e in limited)
    acked = {e["client_id"] for s in socks for e in s.messages() if e["user"] == "yann"}
    stored = await history(embedded.http, "busy")
    assert {m["client_id"] for m in stored} == acked  # refused posts were not stored
    assert len(stored) + len(limited) == sockets * per_socket * seconds
    assert all(s.closed_code is None for s in socks)
    # Another user is not limited by yann's traffic.
    other = await asyncio.to_thread(embedded.make_user, "zoe", PASSWORD)
    theirs = await Socket.open(embedded.ws, "busy", token=other)
    assert (await theirs.post_or_error("mine", "z-1"))["type"] == "message"
    for sock in [*socks, theirs]:
        await sock.close()


