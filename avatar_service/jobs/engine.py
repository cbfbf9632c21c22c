"""The job engine's public face: submit, look up, wait for, cancel and preview jobs.

A new job is recorded in the service's own queue (``records``) and nothing else happens here:
the dispatcher's workers pull it when a server has room. Queued jobs cost no thread; only jobs
a server holds (at most ``slots`` per server) have one.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..comfyui import Preview
from ..errors import NotFound, ServiceUnavailable
from ..persistence.database import DatabaseUnavailable
from ..photos.geometry import Crop
from . import outcomes
from .dispatcher import Dispatcher
from .events import JobEvents
from .job import Job, JobStatus
from .ledger import JobLedger
from .records import JobRecords

logger = logging.getLogger(__name__)

# Seeds chosen by the service stay below 2**53 so JavaScript clients read them exactly.
RANDOM_SEED_LIMIT = 2**53
# While no server is usable, a new job looks at the fleet's registry again this often.
SERVER_RECHECK = 0.25
# Retry-After bounds for a full queue.
RETRY_AFTER_MIN, RETRY_AFTER_MAX, RETRY_AFTER_UNKNOWN = 1, 600, 10


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request for one avatar generation."""

    image_name: str
    gender: str
    width: int
    height: int
    style: str
    seed: int | None = None
    callback_url: str | None = None
    crop: Crop | None = None


