"""`/ws/jobs/<job_id>/`: a job's state at once, then every change; only for the job's owner."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.conf import settings

from hubbub.accounts.actors import actor_from
from hubbub.conversions import services
from hubbub.conversions.models import FINAL_STATES, Job
from hubbub.errors import HubbubError
from hubbub.realtime import db, events, protocol
from hubbub.realtime.hub import get_hub
from hubbub.realtime.sockets import Socket

CHECK_EVERY = 2.0  # seconds: re-read the row while the job runs, in case a live event was lost


class JobSocket(Socket):
    """Progress only ever goes up on this socket, and nothing follows a final state."""

    def __init__(self, scope: Any, receive: Any, send: Any) -> None:
        super().__init__(scope, receive, send)
        self.room = ""
        self.joined = False
        self.progress = -1
        self.final = False
        self.last_text = ""
        self.checker: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        self.session_key = self.scope.get("session_key")
        actor = actor_from(self.scope.get("user"), self.session_key, settings.HUBBUB_ALLOW_GUESTS)
        if actor is None or self.scope.get("auth_error"):
            return await self.refuse(protocol.CLOSE_UNAUTHORIZED)
        self.actor_key = actor.key
        self.room = events.job_room(str(job_id))
        await get_hub().join(self.room, self)  # before reading the row: no change falls between
        self.joined = True
        try:
            job = await db.run(services.job_for_owner)(actor=actor, job_id=job_id)
        except HubbubError:
            return await self.refuse(protocol.CLOSE_FORBIDDEN)
        await self.accept()
        self._show(job)
        if not self.final:
            self.checker = asyncio.ensure_future(self._check(job.pk))

    async def leave(self) -> None:
        if self.checker is not None:
            self.checker.cancel()
            with contextlib.suppress(BaseException):
                await self.checker
        if self.joined:
            self.joined = False
            await get_hub().leave(self.room, self)

    async def _check(self, pk: Any) -> None:
        while not self.final and not self.closing:
            await asyncio.sleep(CHECK_EVERY)
            with contextlib.suppress(Exception):  # the database is away: try again next time
                self._show(await db.run(Job.objects.get)(pk=pk))

    def _show(self, job: Job) -> None:
        self.offer({"type": "hub.job", "progress": job.progress, "final": job.state in FINAL_STATES,
                    "text": events.encode(services.job_event(job))})

    def _news(self, event: dict[str, Any]) -> str | None:
        """The text to send for ``event``, or None. Events may arrive twice (live and by re-reading
        the row) or late: never send progress lower than already sent, the same event twice, or
        anything after a final state."""
        if event["type"] != "hub.job":
            return None
        progress, final, text = int(event["progress"]), bool(event["final"]), event["text"]
        if self.final or progress < self.progress or text == self.last_text:
            return None
        self.progress, self.final, self.last_text = progress, final, text
        return str(text)

    def handle_now(self, event: dict[str, Any]) -> bool:
        if not self.accepted:
            return False
        text = self._news(event)
        if text is not None:
            self.send_now(text)
        return True

    async def handle(self, event: dict[str, Any]) -> None:
        text = self._news(event)
        if text is not None:
            await self.send_text(text)
