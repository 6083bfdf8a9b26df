"""The one place that reads the environment.

Every setting of CONTRACT.md §2 is read, cast strictly and validated here. A malformed value
raises :class:`ConfigError` whose message is one line naming the variable; the CLI prints it and
exits non-zero before Django starts. Nothing else in Hubbub reads ``os.environ`` (the Django
settings module builds on :func:`load`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit


class ConfigError(ValueError):
    """A setting has a malformed value. The message is one line and names the variable."""


@dataclass(frozen=True)
class Config:
    data_dir: Path
    database_url: str | None
    redis_url: str | None
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


def _redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("REDIS_URL")
    if raw is None or raw.strip() == "":
        return None
    url = raw.strip()
    parts = _split_url("REDIS_URL", url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL: expected redis://host:port/db, got {url!r}")
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
    redis_url = _redis_url(env)
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
