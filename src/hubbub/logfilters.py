"""Logging filters."""

from __future__ import annotations

import logging
import time


class OneLineRedisErrors(logging.Filter):
    """channels_redis logs a full traceback every second while Redis is unreachable. Turn each into
    one warning line, at most one every 10 s: an outage should be visible, not flood the log."""

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("channels_redis") or record.exc_info is None:
            return True
        now = time.monotonic()
        if now - self._last < 10:
            return False
        self._last = now
        exc = record.exc_info[1]
        record.msg = f"{record.getMessage()}: {exc!r} (Redis unreachable; retrying)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
