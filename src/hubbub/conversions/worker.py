"""The conversion worker: claim a job, convert with progress, renew the lease, finish or release.

Any number of workers run, as `hubbub worker` processes or (embedded default) one thread inside
`hubbub serve`. The database row is the truth; a worker that dies leaves its lease to expire and
another worker takes the job over (``services.job_claim``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from django.db import close_old_connections

from hubbub.conversions import converters, services, wakeup
from hubbub.conversions.models import Job

log = logging.getLogger(__name__)

POLL = 2.0  # seconds between looks for work when nobody wakes us
PROGRESS_EVERY = 0.2  # seconds between progress writes (each is a DB update and an event)


class Released(converters.Cancelled):
    """The worker is stopping: give the job back."""


class Worker:
    def __init__(self) -> None:
        self.id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        wakeup.notify()  # wake our own wait

    def run_forever(self) -> None:
        log.info("worker %s ready", self.id)
        while not self.stopping.is_set():
            close_old_connections()
            try:
                job = services.job_claim(worker=self.id)
            except Exception as exc:
                log.warning("cannot claim jobs (database unreachable?): %r", exc)
                self.stopping.wait(POLL)
                continue
            if job is None:
                wakeup.wait(POLL)
                continue
            try:
                self.run_job(job)
            except Exception as exc:  # never let one job end the worker
                log.exception("job %s: unexpected failure", job.id)
                try:
                    services.job_retry_later(job=job, worker=self.id, error=f"internal error: {exc!r}")
                except Exception:
                    log.exception("job %s: cannot record the failure (its lease will expire)", job.id)
        log.info("worker %s stopped", self.id)

    def run_job(self, job: Job) -> None:
        log.info("job %s: %s → %s (attempt %d)", job.id, job.source, job.target, job.attempts)
        lost = threading.Event()
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(job, lost, done), daemon=True)
        renewer.start()
        for leftover in services.data_path("results", "x").parent.glob(f".{job.id}.*.part"):
            services.remove_quietly(leftover)  # a crashed attempt's partial output
        tmp = services.data_path("results", f".{job.id}.{uuid.uuid4().hex[:8]}.part")
        last = [0.0]

        def progress(percent: int, stage: str) -> None:
            if self.stopping.is_set():
                raise Released()
            if lost.is_set():
                raise converters.Cancelled()
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY and percent < 100:
                return
            last[0] = now
            if not services.job_progress(job=job, worker=self.id, progress=percent, stage=stage):
                raise converters.Cancelled()  # cancelled by its owner, or taken over

        try:
            output = converters.convert(job.source, job.target, Path(job.upload_path), tmp,
                                        dict(job.options), progress)
        except Released:
            services.remove_quietly(tmp)
            services.job_release(job=job, worker=self.id)
            log.info("job %s released", job.id)
        except converters.Cancelled:
            services.remove_quietly(tmp)
            log.info("job %s cancelled or taken over", job.id)
        except converters.ConversionError as exc:
            services.remove_quietly(tmp)
            services.job_failed(job=job, worker=self.id, error=exc.detail)
            log.info("job %s failed: %s", job.id, exc.detail)
        except Exception as exc:
            services.remove_quietly(tmp)
            log.exception("job %s: the converter crashed", job.id)
            services.job_retry_later(job=job, worker=self.id, error=f"internal error: {type(exc).__name__}")
        else:
            # One result file per job, whoever wins: its name is the job's, and only the lease
            # holder may mark the job done.
            final = services.data_path("results", f"{job.id}.{output.extension}")
            os.replace(tmp, final)
            if services.job_done(job=job, worker=self.id, result=final, extension=output.extension,
                                 content_type=output.content_type):
                log.info("job %s done", job.id)
        finally:
            done.set()
            renewer.join(5)

    def _renew(self, job: Job, lost: threading.Event, done: threading.Event) -> None:
        interval = services.LEASE.total_seconds() / 3
        while not done.wait(interval):
            try:
                if not services.job_renew(job=job, worker=self.id):
                    lost.set()
                    return
            except Exception as exc:  # the DB is briefly away: the lease still has time
                log.warning("lease renewal failed: %r", exc)
            finally:
                close_old_connections()


_embedded: tuple[Worker, threading.Thread] | None = None


def start_embedded() -> None:
    """The embedded default: one worker thread inside `hubbub serve`."""
    global _embedded
    if _embedded is None:
        worker = Worker()
        thread = threading.Thread(target=worker.run_forever, name="hubbub-worker", daemon=True)
        thread.start()
        _embedded = (worker, thread)


def stop_embedded(timeout: float = 10.0) -> None:
    global _embedded
    if _embedded is not None:
        worker, thread = _embedded
        worker.stop()
        thread.join(timeout)
        _embedded = None
