"""The chat protocol core: frames in, typed values out. Pure: no Django, no sockets, no I/O.

A client frame is parsed into one of the frame classes below or into a :class:`ProtocolError`
that names the contract's error code. Every shape the contract does not list is refused, so a
typo in a field name is an error the client sees instead of a field silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

ROOM_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ID = 2**63 - 1  # ids are 64-bit in the database
SUBPROTOCOL = "hubbub.v1"
MAX_CLIENT_ID = 64
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 200

# WebSocket close codes used at connect time (4xxx: application codes, like HTTP statuses).
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455 registry: sent to a socket that cannot keep up


@dataclass(frozen=True, slots=True)
class PostFrame:
    message: str
    client_id: str | None


@dataclass(frozen=True, slots=True)
class TypingFrame:
    pass


@dataclass(frozen=True, slots=True)
class PingFrame:
    pass


@dataclass(frozen=True, slots=True)
class HistoryFrame:
    before: int | None
    limit: int


Frame = PostFrame | TypingFrame | PingFrame | HistoryFrame


@dataclass(frozen=True, slots=True)
class ProtocolError:
    code: str
    detail: str
    retry_after: float | None = None

    def as_event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "error", "code": self.code, "detail": self.detail}
        if self.retry_after is not None:
            event["retry_after"] = self.retry_after
        return event


_ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    "message": frozenset({"type", "message", "client_id"}),
    "typing": frozenset({"type"}),
    "ping": frozenset({"type"}),
    "history": frozenset({"type", "before", "limit"}),
}


def _has_lone_surrogate(text: str) -> bool:
    """JSON's ``\\ud800`` escapes decode to lone surrogates: a Python string, but not Unicode text.
    No database and no UTF-8 encoder accepts them, so they are refused like NUL (found by fuzzing:
    they were a server_error on the socket and a 500 over HTTP)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def valid_room_name(name: str) -> bool:
    return ROOM_NAME_RE.fullmatch(name) is not None


def validate_message(text: str, max_chars: int) -> ProtocolError | None:
    """The checks every post gets, over a socket or over HTTP."""
    if text.strip() == "":
        return ProtocolError("empty_message", "the message is empty")
    if "\x00" in text:
        # PostgreSQL text cannot hold NUL; refuse it the same way on every database.
        return ProtocolError("bad_frame", "the message contains a NUL character")
    if _has_lone_surrogate(text):
        return ProtocolError("bad_frame", "the message contains a lone surrogate (not valid Unicode)")
    if len(text) > max_chars:
        return ProtocolError(
            "too_long", f"the message has {len(text)} characters; the limit is {max_chars}"
        )
    return None


def validate_client_id(value: object) -> ProtocolError | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return ProtocolError("bad_frame", "client_id must be a string")
    if len(value) > MAX_CLIENT_ID:
        return ProtocolError("bad_frame", f"client_id must be at most {MAX_CLIENT_ID} characters")
    if "\x00" in value:
        return ProtocolError("bad_frame", "client_id contains a NUL character")
    if _has_lone_surrogate(value):
        return ProtocolError("bad_frame", "client_id contains a lone surrogate (not valid Unicode)")
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_frame(
    text: str | None, data: bytes | None, *, max_chars: int
) -> Frame | ProtocolError:
    """Parse one client frame (``text`` for a text frame, ``data`` for a binary one)."""
    if text is None:
        return ProtocolError("bad_frame", "binary frames are not accepted; send JSON text")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return ProtocolError("bad_json", "the frame is not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolError("bad_frame", "the frame must be a JSON object")
    kind = obj.get("type", "message" if "message" in obj else None)
    if kind is None:
        return ProtocolError("bad_frame", "the frame has neither 'type' nor 'message'")
    if not isinstance(kind, str):
        return ProtocolError("bad_frame", "'type' must be a string")
    allowed = _ALLOWED_FIELDS.get(kind)
    if allowed is None:
        return ProtocolError(
            "unknown_type", f"unknown type {kind[:40]!r}; expected message, typing, ping or history"
        )
    extra = set(obj) - allowed
    if extra:
        return ProtocolError("bad_frame", f"unexpected field {sorted(extra)[0][:40]!r} in {kind}")

    if kind == "message":
        message = obj.get("message")
        if not isinstance(message, str):
            return ProtocolError("bad_frame", "'message' must be a string")
        client_id = obj.get("client_id")
        error = validate_client_id(client_id)
        if error is not None:
            return error
        error = validate_message(message, max_chars)
        if error is not None:
            return error
        return PostFrame(message=message, client_id=client_id)
    if kind == "typing":
        return TypingFrame()
    if kind == "ping":
        return PingFrame()
    # history
    before = obj.get("before")
    if before is not None and (not _is_int(before) or not 1 <= before <= MAX_ID):
        return ProtocolError("bad_frame", "'before' must be a positive integer")
    limit = obj.get("limit", HISTORY_DEFAULT_LIMIT)
    if not _is_int(limit) or limit < 1:
        return ProtocolError("bad_frame", "'limit' must be a positive integer")
    return HistoryFrame(before=before, limit=min(limit, HISTORY_MAX_LIMIT))


def parse_after(query_string: bytes) -> int | ProtocolError | None:
    """The ``after`` catch-up parameter of the socket URL, if any."""

    try:
        params = parse_qs(query_string.decode("ascii"), strict_parsing=False)
    except UnicodeDecodeError:
        return ProtocolError("bad_frame", "the query string is not ASCII")
    values = params.get("after")
    if not values:
        return None
    raw = values[-1]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return ProtocolError("bad_frame", "'after' must be a non-negative integer")
    return int(raw)


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    The clock is passed in so the bucket stays pure and testable.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token. Returns 0.0 on success, else the seconds until one is available."""
        elapsed = max(0.0, now - self.stamp)
        self.stamp = now
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0 - 1e-9:  # float rounding must not refuse an on-time frame
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


def rate_limited(wait: float) -> ProtocolError:
    retry_after = math.ceil(wait * 10) / 10  # tenths of a second, never 0
    return ProtocolError(
        "rate_limited", f"too many frames; retry in {retry_after} s", retry_after=max(retry_after, 0.1)
    )
