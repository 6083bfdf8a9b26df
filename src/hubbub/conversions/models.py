from __future__ import annotations

import uuid

from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})

# The moves a job may make (services check every transition against this table).
TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED,
                                 JobState.RUNNING}),  # RUNNING → RUNNING: another worker takes over
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class Job(models.Model):
    """A conversion. The row is the truth for its state, progress, attempts and lease: a worker
    holds a job only while its lease is unexpired, and any worker may take over an expired one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner_key = models.CharField(max_length=80, db_index=True)  # Actor.key
    owner_name = models.CharField(max_length=150)
    owner_user_id = models.BigIntegerField(null=True, blank=True)
    room = models.CharField(max_length=64, null=True, blank=True)
    filename = models.CharField(max_length=255)  # as uploaded, for display and the result's name
    source = models.CharField(max_length=16)  # sniffed from the content
    target = models.CharField(max_length=16)
    options = models.JSONField(default=dict)
    upload_path = models.CharField(max_length=500)  # generated name under the data dir
    result_path = models.CharField(max_length=500, blank=True, default="")
    result_extension = models.CharField(max_length=16, blank=True, default="")
    result_content_type = models.CharField(max_length=100, blank=True, default="")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED,
                             db_index=True)
    progress = models.PositiveSmallIntegerField(default=0)
    stage = models.CharField(max_length=200, blank=True, default="queued")
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_expires = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.id} {self.source}→{self.target} {self.state}"
