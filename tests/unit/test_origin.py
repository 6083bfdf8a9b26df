"""Pure unit tests of the WebSocket Origin / host checks (CONTRACT.md §2 and §4). No DB, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from hubbub.realtime import middleware
from hubbub.realtime.middleware import host_allowed, origin_allowed

DEFAULT = ("localhost", "127.0.0.1", "[::1]")


# -- host_allowed -------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "LocalHost", "127.0.0.1", "[::1]", "::1"])
def test_default_hosts_are_allowed(host: str) -> None:
    assert host_allowed(host, DEFAULT)


@pytest.mark.parametrize(
    "host",
    [
        "evil-localhost.com",
        "localhost.evil.com",
        "localhostx",
        "xlocalhost",
        "sub.localhost",
        "127.0.0.10",
        "127.0.0.1.evil.com",
        "1127.0.0.1",
        "::2",
        "[::2]",
        "",
        "example.com",
    ],
)
def test_no_substring_or_prefix_matches(host: str) -> None:
    assert not host_allowed(host, DEFAULT)


def test_exact_host_pattern_does_not_match_subdomains() -> None:
    assert host_allowed("example.com", ["example.com"])
    assert not host_allowed("chat.example.com", ["example.com"])


@pytest.mark.parametrize("host", ["example.com", "chat.example.com", "a.b.example.com", "CHAT.Example.COM"])
def test_dot_pattern_matches_the_domain_and_its_subdomains(host: str) -> None:
    assert host_allowed(host, [".example.com"])


@pytest.mark.parametrize("host", ["badexample.com", "example.com.evil.org", "example.co", "xexample.com"])
def test_dot_pattern_is_not_a_suffix_match(host: str) -> None:
    assert not host_allowed(host, [".example.com"])


def test_star_allows_any_host() -> None:
    assert host_allowed("anything.example", ["*"])


def test_empty_allow_list_allows_nothing() -> None:
    assert not host_allowed("localhost", [])


def test_pattern_case_does_not_matter() -> None:
    assert host_allowed("chat.example.com", ["Chat.Example.COM"])


# -- origin_allowed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        b"http://localhost",
        b"http://localhost:8000",
        b"https://localhost:1",
        b"http://127.0.0.1:65535",
        b"http://[::1]",
        b"http://[::1]:8000",
        b"HTTP://LOCALHOST:8000",
        b"https://localhost/",
    ],
)
def test_allowed_origins_ignore_the_port(origin: bytes) -> None:
    assert origin_allowed(origin, DEFAULT)


def test_missing_origin_is_allowed() -> None:
    assert origin_allowed(None, DEFAULT)


@pytest.mark.parametrize(
    "origin",
    [
        b"null",
        b"NULL",
        b"",
        b"http://evil-localhost.com",
        b"http://localhost.evil.com",
        b"http://localhost.evil.com:8000",
        b"https://evil.com",
        b"http://127.0.0.1.nip.io",
        b"http://[::2]:8000",
        b"http://[::1",
        b"file://",
        b"file:///etc/passwd",
        b"ws://evil.com",
        b"chrome-extension://abcdef",
        b"localhost",
        b"localhost:8000",
        b"//localhost",
        b"http://",
        b"\xff\xfe",
    ],
)
def test_refused_origins(origin: bytes) -> None:
    assert not origin_allowed(origin, DEFAULT)


def test_origin_port_is_ignored_for_custom_hosts() -> None:
    allowed = ("chat.example.com",)
    assert origin_allowed(b"https://chat.example.com:8443", allowed)
    assert not origin_allowed(b"https://evil.chat.example.com", allowed)


def test_origin_with_dot_pattern() -> None:
    allowed = (".example.com",)
    assert origin_allowed(b"https://example.com", allowed)
    assert origin_allowed(b"https://eu.chat.example.com:444", allowed)
    assert not origin_allowed(b"https://notexample.com", allowed)
    assert not origin_allowed(b"https://example.com.evil.org", allowed)


def test_null_origin_is_refused_even_with_star() -> None:
    assert not origin_allowed(b"null", ["*"])


# -- the ASGI middleware, driven with fake receive/send (no server, no database) ----------------
#
# Channels' real WebsocketDenier closes old database connections on dispatch, so it is replaced by
# a recording stand-in: these tests check the routing decision, not Channels.


class FakeApp:
    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True


class FakeDenier:
    denied: list[dict[str, Any]]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        FakeDenier.denied.append(scope)
        await send({"type": "websocket.close"})


@pytest.fixture(autouse=True)
def _fake_denier(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDenier.denied = []
    monkeypatch.setattr(middleware, "WebsocketDenier", FakeDenier)


async def run_middleware(
    headers: list[tuple[bytes, bytes]], kind: str = "websocket"
) -> tuple[bool, list[dict[str, Any]]]:
    app = FakeApp()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the origin check reads nothing from the client")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": kind, "path": "/ws/chat/lobby/", "headers": headers, "subprotocols": []}
    await middleware.OriginCheckMiddleware(app)(scope, receive, send)
    return app.called, sent


async def test_middleware_refuses_a_foreign_origin_at_the_handshake() -> None:
    called, sent = await run_middleware([(b"origin", b"http://evil-localhost.com")])
    assert not called
    assert len(FakeDenier.denied) == 1
    assert sent == [{"type": "websocket.close"}]


async def test_middleware_passes_an_allowed_origin_on_another_port() -> None:
    called, sent = await run_middleware([(b"origin", b"http://localhost:5173")])
    assert called
    assert FakeDenier.denied == [] and sent == []


async def test_middleware_passes_programs_without_origin() -> None:
    called, _ = await run_middleware([(b"user-agent", b"a-program")])
    assert called
    assert FakeDenier.denied == []


async def test_middleware_refuses_the_null_origin() -> None:
    called, _ = await run_middleware([(b"origin", b"null")])
    assert not called
    assert len(FakeDenier.denied) == 1


async def test_middleware_follows_the_allowed_hosts_setting(settings: Any) -> None:
    settings.ALLOWED_HOSTS = [".example.com"]
    called, _ = await run_middleware([(b"origin", b"https://chat.example.com")])
    assert called
    called, _ = await run_middleware([(b"origin", b"http://localhost:8000")])
    assert not called


async def test_middleware_ignores_http_scopes() -> None:
    called, _ = await run_middleware([(b"origin", b"http://evil.com")], kind="http")
    assert called
    assert FakeDenier.denied == []
