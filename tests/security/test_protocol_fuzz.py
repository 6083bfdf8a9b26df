"""Property-based fuzzing of the pure protocol core (src/hubbub/realtime/protocol.py).

Whatever a client sends, ``parse_frame`` returns a frame or a :class:`ProtocolError` carrying one
of the codes of CONTRACT.md §4: it never raises, and what it accepts satisfies every rule the
consumer and the database rely on (a storable, non-blank message within the limit; a client_id of
at most 64 characters; history bounds). ``parse_after``, ``valid_room_name`` and ``TokenBucket``
get the same treatment.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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
    valid_room_name,
)

# The error codes parse_frame may give (CONTRACT.md §4); rate_limited, forbidden and server_error
# come from the consumer, never from parsing.
PARSE_CODES = {"bad_json", "bad_frame", "unknown_type", "empty_message", "too_long"}
FIELDS = ["type", "message", "client_id", "before", "limit"]
TYPES = ["message", "typing", "ping", "history"]

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates included: JSON's \\ud800 escapes decode to them (st.text() leaves
# them out by default, and they were a real server_error before protocol.py refused them).
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=80)
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | any_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                      max_size=4),
    max_leaves=12,
)
# Objects shaped like frames: the real field names (and some others) with values of any type,
# and "type" drawn mostly from the real types.
frame_like = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=12),
    json_values | st.sampled_from(TYPES) | st.text(alphabet=string.printable, max_size=5000),
    max_size=5,
)


def check(result: Any, max_chars: int) -> None:
    """What every answer of parse_frame must satisfy."""
    if isinstance(result, ProtocolError):
        assert result.code in PARSE_CODES, result
        assert isinstance(result.detail, str) and result.detail
        event = result.as_event()
        assert event["type"] == "error" and event["code"] == result.code
        json.dumps(event).encode("utf-8")  # it can be sent
        return
    assert isinstance(result, PostFrame | TypingFrame | PingFrame | HistoryFrame), result
    if isinstance(result, PostFrame):
        assert isinstance(result.message, str) and result.message.strip()
        assert len(result.message) <= max_chars
        result.message.encode("utf-8")  # storable in any database, sendable over the socket
        assert "\x00" not in result.message
        if result.client_id is not None:
            assert isinstance(result.client_id, str) and len(result.client_id) <= protocol.MAX_CLIENT_ID
            result.client_id.encode("utf-8")
            assert "\x00" not in result.client_id
    if isinstance(result, HistoryFrame):
        assert 1 <= result.limit <= protocol.HISTORY_MAX_LIMIT
        assert result.before is None or 1 <= result.before <= protocol.MAX_ID


@FUZZ
@given(text=st.text(any_char, max_size=2000), max_chars=st.integers(1, 5000))
def test_any_text_is_a_frame_or_a_documented_error(text: str, max_chars: int) -> None:
    check(parse_frame(text, None, max_chars=max_chars), max_chars)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_any_binary_frame_is_bad_frame(data: bytes) -> None:
    result = parse_frame(None, data, max_chars=4000)
    assert isinstance(result, ProtocolError) and result.code == "bad_frame"


@FUZZ
@given(value=json_values)
def test_any_json_value_is_a_frame_or_a_documented_error(value: Any) -> None:
    text = json.dumps(value)
    result = parse_frame(text, None, max_chars=4000)
    check(result, 4000)
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError) and result.code == "bad_frame"


@FUZZ
@given(obj=frame_like, max_chars=st.integers(1, 4000))
def test_frame_shaped_objects_are_a_frame_or_a_documented_error(obj: dict[str, Any], max_chars: int) -> None:
    result = parse_frame(json.dumps(obj), None, max_chars=max_chars)
    check(result, max_chars)
    if not isinstance(result, ProtocolError):
        kind = obj.get("type", "message")
        assert set(obj) <= {"type", *protocol._ALLOWED_FIELDS[kind]}, obj  # no field slipped through
    if isinstance(result, PostFrame):
        assert result.message == obj["message"]


@FUZZ
@given(message=st.text(any_char, min_size=1, max_size=300),
       client_id=st.none() | st.text(any_char, max_size=64),
       explicit_type=st.booleans())
def test_valid_posts_keep_their_text_exactly_or_say_why_not(
    message: str, client_id: str | None, explicit_type: bool
) -> None:
    obj: dict[str, Any] = {"message": message, "client_id": client_id}
    if explicit_type:
        obj["type"] = "message"
    result = parse_frame(json.dumps(obj), None, max_chars=300)
    check(result, 300)
    storable = "\x00" not in message + (client_id or "")
    try:
        (message + (client_id or "")).encode("utf-8")
    except UnicodeEncodeError:
        storable = False
    if message.strip() and storable:
        assert result == PostFrame(message=message, client_id=client_id)
    else:
        assert isinstance(result, ProtocolError)
        assert result.code == ("empty_message" if not message.strip() else "bad_frame")


@FUZZ
@given(before=json_values, limit=json_values)
def test_history_bounds(before: Any, limit: Any) -> None:
    result = parse_frame(json.dumps({"type": "history", "before": before, "limit": limit}), None,
                         max_chars=4000)
    check(result, 4000)
    good_before = before is None or (type(before) is int and 1 <= before <= protocol.MAX_ID)
    good_limit = type(limit) is int and limit >= 1
    assert isinstance(result, HistoryFrame) == (good_before and good_limit), result


@FUZZ
@given(depth=st.integers(1, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_bad_json_or_a_frame_never_a_recursion_crash(depth: int, opener: str) -> None:
    text = opener * depth
    check(parse_frame(text, None, max_chars=4000), 4000)


@FUZZ
@given(parts=st.lists(st.sampled_from(
    ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\u0000", "\\u00", "\\x41", "\\", "\\n",
     '\\"', '"', "a", " ", "\u202e", "\ufeff", "\U0001f600", "\\uD800\\uDC00", "{", "}"]), max_size=30),
    field=st.sampled_from(["message", "client_id", "type"]))
def test_escape_soup_inside_a_string_field(parts: list[str], field: str) -> None:
    # Unicode escapes (lone and paired surrogates, NUL, broken escapes, bidi and BOM characters)
    # inside a string field, as raw JSON text.
    raw = "".join(parts)
    if field == "message":
        text = '{"message":"' + raw + '"}'
    else:
        text = '{"message":"hi","' + field + '":"' + raw + '"}'
    check(parse_frame(text, None, max_chars=4000), 4000)


@FUZZ
@given(digits=st.integers(4000, 20000))
def test_huge_numbers_are_refused_not_raised(digits: int) -> None:
    # Over Python's int-from-string limit (4300 digits) json.loads raises ValueError.
    check(parse_frame('{"type":"history","before":' + "9" * digits + "}", None, max_chars=4000), 4000)


# -- parse_after ------------------------------------------------------------------------------------


@FUZZ
@given(query=st.binary(max_size=300))
def test_any_query_string_gives_an_id_none_or_bad_frame(query: bytes) -> None:
    result = parse_after(query)
    if isinstance(result, ProtocolError):
        assert result.code == "bad_frame"
    else:
        assert result is None or (type(result) is int and 0 <= result < 10**18)


@FUZZ
@given(after=st.integers(0, 10**18 - 1), noise=st.text(alphabet="abc=&%x", max_size=20))
def test_after_round_trips_beside_other_parameters(after: int, noise: str) -> None:
    assume("after" not in noise)
    query = f"{noise}&after={after}".encode()
    assert parse_after(query) == after


# -- room names -------------------------------------------------------------------------------------

ROOM_CHARS = set(string.ascii_letters + string.digits + "_-")


@FUZZ
@given(name=st.text(max_size=80) | st.text(alphabet=[*sorted(ROOM_CHARS), "\n", "/", ".", " "], max_size=70))
def test_room_names_are_exactly_the_documented_pattern(name: str) -> None:
    assert valid_room_name(name) == (1 <= len(name) <= 64 and set(name) <= ROOM_CHARS)


# -- the token bucket -------------------------------------------------------------------------------


@FUZZ
@given(rate=st.floats(0.5, 100), burst=st.floats(1, 100),
       steps=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=200),
       start=st.floats(0, 1e9))
def test_the_bucket_never_lets_more_through_than_rate_and_burst(
    rate: float, burst: float, steps: list[float], start: float
) -> None:
    bucket = TokenBucket(rate, burst, start)
    now = start
    high = start  # the clock may go backwards (a jump): elapsed time never counts twice
    allowed = 0
    for step in steps:
        now += step
        high = max(high, now)
        wait = bucket.take(now)
        assert wait >= 0 and math.isfinite(wait)
        assert -1e-9 <= bucket.tokens <= burst + 1e-9
        if wait == 0:
            allowed += 1
        else:
            error = protocol.rate_limited(wait)
            assert error.code == "rate_limited" and error.retry_after is not None
            assert error.retry_after >= min(wait, 0.1) and error.retry_after >= 0.1
    # Safety: over the whole run, at most the burst plus what the rate earns (and one for rounding).
    forward = sum(max(0.0, s) for s in steps)
    assert allowed <= burst + rate * forward + 1


@FUZZ
@given(rate=st.floats(0.5, 100), burst=st.floats(1, 100), taken=st.integers(0, 300))
def test_a_refused_client_that_waits_retry_after_gets_through(rate: float, burst: float, taken: int) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for _ in range(taken):
        bucket.take(now)
    wait = bucket.take(now)
    if wait:
        retry_after = protocol.rate_limited(wait).retry_after
        assert retry_after is not None
        assert bucket.take(now + retry_after) == 0.0
