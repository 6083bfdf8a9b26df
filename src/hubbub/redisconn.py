"""Connections to Redis for every topology that ``REDIS_URL`` can name (config.RedisTarget).

* The channel layer (channels_redis' ``RedisPubSubChannelLayer``) gets one ``hosts`` entry per
  shard, or one Sentinel entry; see :func:`layer_hosts`.
* The direct uses (the conversion wake-up list, readiness) talk to the *primary*: the only server
  of a single URL, the first URL of a sharded list, the current master of a Sentinel set.
* Readiness (:func:`check`) needs every server that carries rooms: each shard, or the master that
  the Sentinels name at this moment.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from hubbub.config import RedisTarget

# redis-py >= 6 changed its defaults; these are chosen (settings.py explains the layer's).
LAYER_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 2,
    "health_check_interval": 15,
}
SENTINEL_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 1}


def layer_hosts(target: RedisTarget) -> list[dict[str, Any]]:
    """The channel layer's ``hosts``: channels_redis hashes each group name (one per room) to one
    entry of this list, in this order (``channels_redis.utils._consistent_hash``)."""
    if target.mode == "sentinel":
        return [{
            "master_name": target.master_name,
            "sentinels": [list(s) for s in target.sentinels],
            "sentinel_kwargs": dict(SENTINEL_OPTIONS),
            "db": target.db,
            "username": target.username,
            "password": target.password,
            **LAYER_OPTIONS,
        }]
    return [{"address": url, **LAYER_OPTIONS} for url in target.urls]


def describe(target: RedisTarget, index: int = 0) -> str:
    """A shard or Sentinel set named without its password (for logs and /readyz)."""
    if target.mode == "sentinel":
        where = ",".join(f"{h}:{p}" for h, p in target.sentinels)
        return f"sentinel master {target.master_name!r} via {where}"
    parts = urlsplit(target.urls[index])
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def sync_primary(target: RedisTarget, *, socket_timeout: float, socket_connect_timeout: float = 2) -> Any:
    """A blocking redis-py client for the primary."""
    import redis
    from redis.sentinel import Sentinel

    if target.mode == "sentinel":
        sentinel = Sentinel([tuple(s) for s in target.sentinels], sentinel_kwargs=dict(SENTINEL_OPTIONS))
        return sentinel.master_for(
            target.master_name, db=target.db, username=target.username, password=target.password,
            socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout,
        )
    return redis.Redis.from_url(target.urls[0], socket_timeout=socket_timeout,
                                socket_connect_timeout=socket_connect_timeout)


def async_clients(target: RedisTarget, *, timeout: float) -> list[tuple[str, Any]]:
    """One asyncio client per server that carries rooms, each with its description."""
    from redis import asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel

    if target.mode == "sentinel":
        sentinel = Sentinel([tuple(s) for s in target.sentinels], sentinel_kwargs=dict(SENTINEL_OPTIONS))
        client = sentinel.master_for(
            target.master_name, db=target.db, username=target.username, password=target.password,
            socket_timeout=timeout, socket_connect_timeout=timeout,
        )
        return [(describe(target), client)]
    return [
        (describe(target, i), aioredis.Redis.from_url(url, socket_timeout=timeout,
                                                       socket_connect_timeout=timeout))
        for i, url in enumerate(target.urls)
    ]


class Checker:
    """Readiness of the channel layer's Redis: every shard answers PING, or the Sentinels name a
    master and it answers. Clients are made once and kept (they reconnect by themselves)."""

    def __init__(self, target: RedisTarget, timeout: float = 1.0) -> None:
        self.target = target
        self.clients = async_clients(target, timeout=timeout)

    async def check(self) -> str:
        results = await asyncio.gather(*(self._ping(client) for _, client in self.clients),
                                       return_exceptions=True)
        failed = [(name, r) for (name, _), r in zip(self.clients, results, strict=True)
                  if isinstance(r, BaseException)]
        if failed:
            shown = "; ".join(f"{name}: {type(exc).__name__}" for name, exc in failed)
            if self.target.mode == "sharded":
                return f"unreachable: {len(failed)} of {len(self.clients)} shards ({shown})"
            if self.target.mode == "sentinel":
                return f"unreachable: {shown}"
            return f"unreachable: {type(failed[0][1]).__name__}"  # as before the extensions
        if self.target.mode == "sharded":
            return f"ok ({len(self.clients)} shards)"
        if self.target.mode == "sentinel":
            pool = self.clients[0][1].connection_pool
            host, port = pool.master_address or ("?", 0)
            return f"ok (sentinel master {self.target.master_name!r} at {host}:{port})"
        return "ok"

    async def _ping(self, client: Any) -> None:
        if self.target.mode == "sentinel":
            # Ask the Sentinels who the master is now (this also drops idle connections to a
            # demoted one), so a replica answering PING does not count as ready.
            await client.connection_pool.get_master_address()
        await client.ping()
