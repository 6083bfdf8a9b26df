"""Fixtures that start real processes. Each stops what it started."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live.servers import HubbubServer, RedisServer, new_data_dir, postgres_database, redis_for_tests


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = new_data_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Cluster:
    """Two `hubbub serve` instances sharing one Redis and one PostgreSQL database."""

    a: HubbubServer
    b: HubbubServer
    redis: RedisServer | None
    redis_url: str
    database_url: str

    @property
    def servers(self) -> list[HubbubServer]:
        return [self.a, self.b]


@pytest.fixture
def cluster(data_dir: Path) -> Iterator[Cluster]:
    with redis_for_tests(data_dir) as (redis_url, redis), postgres_database() as database_url:
        env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
        a = HubbubServer(data_dir / "a", env, name="a")
        b = HubbubServer(data_dir / "b", env, name="b")
        a.start(wait=False)
        b.start(wait=False)  # both migrate an empty database at once
        try:
            a.wait_ready()
            b.wait_ready()
            yield Cluster(a, b, redis, redis_url, database_url)
        finally:
            a.stop()
            b.stop()


@pytest.fixture
def embedded(data_dir: Path) -> Iterator[HubbubServer]:
    """One `hubbub serve` with no settings but its data dir: SQLite, in-memory layer."""
    server = HubbubServer(data_dir / "embedded", name="embedded")
    server.start()
    yield server
    server.stop()
