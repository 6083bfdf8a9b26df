"""Where a socket's database work runs.

Channels' ``database_sync_to_async`` runs every call in the one thread that also runs every
synchronous Django view, and before each call it runs ``close_old_connections()``, which with
``CONN_HEALTH_CHECKS`` costs a ``SELECT 1`` round trip per call. Profiled under load, one thread
serialised every post, every gap fill, every presence write and the watcher's queries
(docs/performance.md). Here:

* :func:`run` — the socket path (posts, fills, joins, history): a small pool of threads, each with
  its own long-lived connection (PostgreSQL; one thread on SQLite, whose writers serialise anyway).
  Posts to one room still serialise on the room row's lock, which is what keeps ids gapless; posts
  to different rooms and reads overlap.
* :func:`background` — the hub's housekeeping (presence heartbeats, the watcher): its own thread, so
  a heartbeat over thousands of rows never delays a post.

A connection is checked (and replaced when unusable or obsolete) at most every few seconds per
thread and after any database error, instead of on every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, close_old_connections

P = ParamSpec("P")
R = TypeVar("R")

CHECK_EVERY = 5.0  # seconds between connection checks in one thread
POOL_THREADS = 4

_local = threading.local()
_pools: dict[str, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(name: str) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            sqlite = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")
            threads = 1 if name == "background" or sqlite else POOL_THREADS
            pool = _pools[name] = ThreadPoolExecutor(threads, thread_name_prefix=f"hubbub-db-{name}")
        return pool


def _checked(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        now = time.monotonic()
        if now - getattr(_local, "checked", 0.0) > CHECK_EVERY:
            _local.checked = now
            close_old_connections()
        try:
            return func(*args, **kwargs)
        except DatabaseError:
            _local.checked = 0.0  # look at the connection before the next call
            close_old_connections()
            raise

    return call


def run(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``await run(f)(...)``: ``f`` in the socket-path pool."""
    return SyncToAsync(_checked(func), thread_sensitive=False, executor=_pool("sockets"))


def background(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``await background(f)(...)``: ``f`` in the housekeeping thread."""
    return SyncToAsync(_checked(func), thread_sensitive=False, executor=_pool("background"))
