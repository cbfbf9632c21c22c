"""Every change of a job's state: written to its record, then published as an event."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..comfyui import Preview
from ..errors import ServiceError
from ..times import iso
from .coordination import Solo
from .events import JobEvents
from .job import Avatar, Job, JobError, JobProgress, JobStatus
from .records import JobRecords

logger = logging.getLogger(__name__)

# Progress reaches event streams at once, but the record at most this often: a sampler step
# costs no database write (70 steps of a fast GPU would otherwise be 70 commits per job).
PROGRESS_WRITE_INTERVAL = 0.5


class JobLedger:
    """Writes a job's state changes and publishes them; ``on_end`` hooks run when a job ends."""

    def __init__(
        self,
        *,
        records: JobRecords,
        events: JobEvents,
        coordination: Solo,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.events = events
        self.coordination = coordination
        self.clock = clock
        self.on_end: list[Callable[[Job, dict[str, Any]], None]] = []
        self._progress_written: dict[str, float] = {}
        self._preview_written: dict[str, float] = {}
        # The latest progress of each running job, which the record may not have yet.
        self._live_progress: dict[str, JobProgress] = {}

    def pack_ended(self) -> None:
        """Compress the events of the jobs that ended lately (see ``events``): for a thread
        that ends no job (the dispatcher's monitor)."""
        self.events.pack_ended()

    def created(self, job: Job) -> None:
        """A new job is in the service's queue."""
        self.events.publish(job.id, JobStatus.QUEUED, job.to_dict())

    def requeued(self, job: Job) -> None:
        """A job went back to the service's queue (failover, lost prompt)."""
        self._live_progress.pop(job.id, None)
        self.events.publish(job.id, JobStatus.QUEUED, job.to_dict())

    def waiting_at(self, job_id: str, position: int, estimated_start: float | None) -> None:
        """A waiting job's place changed (already stored in bulk by the dispatcher)."""
        data: dict[str, Any] = {"queuePosition": position}
        if estimated_start is not None:
            data["estimatedStartAt"] = iso(estimated_start)
        self.events.publish(job_id, "position", data)

    def queued_at(self, job: Job, position: int) -> Job:
        """A job's place in its server's queue changed."""
        if job.queue_position == position:
            return job
        job = self.records.update(job, queue_position=position)
        self.events.publish(job.id, "position", {"queuePosition": position})
        return job

    def running(self, job: Job) -> Job:
        """ComfyUI started the job's prompt."""
        if job.status == JobStatus.RUNNING:
            return job
        now = self.clock()
        timings = dict(job.timings)
        if job.timings.get("prepareMs") is not None and job.dispatched_at is not None:
            submitted = job.dispatched_at + job.timings["prepareMs"] / 1000
            timings["queuedMs"] = ms(max(0.0, now - submitted))
        job = self.records.update(
            job,
            status=JobStatus.RUNNING,
            started_at=job.started_at or now,
            queue_position=None,
            estimated_start_at=None,
            timings=timings,
        )
        self._progress_written[job.id] = time.monotonic()  # this write counts for progress
        self.events.publish(job.id, JobStatus.RUNNING, job.to_dict())
        return job

    def progress(self, job: Job, progress: JobProgress) -> Job:
        """A node started (``value`` None) or a sampler made a step: published, and written to
        the record when one is due."""
        if self.note_progress(job, progress):
            job = self.write_progress(job)
        return job

    def note_progress(self, job: Job, progress: JobProgress) -> bool:
        """Publish a node start or a step at once, from any thread (nothing when it repeats the
        latest); True when the record is due a write of it (``write_progress``, by the thread
        that holds the job's record)."""
        if progress.repeats(self._live_progress.get(job.id) or job.progress):
            return False
        self._live_progress[job.id] = progress
        return self._announce_progress(job.id, progress)

    def _announce_progress(self, job_id: str, progress: JobProgress) -> bool:
        """Publish a new progress; True when the record is due a write of it."""
        self.events.publish(job_id, "progress", progress.to_dict())
        written = self._progress_written.get(job_id, 0.0)
        return time.monotonic() - written >= PROGRESS_WRITE_INTERVAL

    def write_progress(self, job: Job) -> Job:
        """Write the job's latest progress to its record."""
        self._progress_written[job.id] = time.monotonic()
        progress = self._live_progress.get(job.id)
        if progress is None or progress == job.progress:
            return job
        return self.records.update(job, progress=progress)

    def preview(self, job: Job, frame: Preview | None = None) -> None:
        """A new preview frame is available (kept in the database, at most twice a second,
        when other processes may be asked for it)."""
        if frame is not None and self.coordination.keeps_previews:
            now = time.monotonic()
            if now - self._preview_written.get(job.id, 0.0) >= PROGRESS_WRITE_INTERVAL:
                self._preview_written[job.id] = now
                try:
                    self.records.save_preview(job.id, frame.content_type, frame.data)
                except Exception:  # a preview is a nicety: never let it end the run
                    logger.exception("job %s: could not keep its preview", job.id)
        self.events.publish(job.id, "preview", {"url": job.to_dict()["links"]["preview"]})

    def finish(
        self,
        job: Job,
        status: JobStatus,
        error: ServiceError | None,
        *,
        avatars: list[Avatar] | None = None,
        held_by: str | None = None,
    ) -> Job:
        """End a job: final record and the end hooks (deliveries) in one transaction, then the
        final event.

        ``job`` is the caller's latest view of the record (timings and progress it holds are
        written here). The hooks' writes join the transaction, so the job never ends without
        its deliveries (a crash before the commit leaves the job to be taken up again); a
        failing hook's writes are undone alone (a savepoint) and the job still ends.
        """
        self._progress_written.pop(job.id, None)
        progress = self._live_progress.pop(job.id, None) or job.progress
        now = self.clock()
        record = None if error is None else JobError.of(error, job_id=job.id)
        # In a fleet only the job's holder may end it (a process cut off past its lease has lost
        # the job to another, whose end counts): LeaseLost otherwise.
        # (A worker agent's end is guarded by its own holder, ``held_by``, in any mode.)
        held_by = held_by or self.coordination.end_guard(job)
        database = self.records.database
        with database.transaction():
            job = self.records.update(
                job,
                expect_owner=held_by,
                status=status,
                finished_at=now,
                error=record,
                avatars=avatars if avatars is not None else job.avatars,
                timings={**job.timings, "totalMs": ms(now - job.created_at)},
                progress=progress,
                queue_position=None,
                estimated_start_at=None,
                owner=None,
                lease_expires=None,
            )
            body = job.to_dict()
            for hook in self.on_end:
                try:
                    with database.transaction():
                        hook(job, body)
                except Exception:  # a hook's problem must never change the job's outcome
                    logger.exception("job %s: an end-of-job hook failed", job.id)
        if self._preview_written.pop(job.id, None) is not None:
            try:
                self.records.forget_preview(job.id)
            except Exception:  # the row is small; the next retention sweep may not even need it
                logger.exception("job %s: could not drop its preview", job.id)
        self.events.publish(job.id, status, body, final=True, outcome=job)
        return job


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds."""
    return round(seconds * 1000)
