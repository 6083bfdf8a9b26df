"""Writes for conversion jobs: create, claim (with a lease), progress, finish, fail, release, cancel.

Every state change goes through :func:`_move`, which checks it against ``TRANSITIONS`` and, for a
worker, against the lease it holds: a worker whose lease was taken over can no longer change the
job. Each change is published (after commit) to the job's socket group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from hubbub.accounts.actors import Actor
from hubbub.chat import selectors as chat_selectors
from hubbub.conversions.models import FINAL_STATES, TRANSITIONS, Job, JobState
from hubbub.errors import HubbubError, Invalid, NotFound
from hubbub.realtime import events, protocol
from hubbub.realtime.hub import publish_threadsafe

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)  # renewed every LEASE/3 while a worker converts
MAX_ATTEMPTS = 3


def data_path(*parts: str) -> Path:
    path = Path(settings.HUBBUB_DATA_DIR).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def job_event(job: Job) -> dict[str, Any]:
    return {
        "type": "job",
        "id": str(job.id),
        "state": job.state,
        "progress": job.progress,
        "stage": job.stage,
        "error": job.error or None,
        "result_url": f"/api/conversions/{job.id}/result" if job.state == JobState.DONE else None,
    }


def job_out(job: Job) -> dict[str, Any]:
    """The Job of CONTRACT.md §3."""
    event = job_event(job)
    del event["type"]
    event.update({"source": job.source, "target": job.target, "room": job.room, "filename": job.filename})
    return event


def _publish(job: Job) -> None:
    event = {"kind": "job", "room": events.job_room(str(job.id)), "progress": job.progress,
             "final": job.state in FINAL_STATES, "text": events.encode(job_event(job))}
    transaction.on_commit(lambda: publish_threadsafe(event))


def job_create(*, actor: Actor, filename: str, upload: Path, source: str, target: str,
               options: dict[str, Any], room: str | None) -> Job:
    if room is not None:
        if not protocol.valid_room_name(room):
            raise Invalid("room: 1-64 characters of letters, digits, '_' or '-'")
        found = chat_selectors.room_for_reading(actor=actor, name=room)
        if found is None:
            from hubbub.chat.services import room_open

            room_open(actor=actor, name=room)
    with transaction.atomic():
        job = Job.objects.create(
            owner_key=actor.key, owner_name=actor.name, owner_user_id=actor.user_id, room=room,
            filename=filename[:255], source=source, target=target, options=options,
            upload_path=str(upload),
        )
        _publish(job)
        transaction.on_commit(wake_workers)
    return job


def wake_workers() -> None:
    from hubbub.conversions import wakeup

    wakeup.notify()


def job_for_owner(*, actor: Actor, job_id: str) -> Job:
    """The job, for its owner only: anyone else gets NotFound (not even its existence)."""
    try:
        job = Job.objects.get(id=uuid.UUID(str(job_id)))
    except (Job.DoesNotExist, ValueError, TypeError):
        raise NotFound("no such conversion") from None
    if job.owner_key != actor.key:
        raise NotFound("no such conversion")
    return job


def _move(job: Job, state: str, *, worker: str | None = None, **fields: Any) -> bool:
    """Move ``job`` to ``state`` if the transition is allowed (and, for a worker, only while it
    holds the lease). Returns False when the row had moved on meanwhile. Call inside atomic()."""
    if state not in TRANSITIONS[job.state]:
        raise Invalid(f"a {job.state} job cannot become {state}")
    query = Job.objects.filter(pk=job.pk, state=job.state)
    if worker is not None:
        query = query.filter(lease_owner=worker)
    fields["state"] = state
    fields["updated_at"] = timezone.now()
    if state in FINAL_STATES:
        fields["finished_at"] = fields["updated_at"]
        fields.setdefault("lease_owner", "")
        fields.setdefault("lease_expires", None)
    if query.update(**fields) != 1:
        return False
    for key, value in fields.items():
        setattr(job, key, value)
    _publish(job)
    return True


def job_claim(*, worker: str) -> Job | None:
    """Atomically take the oldest queued job, or a running one whose worker's lease expired."""
    now = timezone.now()
    with transaction.atomic():
        job = (
            Job.objects.select_for_update(skip_locked=True)
            .filter(Q(state=JobState.QUEUED) | Q(state=JobState.RUNNING, lease_expires__lt=now))
            .order_by("created_at")
            .first()
        )
        if job is None:
            return None
        if job.attempts >= MAX_ATTEMPTS:
            _finish_failed(job, f"gave up after {job.attempts} attempts (the worker stopped each time)")
            return None
        moved = _move(job, JobState.RUNNING, lease_owner=worker, lease_expires=now + LEASE,
                      attempts=job.attempts + 1, stage="starting")
        return job if moved else None


