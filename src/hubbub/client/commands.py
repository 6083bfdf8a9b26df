"""The terminal commands built on the client: ``hubbub send``, ``hubbub tail``, ``hubbub chat``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from hubbub.client.aio import HubbubClient, HubbubError, Message, Room


def format_line(message: Message) -> str:
    local = message.ts.astimezone().strftime("%H:%M:%S")
    text = message.message.replace("\n", "\n    ")
    return f"[{message.id}] {local} {message.user}: {text}"


async def send(url: str, token: str | None, room: str, text: str) -> int:
    """Post ``text``; with ``-``, post each line of stdin as it arrives (so it can sit in a pipe)."""
    async with HubbubClient(url, token) as client:
        if text != "-":
            message = await client.post(room, text)
            print(message.id)
            return 0
        async with client.room(room) as connection:
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if line == "":
                    return 0
                line = line.rstrip("\n")
                if line.strip():
                    await connection.post(line)


async def tail(url: str, token: str | None, room: str, after: int | None, as_json: bool) -> int:
    """Print each message as it arrives, one line each (JSON lines with ``--json``)."""
    async with HubbubClient(url, token) as client, client.room(room, after=after) as connection:
        async for message in connection:
            line = json.dumps(message.as_event(), ensure_ascii=False) if as_json else format_line(message)
            try:
                print(line, flush=True)
            except BrokenPipeError:  # the reader went away (`| head`): stop quietly
                return 0
    return 0


async def chat(url: str, token: str | None, room_name: str) -> int:
    """An interactive chat: messages scroll above, the prompt stays below, and the bottom bar
    shows the connection state and who is here."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    async with HubbubClient(url, token) as client:
        connection = client.room(room_name, after=max(0, await client.last_id(room_name) - 20))
        session: PromptSession[str] = PromptSession()

        def toolbar() -> str:
            who = ", ".join(connection.presence) or "nobody yet"
            return f" #{room_name} · {connection.state} · here: {who} · Ctrl-D to leave"

        def redraw(*_: object) -> None:
            with contextlib.suppress(Exception):
                session.app.invalidate()

        connection.on_state = redraw
        connection.on_presence = redraw
        with patch_stdout(raw=True):
            await connection.connect()
            printer = asyncio.ensure_future(_print_messages(connection))
            try:
                while True:
                    try:
                        line = await session.prompt_async(f"{room_name}> ", bottom_toolbar=toolbar)
                    except (EOFError, KeyboardInterrupt):
                        break
                    if line.strip():
                        try:
                            await connection.post(line)
                        except HubbubError as exc:
                            print(f"! not sent: {exc.detail}")
                        except TimeoutError:
                            print("! not sent: no answer from the server in time; send it again")
            finally:
                printer.cancel()
                await connection.close()
    return 0


async def convert(url: str, token: str | None, path: str, target: str, room: str | None,
                  output: str | None) -> int:
    """Upload, show a progress bar while the job runs, save the result."""
    source = Path(path)
    async with HubbubClient(url, token) as client:
        job = await client.convert(source, target, room=room)
        final: dict[str, Any] = job
        shown = None
        async for update in client.job_updates(job["id"]):
            final = update
            line = (int(update.get("progress", 0)), str(update.get("stage") or update.get("state")))
            if line != shown:
                shown = line
                _bar(*line)
        sys.stderr.write("\n")
        if final.get("state") != "done":
            raise HubbubError(str(final.get("state")),
                              str(final.get("error") or "the conversion did not finish"))
        saved = await client.download(job["id"], output)  # default: the server's name
        print(saved)
    return 0


def _bar(progress: int, stage: str) -> None:
    if not sys.stderr.isatty():
        sys.stderr.write(f"{progress:3d}% {stage}\n")
        return
    width = 30
    filled = width * progress // 100
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {progress:3d}% {stage[:40]:<40}")
    sys.stderr.flush()


async def _print_messages(connection: Room) -> None:
    async for message in connection:
        print(format_line(message), flush=True)


