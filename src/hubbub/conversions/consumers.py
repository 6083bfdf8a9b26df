"""`/ws/jobs/<job_id>/`: a job's state at once, then every change; only for the job's owner."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.utils import await_many_dispatch
from django.conf import settings

from hubbub.accounts.actors import actor_from
from hubbub.conversions import services
from hubbub.conversions.models import FINAL_STATES, Job
from hubbub.errors import HubbubError
from hubbub.realtime import events, protocol
from hubbub.realtime.hub import get_hub

CHECK_EVERY = 2.0  # seconds: re-read the row while the job runs, in case a live event was lost


class JobConsumer(AsyncWebsocketConsumer):
    """Progress only ever goes up on this socket, and nothing follows a final state."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.conn_id = ""
        self.rich = False
        self.actor_key = ""
        self.room = ""
        self.joined = False
        self.closing = False
        self.progress = -1
        self.final = False
        self.last_text = ""
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1000)
        self.checker: asyncio.Task[None] | None = None
        try:
            await await_many_dispatch([receive, self.outbox.get], self.dispatch)
        except StopConsumer:
            pass
        finally:
            if self.checker is not None:
                self.checker.cancel()
            if self.joined:
                await get_hub().leave(self.room, self)

    def offer(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a state re-read follows every 2 s anyway
            self.outbox.put_nowait(event)

    async def connect(self) -> None:
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        session = self.scope.get("session")
        actor = actor_from(self.scope.get("user"), getattr(session, "session_key", None),
                           settings.HUBBUB_ALLOW_GUESTS)
        if actor is None or self.scope.get("auth_error"):
            await self.accept()
            await self.close(code=protocol.CLOSE_UNAUTHORIZED)
            return
        self.actor_key = actor.key
        self.room = events.job_room(str(job_id))
        await get_hub().join(self.room, self)  # before reading the row: no change falls between
        self.joined = True
        try:
            job = await database_sync_to_async(services.job_for_owner)(actor=actor, job_id=job_id)
        except HubbubError:
            await self.accept()
            await self.close(code=protocol.CLOSE_FORBIDDEN)
            return
        await self.accept()
        await self._show(job)
        if not self.final:
            self.checker = asyncio.ensure_future(self._check(job.pk))

    async def _check(self, pk: Any) -> None:
        while not self.final:
            await asyncio.sleep(CHECK_EVERY)
            job = await database_sync_to_async(Job.objects.get)(pk=pk)
            self.offer({"type": "hub.row", "job": job})

    async def _show(self, job: Job) -> None:
        await self._send(job.progress, job.state in FINAL_STATES, events.encode(services.job_event(job)))

    async def hub_row(self, event: dict[str, Any]) -> None:
        await self._show(event["job"])

    async def hub_job(self, event: dict[str, Any]) -> None:
        await self._send(int(event["progress"]), bool(event["final"]), event["text"])

    async def _send(self, progress: int, final: bool, text: str) -> None:
        # Events may arrive twice (live and by re-reading the row) or late: never send progress
        # lower than already sent, the same event twice, or anything after a final state.
        if self.final or progress < self.progress or text == self.last_text:
            return
        self.progress, self.final, self.last_text = progress, final, text
        await self.send(text_data=text)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # nothing to say to a job socket