def job_renew(*, job: Job, worker: str) -> bool:
    """Extend the lease. False when this worker no longer holds the job (taken over or cancelled)."""
    return Job.objects.filter(pk=job.pk, state=JobState.RUNNING, lease_owner=worker).update(
        lease_expires=timezone.now() + LEASE) == 1


def job_progress(*, job: Job, worker: str, progress: int, stage: str) -> bool:
    """Record progress. It never goes down: a job restarted by another worker reports its old
    value until the new run passes it. False when this worker no longer holds the job."""
    progress = max(job.progress, min(100, max(0, progress)))
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, state=JobState.RUNNING, lease_owner=worker).update(
            progress=progress, stage=stage[:200], updated_at=timezone.now())
        if updated != 1:
            return False
        job.progress, job.stage = progress, stage[:200]
        _publish(job)
    return True


def job_done(*, job: Job, worker: str, result: Path, extension: str, content_type: str) -> bool:
    with transaction.atomic():
        moved = _move(job, JobState.DONE, worker=worker, progress=100, stage="done",
                      result_path=str(result), result_extension=extension,
                      result_content_type=content_type)
        if moved:
            _post_outcome(job)
    return moved


def job_failed(*, job: Job, worker: str | None, error: str) -> bool:
    with transaction.atomic():
        return _finish_failed(job, error, worker=worker)


def _finish_failed(job: Job, error: str, worker: str | None = None) -> bool:
    moved = _move(job, JobState.FAILED, worker=worker, error=error[:2000], stage="failed")
    if moved:
        _post_outcome(job)
    return moved


def job_release(*, job: Job, worker: str) -> bool:
    """Give a running job back (the worker is stopping): another worker starts it again; the
    interrupted attempt does not count."""
    with transaction.atomic():
        return _move(job, JobState.QUEUED, worker=worker, lease_owner="", lease_expires=None,
                     attempts=max(0, job.attempts - 1), stage="waiting for a worker")


def job_retry_later(*, job: Job, worker: str, error: str) -> bool:
    """An attempt failed for a reason that may pass (the worker, not the file): queue it again,
    or fail it after MAX_ATTEMPTS."""
    with transaction.atomic():
        if job.attempts >= MAX_ATTEMPTS:
            return _finish_failed(job, f"{error} (after {job.attempts} attempts)", worker=worker)
        return _move(job, JobState.QUEUED, worker=worker, lease_owner="", lease_expires=None,
                     error=error[:2000], stage="retrying")


def job_cancel(*, actor: Actor, job_id: str) -> Job:
    with transaction.atomic():
        job = job_for_owner(actor=actor, job_id=job_id)
        if job.state not in FINAL_STATES:
            _move(job, JobState.CANCELLED, stage="cancelled")
            job.refresh_from_db()
    return job


def job_is_current(*, job: Job, worker: str) -> bool:
    return Job.objects.filter(pk=job.pk, state=JobState.RUNNING, lease_owner=worker).exists()


def _post_outcome(job: Job) -> None:
    """The outcome as a message in the job's room: once, whatever happens (the client_id makes a
    second post by a racing worker a no-op)."""
    if not job.room:
        return
    from hubbub.chat.services import message_post

    if job.state == JobState.DONE:
        text = (f"converted {job.filename} to {job.target}: "
                f"/api/conversions/{job.id}/result")
    else:
        text = f"could not convert {job.filename} to {job.target}: {job.error}"
    author = Actor(key=job.owner_key, name=job.owner_name, user_id=job.owner_user_id)
    try:
        # A savepoint: a refused post (the owner lost access to the room meanwhile) must not undo
        # the job's own state change.
        with transaction.atomic():
            message_post(actor=author, room_name=job.room,
                         body=text[: settings.HUBBUB_MAX_MESSAGE_CHARS], client_id=f"job-{job.id}")
    except HubbubError as exc:
        log.info("job %s: outcome not posted in %s: %s", job.id, job.room, exc.detail)


def parse_options(raw: str | None) -> dict[str, Any]:
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise Invalid("options: not valid JSON") from None
    if not isinstance(value, dict):
        raise Invalid("options: must be a JSON object")
    return value


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
