"""Pure unit tests of the chat protocol core (CONTRACT.md §4): no database, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hubbub.realtime import protocol
from hubbub.realtime.protocol import (
    HistoryFrame,
    PingFrame,
    PostFrame,
    ProtocolError,
    TokenBucket,
    TypingFrame,
    parse_after,
    parse_frame,
    rate_limited,
    valid_room_name,
)

LIMIT = 4000


def parse(obj: Any, *, max_chars: int = LIMIT) -> protocol.Frame | ProtocolError:
    return parse_frame(json.dumps(obj), None, max_chars=max_chars)


def error_code(result: object) -> str:
    assert isinstance(result, ProtocolError), f"expected a ProtocolError, got {result!r}"
    assert result.detail, "every error carries a detail text"
    assert "\n" not in result.detail
    return result.code


# -- bad_json -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "{'message': 'single quotes'}", '{"message": "hi"', "hello", "{}}", '{"a":1,}',
     "[" * 100_000],
)
def test_text_that_is_not_json_is_bad_json(text: str) -> None:
    assert error_code(parse_frame(text, None, max_chars=LIMIT)) == "bad_json"


def test_bad_json_error_event_shape() -> None:
    result = parse_frame("{", None, max_chars=LIMIT)
    assert isinstance(result, ProtocolError)
    event = result.as_event()
    assert event["type"] == "error"
    assert event["code"] == "bad_json"
    assert isinstance(event["detail"], str)
    assert "retry_after" not in event


# -- bad_frame ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b'{"message": "hi"}', b"\x00\xff"])
def test_binary_frames_are_bad_frames(data: bytes) -> None:
    assert error_code(parse_frame(None, data, max_chars=LIMIT)) == "bad_frame"


@pytest.mark.parametrize("text", ["[]", '["message", "hi"]', '"hi"', "42", "1.5", "true", "null"])
def test_json_that_is_not_an_object_is_a_bad_frame(text: str) -> None:
    assert error_code(parse_frame(text, None, max_chars=LIMIT)) == "bad_frame"


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"client_id": "x"},
        {"type": None, "message": "hi"},
        {"type": 5},
        {"type": ["message"], "message": "hi"},
        {"type": True},
        # wrong field types in a post
        {"message": 5},
        {"message": None},
        {"message": ["hi"]},
        {"message": {"text": "hi"}},
        {"message": True},
        {"type": "message"},
        {"type": "message", "message": 1.5},
        {"message": "hi", "client_id": 5},
        {"message": "hi", "client_id": ["a"]},
        {"message": "hi", "client_id": True},
        {"message": "hi", "client_id": {"id": "a"}},
        # wrong field types in history
        {"type": "history", "before": "5"},
        {"type": "history", "before": 5.0},
        {"type": "history", "before": True},
        {"type": "history", "before": 0},
        {"type": "history", "before": -3},
        {"type": "history", "limit": "10"},
        {"type": "history", "limit": 10.0},
        {"type": "history", "limit": True},
        {"type": "history", "limit": None},
        {"type": "history", "limit": 0},
        {"type": "history", "limit": -1},
        {"type": "history", "before": [1]},
    ],
)
def test_fields_of_the_wrong_type_are_bad_frames(obj: dict[str, Any]) -> None:
    assert error_code(parse(obj)) == "bad_frame"


def test_client_id_of_64_characters_is_accepted() -> None:
    result = parse({"message": "hi", "client_id": "c" * 64})
    assert result == PostFrame(message="hi", client_id="c" * 64)


@pytest.mark.parametrize("length", [65, 66, 1000])
def test_client_id_over_64_characters_is_a_bad_frame(length: int) -> None:
    assert error_code(parse({"message": "hi", "client_id": "c" * length})) == "bad_frame"


def test_client_id_limit_counts_characters_not_bytes() -> None:
    assert parse({"message": "hi", "client_id": "é" * 64}) == PostFrame("hi", "é" * 64)
    assert error_code(parse({"message": "hi", "client_id": "é" * 65})) == "bad_frame"


def test_empty_client_id_is_a_string_up_to_64_characters() -> None:
    assert parse({"message": "hi", "client_id": ""}) == PostFrame(message="hi", client_id="")


@pytest.mark.parametrize(
    "obj",
    [
        {"message": "hi", "room": "lobby"},
        {"message": "hi", "Client_id": "x"},
        {"message": "hi", "clientId": "x"},
        {"type": "message", "message": "hi", "user": "mallory"},
        {"type": "typing", "user": "bob"},
        {"type": "typing", "message": "hi"},
        {"type": "ping", "id": 1},
        {"type": "ping", "message": "hi"},
        {"type": "history", "before": 5, "limit": 10, "after": 2},
        {"type": "history", "message": "hi"},
    ],
)
def test_extra_fields_are_bad_frames(obj: dict[str, Any]) -> None:
    assert error_code(parse(obj)) == "bad_frame"


def test_extra_field_detail_names_the_field() -> None:
    result = parse({"message": "hi", "colour": "red"})
    assert isinstance(result, ProtocolError)
    assert "colour" in result.detail


# -- unknown_type -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["", "Message", "MESSAGE", "pong", "presence", "error", "join", "typing ", "x" * 10_000]
)
def test_unknown_types(kind: str) -> None:
    result = parse({"type": kind})
    assert error_code(result) == "unknown_type"
    assert isinstance(result, ProtocolError)
    assert len(result.detail) < 200, "the detail does not echo a huge type back"


def test_unknown_type_wins_over_other_fields() -> None:
    assert error_code(parse({"type": "shout", "message": "hi"})) == "unknown_type"


# -- empty_message / too_long -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   ", "\n", "\t\r\n ", "\u3000", "\u00a0\u2003"])
def test_empty_and_whitespace_only_messages(text: str) -> None:
    assert error_code(parse({"message": text})) == "empty_message"
    assert error_code(parse({"type": "message", "message": text, "client_id": "a"})) == "empty_message"


def test_message_at_the_limit_is_accepted() -> None:
    assert parse({"message": "x" * LIMIT}) == PostFrame(message="x" * LIMIT, client_id=None)


def test_message_over_the_limit_is_too_long() -> None:
    result = parse({"message": "x" * (LIMIT + 1)})
    assert error_code(result) == "too_long"


@pytest.mark.parametrize("max_chars", [1, 10, 4000, 100_000])
def test_too_long_boundary_follows_max_chars(max_chars: int) -> None:
    assert isinstance(parse({"message": "y" * max_chars}, max_chars=max_chars), PostFrame)
    assert error_code(parse({"message": "y" * (max_chars + 1)}, max_chars=max_chars)) == "too_long"


def test_limit_counts_characters_not_bytes() -> None:
    text = "é" * 10
    assert parse({"message": text}, max_chars=10) == PostFrame(text, None)
    assert error_code(parse({"message": text + "é"}, max_chars=10)) == "too_long"


def test_leading_and_trailing_spaces_count_towards_the_limit() -> None:
    assert error_code(parse({"message": " " * 5 + "x" + " " * 5}, max_chars=10)) == "too_long"


def test_validate_message_is_shared_with_http() -> None:
    assert protocol.validate_message("hi", 2) is None
    err = protocol.validate_message("hi!", 2)
    assert err is not None and err.code == "too_long"
    err = protocol.validate_message("  ", 2)
    assert err is not None and err.code == "empty_message"


# -- valid frames -------------------------------------------------------------------------------


def test_plain_tutorial_post() -> None:
    assert parse({"message": "hello"}) == PostFrame(message="hello", client_id=None)


def test_post_with_type_and_client_id() -> None:
    result = parse({"type": "message", "message": "hello", "client_id": "abc-1"})
    assert result == PostFrame(message="hello", client_id="abc-1")


def test_post_with_null_client_id() -> None:
    assert parse({"message": "hello", "client_id": None}) == PostFrame("hello", None)


def test_post_keeps_the_text_exactly() -> None:
    text = "  spaced \n lines \u2603 <b>html</b> "
    assert parse({"message": text}) == PostFrame(text, None)


def test_post_from_raw_text_with_unicode_escapes() -> None:
    result = parse_frame('{"message": "caf\\u00e9 \\ud83d\\ude00"}', None, max_chars=LIMIT)
    assert result == PostFrame("café 😀", None)


def test_typing() -> None:
    assert parse({"type": "typing"}) == TypingFrame()


def test_ping() -> None:
    assert parse({"type": "ping"}) == PingFrame()


def test_history_defaults() -> None:
    assert parse({"type": "history"}) == HistoryFrame(before=None, limit=50)
    assert protocol.HISTORY_DEFAULT_LIMIT == 50


def test_history_with_before_and_limit() -> None:
    assert parse({"type": "history", "before": 10, "limit": 5}) == HistoryFrame(before=10, limit=5)


def test_history_before_null_means_newest() -> None:
    assert parse({"type": "history", "before": None, "limit": 3}) == HistoryFrame(None, 3)


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, 1), (199, 199), (200, 200), (201, 200), (10_000, 200), (10**30, 200)]
)
def test_history_limit_is_capped_at_200(limit: int, expected: int) -> None:
    assert parse({"type": "history", "before": 7, "limit": limit}) == HistoryFrame(7, expected)


# -- room names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "lobby", "Room_1-x", "0", "-", "_", "z" * 64])
def test_valid_room_names(name: str) -> None:
    assert valid_room_name(name)


@pytest.mark.parametrize(
    "name", ["", "z" * 65, "a b", "a/b", "a.b", "café", "a\tb", " lobby", "lobby ", "../x", "a%20b"]
)
def test_invalid_room_names(name: str) -> None:
    assert not valid_room_name(name)


def test_room_name_with_a_trailing_newline_is_invalid() -> None:
    assert not valid_room_name("lobby\n")


# -- parse_after --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", None),
        (b"x=1", None),
        (b"after=", None),
        (b"after=0", 0),
        (b"after=7", 7),
        (b"after=007", 7),
        (b"foo=bar&after=42", 42),
        (b"after=1&after=5", 5),
        (b"after=" + b"9" * 18, 10**18 - 1),
    ],
)
def test_parse_after_valid(query: bytes, expected: int | None) -> None:
    assert parse_after(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        b"after=-1",
        b"after=abc",
        b"after=1.5",
        b"after=1e3",
        b"after=%20",
        b"after=+3",
        b"after=0x10",
        b"after=" + b"9" * 19,
        b"after=\xff",
        b"after=%FF",
    ],
)
def test_parse_after_invalid(query: bytes) -> None:
    assert error_code(parse_after(query)) == "bad_frame"


def test_parse_after_non_ascii_digit_is_refused_not_raised() -> None:
    assert error_code(parse_after(b"after=%C2%B2")) == "bad_frame"


# -- rate limiting ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_bucket_allows_a_burst_of_20_then_refuses_with_a_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    assert [bucket.take(clock.now) for _ in range(20)] == [0.0] * 20
    wait = bucket.take(clock.now)
    assert wait == pytest.approx(0.1)
    # Still refused just before the wait is over, allowed once it is.
    assert bucket.take(clock.advance(0.05)) > 0
    assert bucket.take(clock.advance(0.06)) == 0.0


def test_every_refused_take_reports_a_positive_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    for _ in range(20):
        bucket.take(clock.now)
    waits = [bucket.take(clock.now) for _ in range(5)]
    assert all(w > 0 for w in waits)


def test_refused_takes_do_not_consume_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    for _ in range(20):
        bucket.take(clock.now)
    for _ in range(100):
        assert bucket.take(clock.now) > 0
    assert bucket.take(clock.advance(0.1 + 1e-9)) == 0.0


def test_sustained_10_per_second_is_never_refused() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    refused = [i for i in range(6000) if bucket.take(clock.advance(0.1))]
    assert refused == []


def test_sustained_10_per_second_at_a_large_monotonic_offset_is_never_refused() -> None:
    clock = FakeClock(start=1_234_567.891)
    bucket = TokenBucket(10.0, 20.0, clock.now)
    refused = [i for i in range(6000) if bucket.take(clock.advance(0.1))]
    assert refused == []


def test_burst_refills_after_an_idle_period() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    for _ in range(20):
        bucket.take(clock.now)
    clock.advance(60.0)  # long idle: refills to the burst, not beyond
    assert [bucket.take(clock.now) for _ in range(20)] == [0.0] * 20
    assert bucket.take(clock.now) > 0


def test_clock_going_backwards_does_not_add_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    for _ in range(20):
        bucket.take(clock.now)
    assert bucket.take(clock.now - 5.0) > 0


def test_bursts_of_20_every_2_seconds_are_allowed() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    for _ in range(30):
        assert [bucket.take(clock.now) for _ in range(20)] == [0.0] * 20
        clock.advance(2.0)


def test_burst_of_20_then_sustained_10_per_second_is_never_refused() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock.now)
    assert [bucket.take(clock.now) for _ in range(20)] == [0.0] * 20
    refused = [i for i in range(6000) if bucket.take(clock.advance(0.1))]
    assert refused == []


@pytest.mark.parametrize(
    ("wait", "expected"),
    [(0.0, 0.1), (1e-9, 0.1), (0.05, 0.1), (0.1, 0.1), (0.11, 0.2), (0.25, 0.3), (1.0, 1.0), (2.31, 2.4)],
)
def test_rate_limited_retry_after_rounds_up_to_tenths(wait: float, expected: float) -> None:
    error = rate_limited(wait)
    assert error.code == "rate_limited"
    assert error.retry_after == pytest.approx(expected)
    assert error.retry_after is not None and error.retry_after >= wait
    event = error.as_event()
    assert event["type"] == "error"
    assert event["code"] == "rate_limited"
    assert event["retry_after"] == error.retry_after
    assert isinstance(event["detail"], str) and event["detail"]


def test_rate_limited_retry_after_is_at_least_the_bucket_wait() -> None:
    bucket = TokenBucket(10.0, 20.0, 0.0)
    for _ in range(20):
        bucket.take(0.0)
    wait = bucket.take(0.0)
    error = rate_limited(wait)
    assert error.retry_after is not None
    assert error.retry_after >= wait
    assert bucket.take(error.retry_after) == 0.0, "retrying after retry_after succeeds"


def test_rate_limited_event_is_json_serialisable() -> None:
    event = rate_limited(0.34).as_event()
    assert json.loads(json.dumps(event)) == event
