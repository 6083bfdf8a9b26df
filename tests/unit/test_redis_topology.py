"""REDIS_URL's extensions (docs/deployment.md): a comma-separated list of shards and a Sentinel
URL. Parsed by ``hubbub.config``; turned into the channel layer's ``hosts`` by
``hubbub.redisconn.layer_hosts``, which channels_redis' own ``create_pool`` must accept."""

from __future__ import annotations

from pathlib import Path

import pytest
from channels_redis.utils import _consistent_hash, create_pool, decode_hosts
from redis.asyncio.sentinel import SentinelConnectionPool

from hubbub import config
from hubbub.config import ConfigError, RedisTarget
from hubbub.redisconn import describe, layer_hosts


def target(tmp_path: Path, url: str) -> RedisTarget:
    cfg = config.load({"HUBBUB_DATA_DIR": str(tmp_path / "data"), "REDIS_URL": url})
    assert cfg.redis_url == url.strip()
    assert cfg.redis is not None
    return cfg.redis


def error(tmp_path: Path, url: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.load({"HUBBUB_DATA_DIR": str(tmp_path / "data"), "REDIS_URL": url})
    message = str(info.value)
    assert message.startswith("REDIS_URL: ") and "\n" not in message, message
    return message


def test_a_single_url_is_exactly_as_before(tmp_path: Path) -> None:
    t = target(tmp_path, "redis://127.0.0.1:6379/3")
    assert t.mode == "single" and t.urls == ("redis://127.0.0.1:6379/3",)
    hosts = layer_hosts(t)
    assert len(hosts) == 1 and hosts[0]["address"] == "redis://127.0.0.1:6379/3"
    assert hosts[0]["socket_timeout"] == 2


def test_a_list_is_one_shard_per_url_in_order(tmp_path: Path) -> None:
    t = target(tmp_path, "redis://a:6379/0, redis://b:6380/1,rediss://:pw@c:6381/0")
    assert t.mode == "sharded"
    assert t.urls == ("redis://a:6379/0", "redis://b:6380/1", "rediss://:pw@c:6381/0")
    hosts = layer_hosts(t)
    assert [h["address"] for h in hosts] == list(t.urls)
    assert [describe(t, i) for i in range(3)] == ["a:6379", "b:6380", "c:6381"]
    # channels_redis takes the list as is, and spreads rooms over every entry.
    assert decode_hosts(hosts) == hosts
    groups = [f"hubbub__group__room.r{i}" for i in range(200)]
    assert {_consistent_hash(g, len(hosts)) for g in groups} == {0, 1, 2}


def test_sentinel_url_names_sentinels_master_and_db(tmp_path: Path) -> None:
    t = target(tmp_path, "redis+sentinel://:s3cret@s1:26379,s2,[::1]:26380/mymaster/2")
    assert t.mode == "sentinel"
    assert t.sentinels == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (t.master_name, t.db, t.password, t.username) == ("mymaster", 2, "s3cret", None)
    assert "s3cret" not in describe(t)
    (host,) = layer_hosts(t)
    # channels_redis' create_pool recognises the entry as a Sentinel one.
    pool = create_pool(host)
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["socket_timeout"] == 2


def test_sentinel_db_defaults_to_zero(tmp_path: Path) -> None:
    t = target(tmp_path, "redis+sentinel://10.0.0.1:26379/hubbub")
    assert (t.master_name, t.db, t.password) == ("hubbub", 0, None)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://a:6379/0,", "empty entry"),
        ("redis://a:6379/0,,redis://b:6379/0", "empty entry"),
        ("redis://a:6379/0,redis://a:6379/0", "listed twice"),
        ("redis://a:6379/0,http://b:6379/0", "expected redis://"),
        ("redis://a:6379/0,redis://b:port/0", "malformed port"),
        ("redis://a:6379/0,redis://b:6379/x", "must be a number"),
        ("redis://a:6379/0,redis+sentinel://s:26379/m", "cannot be one shard"),
        ("redis+sentinel://", "no Sentinel host"),
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1:notaport/m", "malformed Sentinel port"),
        ("redis+sentinel://s1:99999/m", "malformed Sentinel port"),
        ("redis+sentinel://s1,,s2/m", "without a host"),
        ("redis+sentinel://s1,s1/m", "listed twice"),
        ("redis+sentinel://s1/m/x", "must be a number"),
        ("redis+sentinel://s1/m/0/extra", "expected /master-name/db"),
        ("redis+sentinel://s1/m?ssl=true", "no ?options"),
        ("redis+sentinel://[::1/m", "malformed Sentinel address"),
        ("redis+sentinel://s1/bad name!", "white space"),
        ("redis+sentinel://s1/bad!name", "malformed master name"),
    ],
)
def test_malformed_values_are_one_line_errors(tmp_path: Path, url: str, says: str) -> None:
    message = error(tmp_path, url)
    assert says in message, message

