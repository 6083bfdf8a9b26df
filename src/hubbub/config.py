"""The one place that reads the environment.

Every setting of CONTRACT.md §2 is read, cast strictly and validated here. A malformed value
raises :class:`ConfigError` whose message is one line naming the variable; the CLI prints it and
exits non-zero before Django starts. Nothing else in Hubbub reads ``os.environ`` (the Django
settings module builds on :func:`load`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit


class ConfigError(ValueError):
    """A setting has a malformed value. The message is one line and names the variable."""


@dataclass(frozen=True)
class Config:
    data_dir: Path
    database_url: str | None
    redis_url: str | None  # as given; see ``redis`` for what it means
    redis: RedisTarget | None
    secret_key: str
    allowed_hosts: tuple[str, ...]
    allow_guests: bool
    max_message_chars: int
    max_upload_mb: int
    debug: bool
    max_sockets_per_user: int = 50

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "hubbub.sqlite3"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _positive_int(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if not 1 <= value <= maximum:
        raise ConfigError(f"{name}: expected a number from 1 to {maximum}, got {value}")
    return value


def _split_url(name: str, url: str) -> SplitResult:
    # urlsplit silently drops tabs and newlines, and raises a bare ValueError on bad brackets.
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ConfigError(f"{name}: the URL contains white space or a control character")
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{name}: malformed URL {url!r} ({exc})") from None


def _database_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("DATABASE_URL")
    if raw is None or raw.strip() == "":
        return None
    url = raw.strip()
    parts = _split_url("DATABASE_URL", url)
    if parts.scheme in ("postgres", "postgresql"):
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ConfigError(f"DATABASE_URL: malformed port in {url!r}") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"DATABASE_URL: no host in {url!r}")
        if not parts.path.strip("/"):
            raise ConfigError(f"DATABASE_URL: no database name in {url!r}")
        return url
    if parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ConfigError(f"DATABASE_URL: expected sqlite:///path, got {url!r}")
        return url
    raise ConfigError(
        f"DATABASE_URL: expected postgres://user:pass@host:port/db or sqlite:///path, got {url!r}"
    )


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, from ``REDIS_URL`` (docs/deployment.md):

    * ``single``: one ``redis://host:port/db`` URL (the contract's form);
    * ``sharded``: a comma-separated list of such URLs. The channel layer spreads rooms over them
      by consistent hashing of the room's group name, so every process must list the same URLs
      in the same order; the first URL is the *primary*, which also holds the conversion
      wake-up list;
    * ``sentinel``: ``redis+sentinel://[:password@]host:port,host:port/master-name[/db]``: the
      master that the Sentinels name, followed across failovers.
    """

    mode: Literal["single", "sharded", "sentinel"]
    urls: tuple[str, ...] = ()  # single and sharded, in order
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_DEFAULT_PORT = 26379
_MASTER_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _one_redis_url(url: str, whole: str) -> str:
    parts = _split_url("REDIS_URL", url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "REDIS_URL: expected redis://host:port/db, a comma-separated list of them, or "
            f"redis+sentinel://host:port,host:port/master/db, got {whole!r}"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ConfigError(f"REDIS_URL: no host in {url!r}")
        try:
            parts.port  # noqa: B018
        except ValueError:
            raise ConfigError(f"REDIS_URL: malformed port in {url!r}") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"REDIS_URL: the database must be a number, got {db!r}")
    return url


def _sentinel_host(item: str, whole: str) -> tuple[str, int]:
    if item.startswith("["):  # [v6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"REDIS_URL: malformed Sentinel address {item!r} in {whole!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"REDIS_URL: a Sentinel address without a host in {whole!r}")
    if port_text == "":
        return host, SENTINEL_DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"REDIS_URL: malformed Sentinel port {port_text!r} in {whole!r}")
    return host, int(port_text)


def _sentinel_target(url: str) -> RedisTarget:
    rest = url[len(SENTINEL_SCHEME) + 3:]
    netloc, _, path = rest.partition("/")
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise ConfigError(f"REDIS_URL: a Sentinel URL takes no ?options or #fragment, got {url!r}")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    if not netloc:
        raise ConfigError(f"REDIS_URL: no Sentinel host:port in {url!r}")
    sentinels = tuple(_sentinel_host(item.strip(), url) for item in netloc.split(","))
    if len(set(sentinels)) != len(sentinels):
        raise ConfigError(f"REDIS_URL: a Sentinel is listed twice in {url!r}")
    segments = path.split("/") if path else []
    if segments and segments[-1] == "":
        segments.pop()
    if not segments or not segments[0]:
        raise ConfigError(f"REDIS_URL: no master name in {url!r} (redis+sentinel://host:port/master/db)")
    if len(segments) > 2:
        raise ConfigError(f"REDIS_URL: expected /master-name/db after the Sentinels, got {url!r}")
    master = unquote(segments[0])
    if not _MASTER_NAME_RE.fullmatch(master):
        raise ConfigError(f"REDIS_URL: malformed master name {master!r} in {url!r}")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigError(f"REDIS_URL: the database must be a number, got {segments[1]!r}")
        db = int(segments[1])
    return RedisTarget("sentinel", sentinels=sentinels, master_name=master, db=db,
                       username=username, password=password)