class JobEngine:
    """Creates jobs in the service's queue and answers questions about them."""

    def __init__(
        self,
        *,
        records: JobRecords,
        events: JobEvents,
        ledger: JobLedger,
        dispatcher: Dispatcher,
        photos_exist: Callable[[str], object],
        job_timeout: float,
        public_base_url: str = "",
        connect_wait: float = 2.0,
        max_active_jobs: int = 256,
        max_queued_jobs: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self.events = events
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.photos_exist = photos_exist
        self.job_timeout = job_timeout
        self.public_base_url = public_base_url.rstrip("/")
        self.connect_wait = connect_wait
        self.max_active_jobs = max_active_jobs
        self.max_queued_jobs = max_queued_jobs
        self.clock = clock
        self._admission = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> int:
        """Take up jobs left by the previous run, then start the workers; jobs in flight."""
        return self.dispatcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following jobs, leaving unfinished ones to be resumed by the next start."""
        self._stopping.set()
        self.dispatcher.stop(timeout)

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, request: GenerateRequest, *, base_url: str) -> Job:
        """Record a new job in the service's queue; the photo must exist."""
        self.photos_exist(request.image_name)
        if self._stopping.is_set() or self.events.closing:
            raise ServiceUnavailable("the service is restarting; try again shortly", retry_after=5)
        now = self.clock()
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_LIMIT)
        job = Job(
            id=uuid.uuid4().hex,
            status=JobStatus.QUEUED,
            style=request.style,
            image_name=request.image_name,
            gender=request.gender,
            width=request.width,
            height=request.height,
            seed=seed,
            base_url=self.public_base_url or base_url.rstrip("/"),
            callback_url=request.callback_url,
            crop=request.crop,
            created_at=now,
            deadline=now + self.job_timeout,
            queue_order=now,
        )
        with self._admission:  # count and insert in one step, so a burst cannot overshoot
            self._admit()
            self.records.insert(job)
        self.ledger.created(job)
        try:
            if not self._wait_for_a_server():
                taken = self.records.take_waiting(job.id)
                if taken is not None:
                    error = outcomes.no_server(self.dispatcher.reasons())
                    logger.warning("job %s failed: %s %s", job.id, error.code, error.message)
                    return self.ledger.finish(taken, JobStatus.FAILED, error)
        except DatabaseUnavailable as exc:
            # The job is recorded: its caller gets its id, and the queue takes it up (or ends it
            # at its deadline) once the database answers again.
            logger.warning(
                "job %s: the database stopped answering after it was queued: %s", job.id, exc
            )
        self.dispatcher.notify()
        return job

    def _admit(self) -> None:
        """Refuse a new job when the service holds too many (503 service_busy)."""
        unfinished, waiting = self.records.unfinished_counts()
        if unfinished >= self.max_active_jobs:
            raise self._busy(
                f"{unfinished} jobs are in flight (MAX_ACTIVE_JOBS); try again shortly",
                {"maxActiveJobs": self.max_active_jobs},
            )
        if waiting >= self.max_queued_jobs:
            raise self._busy(
                f"{waiting} jobs are waiting (MAX_QUEUED_JOBS); try again shortly",
                {"maxQueuedJobs": self.max_queued_jobs},
            )

    def _busy(self, message: str, details: dict[str, int]) -> ServiceUnavailable:
        drain = self.dispatcher.drain_seconds
        retry_after = (
            RETRY_AFTER_UNKNOWN
            if drain is None
            else min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, round(drain)))
        )
        return ServiceUnavailable(
            message, code="service_busy", details=details, retry_after=retry_after
        )

    def _wait_for_a_server(self) -> bool:
        """Whether some server can take jobs, waiting up to ``connect_wait`` for one.

        A server connecting wakes the wait (the dispatcher is notified); servers of other
        processes (a fleet) are read from the registry again every ``SERVER_RECHECK`` seconds.
        """
        dispatcher = self.dispatcher
        deadline = time.monotonic() + self.connect_wait
        while True:
            with dispatcher.changed:
                seen = dispatcher.version
            if dispatcher.any_usable():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with dispatcher.changed:
                if dispatcher.version == seen:
                    dispatcher.changed.wait(min(remaining, SERVER_RECHECK))

    def get(self, job_id: str) -> Job:
        """The job record; NotFound if unknown."""
        job = self.records.get(job_id) if _looks_like_job_id(job_id) else None
        if job is None:
            raise NotFound("unknown job", code="job_not_found", details={"jobId": job_id})
        return job

    def wait(self, job_id: str, timeout: float, *, latest: Job | None = None) -> Job:
        """Wait up to ``timeout`` seconds for the job to end; return its record either way.

        ``latest``: the caller's own fresh view of the record (it just submitted the job),
        read again only after the wait.
        """
        job = latest if latest is not None and latest.id == job_id else self.get(job_id)
        if job.ended or timeout <= 0:
            return job
        # With a fleet another process may run the job: its events arrive by notification, and
        # the record (the source of truth) is read again every ``recheck_interval`` seconds in
        # case one is missed. One process publishes every event itself: one wait suffices.
        recheck = self.dispatcher.coordination.recheck_interval
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ended, outcome = self.events.wait_ended(
                job_id, remaining if recheck is None else min(remaining, recheck)
            )
            # The record the job's end was written with, handed over by this process's ledger
            # (read again when the end came from elsewhere).
            job = outcome if ended and isinstance(outcome, Job) else self.get(job_id)
            if job.ended or self.events.closing or recheck is None:
                return job
            if deadline - time.monotonic() <= 0:
                return job

    def cancel(self, job_id: str, *, wait: float = 0.0) -> Job:
        """Cancel a job: take it out of the service's queue, or withdraw its prompt from ComfyUI
        (removed from the queue, or interrupted by its own prompt_id).

        Waits up to ``wait`` seconds for the job to end; Conflict if it ended otherwise.
        """
        job = self.get(job_id)
        if job.ended:
            raise outcomes.already_ended(job)
        if not job.cancel_requested:
            job = self.records.update(job, cancel_requested=True)
        taken = self.records.take_waiting(job_id)
        if taken is not None:
            return self.ledger.finish(taken, JobStatus.CANCELLED, None)
        self.dispatcher.cancel(job_id)
        job = self.wait(job_id, wait)
        if job.ended and job.status != JobStatus.CANCELLED:
            raise outcomes.already_ended(job)
        return job

    def preview(self, job_id: str) -> Preview:
        """The latest live preview image of a running job; NotFound when there is none."""
        self.get(job_id)
        run = self.dispatcher.find_run(job_id)
        preview = run.preview if run is not None else None
        if preview is None:  # another process of a fleet may run the job
            preview = self.dispatcher.coordination.stored_preview(job_id)
        if preview is None:
            raise NotFound(
                "no preview for this job (none sent yet, or the job is not running)",
                code="preview_not_found",
                details={"jobId": job_id},
            )
        return preview


def _looks_like_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
