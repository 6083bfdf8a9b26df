"""An asyncio client for Hubbub's HTTP API and WebSocket protocol (docs/protocol.md, docs/api.md).

    async with HubbubClient("http://127.0.0.1:8000", token=TOKEN) as hub:
        async with hub.room("lobby") as room:
            await room.post("hello")             # returns once the server has stored it
            async for message in room:           # every message once, in order, for ever
                print(message.id, message.user, message.message)

The room connection reconnects by itself (exponential backoff with jitter) and catches up with
``?after=<last id>``, so iteration yields every message exactly once and in id order across
disconnects and server restarts. Posts carry a generated ``client_id`` and are resent after a
reconnect until acknowledged; the server stores each ``client_id`` once. The token travels in the
``Authorization`` header, never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from hubbub.realtime.protocol import valid_room_name

log = logging.getLogger(__name__)

SUBPROTOCOL = "hubbub.v1"
MAX_FRAME = 64 * 1024  # the server closes the socket (1009) on a bigger frame
STABLE_AFTER = 5.0  # seconds a connection must last before the backoff starts again from zero
MAX_BACKOFF = 15.0
# Close codes after which reconnecting cannot help (docs/protocol.md, "Refusals").
FATAL_CLOSE = {4400: "bad room name", 4401: "not authenticated", 4403: "forbidden"}


class HubbubError(Exception):
    """An error answer from the server: ``code`` is the contract's error code."""

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class Message:
    """A MessageEvent: ``id`` is the room's gapless sequence number."""

    room: str
    id: int
    user: str
    message: str
    ts: datetime
    client_id: str | None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Message:
        return cls(
            room=event["room"], id=int(event["id"]), user=event["user"], message=event["message"],
            ts=datetime.fromisoformat(event["ts"].replace("Z", "+00:00")),
            client_id=event.get("client_id"),
        )

    def as_event(self) -> dict[str, Any]:
        return {"type": "message", "room": self.room, "id": self.id, "user": self.user,
                "message": self.message, "ts": self.ts.isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"), "client_id": self.client_id}


def _room_name(name: str) -> str:
    if not valid_room_name(name):
        raise HubbubError("bad_room", f"room names are 1-64 of A-Z a-z 0-9 _ -, got {name!r}")
    return name


def _ws_base(http_url: str) -> str:
    parts = urlsplit(http_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"expected an http:// or https:// URL, got {http_url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class HubbubClient:
    """The HTTP API, and :meth:`room` for live rooms."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None,
                 *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ws_base = _ws_base(self.url)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> HubbubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _ws_headers(self) -> dict[str, str]:
        """The handshake's headers: the token, or a guest's session cookie (so a guest's socket
        is the same guest as its HTTP calls)."""
        headers = self._headers()
        if not self.token and self._http.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self._http.cookies.items())
        return headers

    async def request(self, method: str, path: str, body: Any = None,
                      params: dict[str, Any] | None = None) -> Any:
        """One API call; an error answer raises :class:`HubbubError`."""
        try:
            response = await self._http.request(method, path, json=body, params=params,
                                                headers=self._headers())
        except httpx.HTTPError as exc:
            raise HubbubError("unreachable", f"cannot reach {self.url}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            raise HubbubError(str(data.get("error", "http_error")),
                              str(data.get("detail", response.reason_phrase)), response.status_code)
        return data

    async def login(self, username: str, password: str) -> str:
        """Exchange a password for a bearer token, and use it from now on."""
        data = await self.request("POST", "/api/auth/token", {"username": username, "password": password})
        self.token = str(data["token"])
        return self.token

    async def rooms(self) -> list[dict[str, Any]]:
        return list((await self.request("GET", "/api/rooms"))["rooms"])

    async def create_room(self, name: str, private: bool = False) -> dict[str, Any]:
        return dict(await self.request("POST", "/api/rooms", {"name": name, "private": private}))

    async def add_member(self, room: str, username: str) -> None:
        await self.request("POST", f"/api/rooms/{quote(room)}/members", {"username": username})

    async def history(self, room: str, *, after: int | None = None, before: int | None = None,
                      limit: int = 50) -> list[Message]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if before is not None:
            params["before"] = before
        data = await self.request("GET", f"/api/rooms/{quote(_room_name(room))}/messages", params=params)
        return [Message.from_event(e) for e in data["messages"]]

    async def last_id(self, room: str) -> int:
        newest = await self.history(room, limit=1)
        return newest[-1].id if newest else 0

    async def post(self, room: str, text: str, client_id: str | None = None) -> Message:
        """Post over HTTP (one request, no socket). Retrying with the same ``client_id`` is safe."""
        body = {"message": text, "client_id": client_id or uuid.uuid4().hex}
        path = f"/api/rooms/{quote(_room_name(room))}/messages"
        return Message.from_event(await self.request("POST", path, body))

    # -- conversions -------------------------------------------------------------------------

    async def convert(self, path: str | Path, target: str, *, room: str | None = None,
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upload a file to convert; returns the queued Job (CONTRACT.md §3)."""
        path = Path(path)
        data: dict[str, str] = {"target": target}
        if room:
            data["room"] = room
        if options:
            data["options"] = json.dumps(options)
        content = await asyncio.to_thread(path.read_bytes)
        try:
            response = await self._http.post("/api/conversions", data=data,
                                             files={"file": (path.name, content)},
                                             headers=self._headers())
        except httpx.HTTPError as exc:
            raise HubbubError("unreachable", f"cannot reach {self.url}: {exc}") from None
        body = response.json() if response.headers.get("content-type", "").startswith(
            "application/json") else {}
        if response.status_code >= 400:
            raise HubbubError(str(body.get("error", "http_error")), str(body.get("detail", "")),
                              response.status_code)
        return dict(body)

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/api/conversions/{quote(job_id)}"))

    async def job_updates(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The job's state now, then every change until a final state (reconnecting as needed)."""
        url = f"{self.ws_base}/ws/jobs/{quote(job_id)}/"
        attempt = 0
        while True:
            try:
                async with websockets.connect(url, additional_headers=self._ws_headers(),
                                              open_timeout=10) as ws:
                    attempt = 0
                    async for frame in ws:
                        event = json.loads(frame)
                        yield event
                        if event.get("state") in ("done", "failed", "cancelled"):
                            return
                    code = ws.close_code
            except (OSError, TimeoutError, websockets.ConnectionClosed) as exc:
                log.debug("job socket lost: %r", exc)
                code = getattr(getattr(exc, "rcvd", None), "code", None)
            if code in FATAL_CLOSE:
                raise HubbubError(FATAL_CLOSE[code], "the server refused the job's socket")
            attempt += 1
            await asyncio.sleep(min(MAX_BACKOFF, 0.25 * 2 ** attempt) * (0.5 + random.random()))

    async def download(self, job_id: str, destination: str | Path | None = None) -> Path:
        """Save a done job's result (by default under the server's file name, in the current
        directory)."""
        async with self._http.stream("GET", f"/api/conversions/{quote(job_id)}/result",
                                     headers=self._headers()) as response:
            if response.status_code >= 400:
                body = json.loads(await response.aread() or b"{}")
                raise HubbubError(str(body.get("error")), str(body.get("detail")), response.status_code)
            if destination is None:
                match = re.search(r'filename="?([^";]+)"?', response.headers.get("content-disposition", ""))
                destination = Path(Path(match.group(1)).name if match else f"{job_id}.out")
            destination = Path(destination)
            out = await asyncio.to_thread(destination.open, "wb")
            try:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            finally:
                out.close()
        return destination

    def room(self, name: str, *, after: int | None = None) -> Room:
        """A live connection to a room. Iterate it for messages with ``id > after`` (by default:
        those posted from now on)."""
        return Room(self, _room_name(name), after)


class Room:
    """A room over one self-healing WebSocket. Use as an async context manager."""

    def __init__(self, client: HubbubClient, name: str, after: int | None) -> None:
        self.client = client
        self.name = name
        self._after = after
        self.last_id = 0
        self.state = "idle"  # idle | connecting | open | reconnecting | closed
        self.presence: list[str] = []
        self.on_state: Callable[[str], None] | None = None
        self.on_presence: Callable[[list[str]], None] | None = None
        self.on_typing: Callable[[str], None] | None = None
        self._queue: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._pending: dict[str, tuple[str, asyncio.Future[Message]]] = {}
        self._inflight: list[str] = []
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._fatal: HubbubError | None = None
        self._resend_task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Room:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self, timeout: float = 15.0) -> None:
        """Connect (and keep reconnecting). Returns once the first connection is open."""
        if self._after is None:
            self._after = await self.client.last_id(self.name)
        self.last_id = self._after
        self._task = asyncio.ensure_future(self._run())
        opened = asyncio.ensure_future(self._opened.wait())
        done, _ = await asyncio.wait({opened, self._task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if opened not in done:
            opened.cancel()
            await self.close()
            if self._fatal is not None:
                raise self._fatal
            raise HubbubError("unreachable", f"cannot connect to {self.client.ws_base} within {timeout}s")

    async def close(self) -> None:
        self._set_state("closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(HubbubError("closed", "the room connection was closed"))
        self._queue.put_nowait(StopAsyncIteration())

    # -- receiving -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # stay exhausted (or failed) for every later call
            raise item
        return item

    # -- posting ------------------------------------------------------------------------------

    async def post(self, text: str, *, client_id: str | None = None, timeout: float = 30.0) -> Message:
        """Post and wait for the acknowledgement. Survives reconnects (it is resent)."""
        if self.state == "closed":
            raise HubbubError("closed", "the room connection is closed")
        client_id = client_id or uuid.uuid4().hex
        frame = json.dumps({"message": text, "client_id": client_id})
        if len(frame.encode()) > MAX_FRAME:
            raise HubbubError("too_long", f"the post is over the server's {MAX_FRAME} byte frame limit")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[client_id] = (text, future)
        await self._send_post(client_id, text)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            # Whether acknowledged, refused or timed out, it is no longer ours to resend: a post
            # that timed out is resent by the caller (with the same client_id) if it wants.
            self._pending.pop(client_id, None)
            with contextlib.suppress(ValueError):
                self._inflight.remove(client_id)

    async def typing(self) -> None:
        await self._send_raw('{"type":"typing"}')

    async def _send_post(self, client_id: str, text: str) -> None:
        if await self._send_raw(json.dumps({"message": text, "client_id": client_id})):
            self._inflight.append(client_id)

    async def _send_raw(self, frame: str) -> bool:
        ws = self._ws
        if ws is None or self.state != "open":
            return False  # sent after the next reconnect
        try:
            await ws.send(frame)
        except websockets.ConnectionClosed:
            return False
        return True

    # -- the connection loop ------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_state is not None:
                self.on_state(state)

    async def _run(self) -> None:
        attempt = 0
        while True:
            opened_at: float | None = None
            url = f"{self.client.ws_base}/ws/chat/{quote(self.name)}/?after={self.last_id}"
            self._set_state("connecting" if attempt == 0 else "reconnecting")
            try:
                async with websockets.connect(
                    url, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    additional_headers=self.client._ws_headers(), max_size=2**22, open_timeout=10,
                    ping_interval=20, ping_timeout=20,
                ) as ws:
                    self._ws = ws
                    self._inflight = []
                    self._set_state("open")
                    self._opened.set()
                    opened_at = asyncio.get_running_loop().time()
                    for client_id, (text, future) in list(self._pending.items()):
                        if not future.done():
                            await self._send_post(client_id, text)
                    async for frame in ws:
                        try:
                            event = json.loads(frame)
                        except ValueError:
                            continue
                        if isinstance(event, dict):
                            self._handle(event)
                    code = ws.close_code
            except (OSError, TimeoutError, websockets.ConnectionClosed,
                    websockets.InvalidHandshake) as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if isinstance(exc, websockets.InvalidStatus) and exc.response.status_code == 403:
                    code = 4403
                log.debug("room %s: connection lost: %r", self.name, exc)
            finally:
                self._ws = None
            if code == 1009 and self._inflight:
                # The server refused a frame as too big: that post can never succeed.
                self._fail_post(self._inflight[0], HubbubError("too_long", "the post was too big"))
            if opened_at is not None and asyncio.get_running_loop().time() - opened_at > STABLE_AFTER:
                attempt = 0  # a connection that held: back off from scratch next time
            if code in FATAL_CLOSE:
                self._fatal = HubbubError(FATAL_CLOSE[code], f"the server refused the room (close {code})")
                self._queue.put_nowait(self._fatal)
                for _, future in self._pending.values():
                    if not future.done():
                        future.set_exception(self._fatal)
                self._set_state("closed")
                return
            attempt += 1
            delay = min(MAX_BACKOFF, 0.25 * 2 ** (attempt - 1))
            self._set_state("reconnecting")
            await asyncio.sleep(delay / 2 + random.random() * delay)  # jitter: 0.5x to 1.5x

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message":
            message = Message.from_event(event)
            if message.client_id is not None and message.client_id in self._pending:
                with contextlib.suppress(ValueError):
                    self._inflight.remove(message.client_id)
                _, future = self._pending[message.client_id]
                if not future.done():
                    future.set_result(message)
            if message.id > self.last_id:
                self.last_id = message.id
                self._queue.put_nowait(message)
        elif kind == "error":
            self._handle_error(event)
        elif kind == "presence":
            self.presence = list(event.get("users", []))
            if self.on_presence is not None:
                self.on_presence(self.presence)
        elif kind == "typing" and self.on_typing is not None:
            self.on_typing(str(event.get("user")))

    def _fail_post(self, client_id: str, error: HubbubError) -> None:
        entry = self._pending.pop(client_id, None)
        with contextlib.suppress(ValueError):
            self._inflight.remove(client_id)
        if entry is not None and not entry[1].done():
            entry[1].set_exception(error)

    def _resend(self, client_id: str) -> None:
        entry = self._pending.get(client_id)
        if entry is not None and not entry[1].done():
            self._resend_task = asyncio.ensure_future(self._send_post(client_id, entry[0]))

    def _handle_error(self, event: dict[str, Any]) -> None:
        # Frames are answered in order: an error about a post is about the oldest one in flight.
        if not self._inflight:
            log.warning("room %s: %s: %s", self.name, event.get("code"), event.get("detail"))
            return
        client_id = self._inflight.pop(0)
        entry = self._pending.get(client_id)
        if entry is None:
            return
        _, future = entry
        code = str(event.get("code"))
        if code in ("rate_limited", "server_error"):
            wait = float(event.get("retry_after") or 1.0)
            asyncio.get_running_loop().call_later(wait, self._resend, client_id)
            return
        if not future.done():
            future.set_exception(HubbubError(code, str(event.get("detail"))))