def _redis_target(env: Mapping[str, str]) -> tuple[str | None, RedisTarget | None]:
    raw = env.get("REDIS_URL")
    if raw is None or raw.strip() == "":
        return None, None
    url = raw.strip()
    if any(ord(c) < 33 or ord(c) == 127 for c in url.replace(", ", ",")):
        raise ConfigError("REDIS_URL: the URL contains white space or a control character")
    if url.lower().startswith(SENTINEL_SCHEME + "://"):
        return url, _sentinel_target(url)
    items = [item.strip() for item in url.split(",")]
    if len(items) == 1:
        return url, RedisTarget("single", urls=(_one_redis_url(url, url),))
    if any(not item for item in items):
        raise ConfigError(f"REDIS_URL: an empty entry in the list {url!r}")
    if any(item.lower().startswith(SENTINEL_SCHEME) for item in items):
        raise ConfigError(f"REDIS_URL: a Sentinel URL cannot be one shard of a list, got {url!r}")
    urls = tuple(_one_redis_url(item, url) for item in items)
    if len({u.rstrip("/") for u in urls}) != len(urls):
        raise ConfigError(f"REDIS_URL: a shard is listed twice in {url!r}")
    return url, RedisTarget("sharded", urls=urls)


def _allowed_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("HUBBUB_ALLOWED_HOSTS")
    if raw is None or raw.strip() == "":
        return ("localhost", "127.0.0.1", "[::1]")
    hosts = tuple(h.strip().lower() for h in raw.split(","))
    for host in hosts:
        if not host or any(c.isspace() or c in "/@?#" for c in host):
            raise ConfigError(f"HUBBUB_ALLOWED_HOSTS: malformed host {host!r} in {raw!r}")
    return hosts


def _secret_key(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("HUBBUB_SECRET_KEY")
    if raw is not None and raw.strip() != "":
        if len(raw.strip()) < 16:
            raise ConfigError("HUBBUB_SECRET_KEY: must be at least 16 characters long")
        return raw.strip()
    path = data_dir / "secret_key"
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if len(kept) >= 16:
        return kept
    # Write the whole key to a private temporary file, then link it into place: a reader never
    # sees a half-written key, and when several instances start at once on one data dir the first
    # link wins and the others read its key instead of each keeping a different one.
    key = secrets.token_urlsafe(48)
    tmp = data_dir / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    try:
        if kept == "" and path.exists():
            path.unlink()  # an empty or truncated key left by a crash
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    if len(key) < 16:
        raise ConfigError(f"HUBBUB_DATA_DIR: {str(path)!r} holds no usable secret key; delete it")
    return key


def load(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate every setting. Raises :class:`ConfigError` on the first bad one."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("HUBBUB_DATA_DIR") or "./.hubbub").expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"HUBBUB_DATA_DIR: cannot create {str(data_dir)!r}: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK):
        raise ConfigError(f"HUBBUB_DATA_DIR: {str(data_dir)!r} is not writable")
    database_url = _database_url(env)
    redis_url, redis = _redis_target(env)
    allowed_hosts = _allowed_hosts(env)
    allow_guests = _bool(env, "HUBBUB_ALLOW_GUESTS", True)
    max_message_chars = _positive_int(env, "HUBBUB_MAX_MESSAGE_CHARS", 4000, 1_000_000)
    max_upload_mb = _positive_int(env, "HUBBUB_MAX_UPLOAD_MB", 50, 100_000)
    debug = _bool(env, "HUBBUB_DEBUG", False)
    max_sockets_per_user = _positive_int(env, "HUBBUB_MAX_SOCKETS_PER_USER", 50, 100_000)
    secret_key = _secret_key(env, data_dir)
    return Config(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        redis=redis,
        secret_key=secret_key,
        allowed_hosts=allowed_hosts,
        allow_guests=allow_guests,
        max_message_chars=max_message_chars,
        max_upload_mb=max_upload_mb,
        debug=debug,
        max_sockets_per_user=max_sockets_per_user,
    )



@dataclass(frozen=True)
class ClientConfig:
    """Where the client commands (`hubbub chat/send/tail`) connect: HUBBUB_URL, HUBBUB_TOKEN."""

    url: str
    token: str | None


def load_client(env: Mapping[str, str] | None = None) -> ClientConfig:
    env = os.environ if env is None else env
    url = (env.get("HUBBUB_URL") or "http://127.0.0.1:8000").strip()
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise ConfigError(f"HUBBUB_URL: expected http://host:port, got {url!r}")
    token = (env.get("HUBBUB_TOKEN") or "").strip() or None
    return ClientConfig(url=url, token=token)
