"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from hubbub import metrics

CHECK_TIMEOUT = 2.0
_redis_checker: Any = None


async def livez(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _db_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _redis_check() -> str:
    """"ok" or "ok (...)" when every Redis server that carries rooms answers (each shard, or the
    master the Sentinels name now); else "unreachable: ..." naming which, without passwords."""
    global _redis_checker
    if _redis_checker is None:
        from hubbub.redisconn import Checker

        target = settings.HUBBUB_REDIS
        assert target is not None
        _redis_checker = Checker(target, timeout=1.0)
    result: str = await _redis_checker.check()
    return result


async def readyz(request: HttpRequest) -> HttpResponse:
    """503 while the database or the channel layer (Redis) cannot be reached."""
    checks: dict[str, str] = {}
    try:
        # Not thread_sensitive: a database thread stuck on a dead server must not hold this up.
        await asyncio.wait_for(sync_to_async(_db_ping, thread_sensitive=False)(), CHECK_TIMEOUT)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if settings.HUBBUB_REDIS is not None:
        try:
            checks["channel_layer"] = await asyncio.wait_for(_redis_check(), CHECK_TIMEOUT)
        except Exception as exc:
            checks["channel_layer"] = f"unreachable: {type(exc).__name__}"
    else:
        checks["channel_layer"] = "ok (in-memory)"
    ready = all(v.startswith("ok") for v in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status=200 if ready else 503)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
