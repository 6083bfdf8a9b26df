"""Waking workers when a job is queued: a Redis list (BLPOP) across processes, a threading.Event
for the in-process worker of the embedded default. A lost wake-up only costs the poll interval:
workers also look for work every few seconds (and for jobs whose worker died)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

KEY = "hubbub:conversions:wake"
_local = threading.Event()
_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        from hubbub.redisconn import sync_primary

        # The primary: the only server, the first shard, or the Sentinels' current master.
        target = settings.HUBBUB_REDIS
        assert target is not None
        _client = sync_primary(target, socket_connect_timeout=2, socket_timeout=5)
    return _client


def notify() -> None:
    _local.set()
    if settings.HUBBUB_REDIS is not None:
        try:
            pipe = _redis().pipeline()
            pipe.lpush(KEY, 1)
            pipe.ltrim(KEY, 0, 99)
            pipe.execute()
        except Exception as exc:
            log.warning("cannot wake workers through Redis (they poll): %r", exc)


def wait(timeout: float) -> None:
    """Block until woken or ``timeout`` seconds pass."""
    if settings.HUBBUB_REDIS is not None:
        try:
            _redis().blpop([KEY], timeout=max(1, int(timeout)))
            return
        except Exception as exc:
            log.debug("wake-up wait failed: %r", exc)
    _local.wait(timeout)
    _local.clear()
