"""Pure unit tests of ``hubbub.config.load`` (CONTRACT.md §2): defaults, valid and malformed values."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hubbub import config
from hubbub.config import ConfigError


def env_for(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"HUBBUB_DATA_DIR": str(tmp_path / "data"), **values}


def load_error(tmp_path: Path, name: str, value: str) -> str:
    """Load with one malformed variable; returns the error message after checking its shape."""
    with pytest.raises(ConfigError) as info:
        config.load(env_for(tmp_path, **{name: value}))
    message = str(info.value)
    assert message, "the error says something"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    assert name in message, f"{message!r} does not name {name}"
    return message


# -- defaults -----------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    cfg = config.load({"HUBBUB_DATA_DIR": str(tmp_path)})
    assert cfg.data_dir == tmp_path.absolute()
    assert cfg.database_url is None
    assert cfg.redis_url is None
    assert cfg.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert cfg.allow_guests is True
    assert cfg.max_message_chars == 4000
    assert cfg.max_upload_mb == 50
    assert cfg.debug is False
    assert cfg.sqlite_path.parent == cfg.data_dir
    assert len(cfg.secret_key) >= 32


def test_default_data_dir_is_dot_hubbub_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config.load({})
    assert cfg.data_dir == (tmp_path / ".hubbub").absolute()
    assert cfg.data_dir.is_dir()


def test_empty_values_mean_the_default(tmp_path: Path) -> None:
    cfg = config.load(
        env_for(
            tmp_path,
            DATABASE_URL="",
            REDIS_URL="  ",
            HUBBUB_ALLOWED_HOSTS="",
            HUBBUB_ALLOW_GUESTS="",
            HUBBUB_MAX_MESSAGE_CHARS=" ",
            HUBBUB_MAX_UPLOAD_MB="",
            HUBBUB_DEBUG="",
            HUBBUB_SECRET_KEY="",
        )
    )
    assert cfg.database_url is None and cfg.redis_url is None
    assert cfg.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert (cfg.allow_guests, cfg.max_message_chars, cfg.max_upload_mb, cfg.debug) == (
        True, 4000, 50, False,
    )


def test_data_dir_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    cfg = config.load({"HUBBUB_DATA_DIR": str(target)})
    assert target.is_dir()
    assert cfg.data_dir == target


def test_load_reads_only_the_mapping_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBBUB_MAX_MESSAGE_CHARS", "not a number")
    monkeypatch.setenv("HUBBUB_ALLOW_GUESTS", "false")
    cfg = config.load(env_for(tmp_path))
    assert cfg.max_message_chars == 4000
    assert cfg.allow_guests is True


# -- the secret key -----------------------------------------------------------------------------


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    first = config.load(env).secret_key
    second = config.load(env).secret_key
    assert first == second
    key_file = tmp_path / "data" / "secret_key"
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(key_file.stat().st_mode) & 0o077 == 0, "the key file is private"


def test_each_data_dir_gets_its_own_secret_key(tmp_path: Path) -> None:
    one = config.load({"HUBBUB_DATA_DIR": str(tmp_path / "one")}).secret_key
    two = config.load({"HUBBUB_DATA_DIR": str(tmp_path / "two")}).secret_key
    assert one != two


def test_an_existing_secret_key_file_is_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret_key").write_text("a-key-someone-kept-from-before\n")
    assert config.load(env_for(tmp_path)).secret_key == "a-key-someone-kept-from-before"


def test_hubbub_secret_key_wins(tmp_path: Path) -> None:
    cfg = config.load(env_for(tmp_path, HUBBUB_SECRET_KEY="  0123456789abcdef-given  "))
    assert cfg.secret_key == "0123456789abcdef-given"


def test_an_empty_secret_key_file_never_gives_an_empty_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret_key").write_text("")
    try:
        key = config.load(env_for(tmp_path)).secret_key
    except ConfigError as exc:  # refusing to start, naming the variable, is acceptable too
        assert "HUBBUB_SECRET_KEY" in str(exc)
        return
    assert len(key) >= 16


# -- valid values -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "on", " true "])
def test_true_values(tmp_path: Path, value: str) -> None:
    cfg = config.load(env_for(tmp_path, HUBBUB_ALLOW_GUESTS=value, HUBBUB_DEBUG=value))
    assert cfg.allow_guests is True
    assert cfg.debug is True


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0", "no", "off", " false "])
def test_false_values(tmp_path: Path, value: str) -> None:
    cfg = config.load(env_for(tmp_path, HUBBUB_ALLOW_GUESTS=value, HUBBUB_DEBUG=value))
    assert cfg.allow_guests is False
    assert cfg.debug is False


def test_numbers(tmp_path: Path) -> None:
    cfg = config.load(env_for(tmp_path, HUBBUB_MAX_MESSAGE_CHARS=" 120 ", HUBBUB_MAX_UPLOAD_MB="1"))
    assert cfg.max_message_chars == 120
    assert cfg.max_upload_mb == 1


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user:pass@db.example.com:5432/hubbub",
        "postgresql://user:pass@localhost/hubbub",
        "postgres://user@[::1]:5432/hubbub",
        "postgres://user:pass@host:5432/db?sslmode=require",
        "sqlite:///var/lib/hubbub/db.sqlite3",
        "sqlite:////absolute/path.sqlite3",
    ],
)
def test_valid_database_urls(tmp_path: Path, url: str) -> None:
    assert config.load(env_for(tmp_path, DATABASE_URL=url)).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "redis://:secret@redis.example.com:6380/2",
        "rediss://redis.example.com:6380/0",
        "redis://[::1]:6379/0",
        "unix:///run/redis.sock",
    ],
)
def test_valid_redis_urls(tmp_path: Path, url: str) -> None:
    assert config.load(env_for(tmp_path, REDIS_URL=url)).redis_url == url


def test_allowed_hosts_are_split_trimmed_and_lowercased(tmp_path: Path) -> None:
    cfg = config.load(env_for(tmp_path, HUBBUB_ALLOWED_HOSTS="Chat.Example.com, .example.org ,[::1],*"))
    assert cfg.allowed_hosts == ("chat.example.com", ".example.org", "[::1]", "*")


# -- malformed values: one line, naming the variable --------------------------------------------

MALFORMED = [
    ("HUBBUB_ALLOW_GUESTS", "maybe"),
    ("HUBBUB_ALLOW_GUESTS", "2"),
    ("HUBBUB_ALLOW_GUESTS", "tru e"),
    ("HUBBUB_ALLOW_GUESTS", "yes\nno"),
    ("HUBBUB_DEBUG", "verbose"),
    ("HUBBUB_DEBUG", "-1"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "abc"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "0"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "-1"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "1.5"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "4k"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "1e3"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "0x10"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "99999999999999"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "12\n34"),
    ("HUBBUB_MAX_UPLOAD_MB", "ten"),
    ("HUBBUB_MAX_UPLOAD_MB", "0"),
    ("HUBBUB_MAX_UPLOAD_MB", "-5"),
    ("HUBBUB_MAX_UPLOAD_MB", "50MB"),
    ("DATABASE_URL", "mysql://u:p@host/db"),
    ("DATABASE_URL", "just-a-string"),
    ("DATABASE_URL", "postgres://u:p@host:notaport/db"),
    ("DATABASE_URL", "postgres://u:p@host:99999/db"),
    ("DATABASE_URL", "postgres:///db"),
    ("DATABASE_URL", "postgres://u:p@host"),
    ("DATABASE_URL", "postgres://u:p@host/"),
    ("DATABASE_URL", "sqlite://"),
    ("DATABASE_URL", "sqlite:///"),
    ("DATABASE_URL", "sqlite://relative/path"),
    ("DATABASE_URL", "mysql://x\ny"),
    ("REDIS_URL", "http://localhost:6379/0"),
    ("REDIS_URL", "localhost:6379"),
    ("REDIS_URL", "redis://"),
    ("REDIS_URL", "redis://:6379/0"),
    ("REDIS_URL", "redis://host:port/0"),
    ("REDIS_URL", "redis://host:6379/abc"),
    ("HUBBUB_ALLOWED_HOSTS", "a,,b"),
    ("HUBBUB_ALLOWED_HOSTS", ","),
    ("HUBBUB_ALLOWED_HOSTS", "a, b c"),
    ("HUBBUB_ALLOWED_HOSTS", "http://example.com"),
    ("HUBBUB_ALLOWED_HOSTS", "example.com/chat"),
    ("HUBBUB_ALLOWED_HOSTS", "user@example.com"),
    ("HUBBUB_ALLOWED_HOSTS", "a\nb"),
    ("HUBBUB_SECRET_KEY", "short"),
    ("HUBBUB_SECRET_KEY", "tiny\nkey"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_value_is_a_one_line_error_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    load_error(tmp_path, name, value)


def test_malformed_message_does_not_leak_into_other_variables(tmp_path: Path) -> None:
    message = load_error(tmp_path, "HUBBUB_MAX_UPLOAD_MB", "lots")
    assert "HUBBUB_MAX_MESSAGE_CHARS" not in message


def test_secret_key_error_does_not_print_the_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "HUBBUB_SECRET_KEY", "hunter2")
    assert "hunter2" not in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("name", "value"), [("DATABASE_URL", "postgres://u:p@[::1/db"), ("REDIS_URL", "redis://[::1/0")]
)
def test_unbalanced_ipv6_brackets_are_a_config_error(tmp_path: Path, name: str, value: str) -> None:
    try:
        config.load(env_for(tmp_path, **{name: value}))
    except ConfigError as exc:
        assert name in str(exc) and "\n" not in str(exc)
        return
    except ValueError as exc:
        pytest.fail(f"a bare {exc!r} instead of a ConfigError")
    pytest.fail("accepted")


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "postgres://u:p@db\nhost/hubbub"), ("REDIS_URL", "redis://localhost:6379/0\n1")],
)
def test_urls_with_control_characters_are_malformed(tmp_path: Path, name: str, value: str) -> None:
    load_error(tmp_path, name, value)


def test_data_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in (blocker, blocker / "below"):
        with pytest.raises(ConfigError) as info:
            config.load({"HUBBUB_DATA_DIR": str(target)})
        message = str(info.value)
        assert "HUBBUB_DATA_DIR" in message
        assert "\n" not in message


def test_data_dir_with_a_newline_in_its_name_still_gives_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        config.load({"HUBBUB_DATA_DIR": str(blocker / "a\nb")})
    assert "\n" not in str(info.value)
    assert "HUBBUB_DATA_DIR" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(ConfigError) as info:
            config.load({"HUBBUB_DATA_DIR": str(target)})
    finally:
        target.chmod(0o700)
    assert "HUBBUB_DATA_DIR" in str(info.value)
    assert "\n" not in str(info.value)
