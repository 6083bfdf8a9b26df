"""The ``hubbub`` command (CONTRACT.md §1)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from hubbub import config


class CliError(Exception):
    """A one-line error for stderr; the command exits 1."""


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"hubbub: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _setup() -> config.Config:
    """Validate the settings (one-line error naming the variable), then start Django."""
    try:
        cfg = config.load()
    except config.ConfigError as exc:
        _fail(str(exc))
    os.environ["DJANGO_SETTINGS_MODULE"] = "hubbub.settings"
    import django

    django.setup()
    return cfg


@contextlib.contextmanager
def _migration_lock(cfg: config.Config) -> Iterator[None]:
    """Serialise migrations when several instances start at once on an empty database."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(7311240017)")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(7311240017)")
    else:
        import fcntl

        with open(cfg.data_dir / "migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def migrate(cfg: config.Config) -> None:
    from django.core.management import call_command
    from django.db import OperationalError, connection

    try:
        with _migration_lock(cfg):
            call_command("migrate", interactive=False, verbosity=0)
    except OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot reach the database: {first}") from None
    finally:
        connection.close()


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _setup()
    migrate(cfg)
    import logging

    import uvicorn

    mode = "embedded (in-memory channel layer)" if cfg.redis_url is None else "Redis channel layer"
    logging.getLogger("hubbub").info("serving on http://%s:%d: %s", args.host, args.port, mode)
    # uvicorn shuts down gracefully on SIGTERM, then restores the previous handler and raises the
    # signal again; with the default handler that kills the process (status -15). Make the
    # re-raised SIGTERM a normal exit, as the contract asks: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    import hubbub.asgi  # noqa: F401  (loaded before the freeze below)

    _freeze_heap()
    uvicorn.run(
        "hubbub.asgi:application",
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",  # measured fastest and leanest (see docs/decisions.md)
        ws_max_size=64 * 1024,  # a bigger frame closes the socket with 1009
        ws_per_message_deflate=False,  # compression costs CPU per socket per message
        # A client that vanished (no FIN: a dead laptop, a dropped NAT entry) is detected by a
        # ping that gets no pong: within ping interval + timeout.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        timeout_graceful_shutdown=5,
        log_level="info",
        access_log=False,
        proxy_headers=True,
        server_header=False,
    )
    return 0


def _freeze_heap() -> None:
    """Move everything loaded at start-up (Django, the app, the converters' libraries) out of the
    cyclic GC's reach: it would otherwise rescan that heap again and again during
    allocation-heavy work (a Markdown conversion ran 0.39 s → 0.28 s; docs/performance.md)."""
    import gc

    gc.collect()
    gc.freeze()


def _read_password_stdin() -> str:
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def cmd_user_create(args: argparse.Namespace) -> int:
    _setup()
    migrate_if_needed()
    from hubbub.accounts import services
    from hubbub.errors import HubbubError

    password = _read_password_stdin() if args.password_stdin else secrets.token_urlsafe(12)
    try:
        user = services.user_create(username=args.name, password=password)
    except HubbubError as exc:
        raise CliError(exc.detail) from None
    if args.password_stdin:
        print(f"created user {user.get_username()}")
    else:
        print(f"created user {user.get_username()} with password {password}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    _setup()
    migrate_if_needed()
    from hubbub.accounts import services
    from hubbub.errors import HubbubError

    try:
        user = services.user_get(username=args.name)
        print(services.token_create(user=user))
    except HubbubError as exc:
        raise CliError(exc.detail) from None
    return 0


def migrate_if_needed() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        migrate(config.load())


def cmd_worker(args: argparse.Namespace) -> int:
    cfg = _setup()
    if cfg.redis_url is None:
        raise CliError("REDIS_URL: `hubbub worker` needs REDIS_URL and a shared DATABASE_URL "
                       "(without them, `hubbub serve` converts in-process)")
    migrate_if_needed()
    from hubbub.conversions.worker import Worker

    worker = Worker()
    _freeze_heap()

    def stop(signum: int, frame: object) -> None:
        worker.stop()  # the current job is given back (released), then we exit 0

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run_forever()
    return 0


def _client_config(args: argparse.Namespace) -> tuple[str, str | None]:
    try:
        cfg = config.load_client()
    except config.ConfigError as exc:
        _fail(str(exc))
    return (args.url or cfg.url), (args.token or cfg.token)


def _run_client(coro: Any) -> int:
    import asyncio

    from hubbub.client import HubbubError

    try:
        return int(asyncio.run(coro))
    except HubbubError as exc:
        raise CliError(f"{exc.code}: {exc.detail}") from None
    except OSError as exc:
        raise CliError(f"cannot reach the server: {exc.strerror or exc}") from None


def cmd_send(args: argparse.Namespace) -> int:
    from hubbub.client import commands

    url, token = _client_config(args)
    return _run_client(commands.send(url, token, args.room, args.text))


def cmd_tail(args: argparse.Namespace) -> int:
    from hubbub.client import commands

    url, token = _client_config(args)
    return _run_client(commands.tail(url, token, args.room, args.after, args.json))


def cmd_chat(args: argparse.Namespace) -> int:
    from hubbub.client import commands

    url, token = _client_config(args)
    return _run_client(commands.chat(url, token, args.room))


def cmd_convert(args: argparse.Namespace) -> int:
    from hubbub.client import commands

    url, token = _client_config(args)
    if not os.path.isfile(args.file):
        raise CliError(f"no such file: {args.file}")
    return _run_client(commands.convert(url, token, args.file, args.to, args.room, args.output))


def cmd_manage(args: argparse.Namespace) -> int:
    _setup()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["hubbub manage", *args.args])
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr (the contract's form), exit 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hubbub", description="A real-time messaging hub.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    serve = sub.add_parser("serve", help="apply migrations, then serve HTTP and WebSocket")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    create = user.add_parser("create", help="create a user")
    create.add_argument("name")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin")
    create.set_defaults(func=cmd_user_create)

    token = sub.add_parser("token", help="manage API tokens").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    tcreate = token.add_parser("create", help="print a new API token for a user")
    tcreate.add_argument("name")
    tcreate.set_defaults(func=cmd_token_create)

    worker = sub.add_parser("worker", help="run a conversion worker (needs REDIS_URL)")
    worker.set_defaults(func=cmd_worker)

    for name, func, help_text in (
        ("chat", cmd_chat, "chat in a room from the terminal"),
        ("send", cmd_send, "post a message (TEXT '-': each line of stdin)"),
        ("tail", cmd_tail, "print a room's messages as they arrive"),
    ):
        client_cmd = sub.add_parser(name, help=help_text)
        client_cmd.add_argument("room")
        if name == "send":
            client_cmd.add_argument("text", help="the message, or '-' to post each line of stdin")
        if name == "tail":
            client_cmd.add_argument("--after", type=int, default=None, metavar="N",
                                    help="first print every stored message after id N")
            client_cmd.add_argument("--json", action="store_true", help="one MessageEvent JSON per line")
        client_cmd.add_argument("--url", help="the server (default: $HUBBUB_URL or http://127.0.0.1:8000)")
        client_cmd.add_argument("--token", help="a bearer token (default: $HUBBUB_TOKEN; none: a guest)")
        client_cmd.set_defaults(func=func)

    conv = sub.add_parser("convert", help="convert a file, showing progress, and save the result")
    conv.add_argument("file")
    conv.add_argument("--to", required=True, metavar="FORMAT", help="the target format (png, pdf, …)")
    conv.add_argument("--room", help="also post the outcome in this room")
    conv.add_argument("--output", "-o", help="where to save (default: the server's name, here)")
    conv.add_argument("--url", help="the server (default: $HUBBUB_URL or http://127.0.0.1:8000)")
    conv.add_argument("--token", help="a bearer token (default: $HUBBUB_TOKEN; none: a guest)")
    conv.set_defaults(func=cmd_convert)

    manage = sub.add_parser("manage", help="Django's management commands", add_help=False)
    manage.add_argument("args", nargs=argparse.REMAINDER)
    manage.set_defaults(func=cmd_manage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and not 0 < args.port < 65536:
        _fail(f"--port: expected 1-65535, got {args.port}")
    try:
        return int(args.func(args))
    except CliError as exc:
        _fail(str(exc), status=1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
