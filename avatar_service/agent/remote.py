"""The engine's stores, for an agent: job records, the ledger, photos and avatars, all remote.

The agent runs the service's own engine (``Dispatcher``, ``ServerWorker``, ``PromptRun``) in
front of its ComfyUI; what the engine would write to the database or the disk goes to the
service over HTTP instead (``api.ServiceApi``). The engine's events (running, progress, queue
position, previews) go out in order from one sender thread, in batches, so a run never waits
on the network for them; every other call first sends what is queued, so the service sees a
job's changes in the order they happened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

from ..comfyui import Preview
from ..errors import ServiceError
from ..jobs.job import Avatar, Job, JobProgress, JobStatus
from ..jobs.ledger import PROGRESS_WRITE_INTERVAL, JobLedger
from ..jobs.records import AbandonedPrompt, JobRecords
from ..persistence.database import DatabaseUnavailable
from ..photos.geometry import Crop
from .api import ServiceApi

logger = logging.getLogger(__name__)

# Events kept for the service while it does not answer (the oldest are dropped past this).
MAX_PENDING_EVENTS = 10_000
SEND_RETRY = 1.0
# How long events wait to go out with the ones that follow them (seconds).
LINGER = 0.1


class EventSender:
    """Sends the engine's events to the service in order, in batches, from one thread."""

    def __init__(self, api: ServiceApi, *, on_lost: Callable[[list[str]], None]) -> None:
        self.api = api
        self.on_lost = on_lost
        self._queue: deque[dict[str, Any] | tuple[str, Preview]] = deque(maxlen=MAX_PENDING_EVENTS)
        self._changed = threading.Condition()
        self._busy = False
        self._stopping = False
        self._flushing = 0  # callers waiting for everything to be sent: no lingering
        self._first_at = 0.0  # when the oldest queued event was queued
        self._thread = threading.Thread(target=self._run, name="agent events", daemon=True)
        self._thread.start()

    def send(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """Queue one event of a job."""
        with self._changed:
            if not self._queue:
                self._first_at = time.monotonic()
            self._queue.append({"jobId": job_id, "kind": kind, "data": data})
            self._changed.notify_all()

    def send_preview(self, job_id: str, frame: Preview) -> None:
        """Queue a live preview frame."""
        with self._changed:
            if not self._queue:
                self._first_at = time.monotonic()
            self._queue.append((job_id, frame))
            self._changed.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued has been sent (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._flushing += 1
            self._changed.notify_all()
            try:
                while self._queue or self._busy:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DatabaseUnavailable(
                            "the service did not take the job's events in time"
                        )
                    self._changed.wait(remaining)
            finally:
                self._flushing -= 1

    def stop(self) -> None:
        """Stop sending (what is still queued is dropped)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stopping:
                    self._changed.wait()
                # A sampler's steps come tens of milliseconds apart: they go out together,
                # LINGER after the first, unless a caller waits for them.
                while not self._flushing and not self._stopping:
                    remaining = self._first_at + LINGER - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                if self._stopping:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._send(batch)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _send(self, batch: list[dict[str, Any] | tuple[str, Preview]]) -> None:
        """Send a batch in order: events together, each preview on its own."""
        events: list[dict[str, Any]] = []
        for item in [*batch, None]:
            if isinstance(item, dict):
                events.append(item)
                continue
            if events:
                self._deliver(partial(self._send_events, list(events)))
                events.clear()
            if item is not None:
                job_id, frame = item
                self._deliver(partial(self.api.preview, job_id, frame.content_type, frame.data))

    def _send_events(self, events: list[dict[str, Any]]) -> None:
        self.on_lost(self.api.events(events))

    def _deliver(self, call: Callable[[], None]) -> None:
        """One call, tried again while the service does not answer (until stopped)."""
        while not self._stopping:
            try:
                call()
                return
            except DatabaseUnavailable as exc:
                logger.warning("could not send events to the service (%s); trying again", exc)
                time.sleep(SEND_RETRY)
            except Exception:  # an event refused is lost, not the run
                logger.exception("the service refused an event")
                return


class RemoteRecords(JobRecords):
    """Job records kept by the service: the calls the engine makes of its records, over HTTP.

    Only what a worker's engine calls is here; the queue's other questions are the service's.
    """

    def __init__(self, api: ServiceApi, sender: EventSender) -> None:  # no database here
        self.api = api
        self.sender = sender
        self.held: dict[str, Job] = {}  # the jobs this agent holds, as last seen
        self.abandoned: list[AbandonedPrompt] = []  # from the latest heartbeat
        self._abandon: set[str] = set()  # jobs whose prompt could not be withdrawn
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to close: the service keeps the records."""

    def claim_next(
        self,
        server: str,
        owner: str,
        *,
        exclude_styles: Iterable[str] = (),
        lease_seconds: float = 60.0,
        now: float | None = None,
    ) -> Job | None:
        """The oldest waiting job for this agent's server (the service waits a while for one)."""
        job = self.api.claim(owner, sorted(set(exclude_styles)))
        if job is not None:
            self.note(job)
        return job

    def get(self, job_id: str) -> Job | None:
        """The job as the service keeps it, while this agent holds it (else None)."""
        self.sender.flush()
        job = self.api.job(job_id)
        if job is not None:
            self.note(job)
        return job

    def update(self, job: Job, *, expect_owner: str | None = None, **changes: Any) -> Job:
        """Change the record's fields (the service checks that this agent still holds it)."""
        self.sender.flush()
        updated = self.api.update(replace(job, **changes), changes)
        self.note(updated)
        return updated

    def requeue(self, job: Job, *, front: bool) -> Job:
        """Give the job back to the head of the queue (its prompt was withdrawn, or left)."""
        self.sender.flush()
        with self._lock:
            abandoned = job.id in self._abandon
            self._abandon.discard(job.id)
            self.held.pop(job.id, None)
        return self.api.requeue(job.id, abandon_prompt=abandoned)

    def abandon_prompt(self, server: str, prompt_id: str, job_id: str) -> None:
        """The job's prompt could not be withdrawn: said with the job's requeue."""
        with self._lock:
            self._abandon.add(job_id)

    def abandoned_prompts(self, server: str) -> list[AbandonedPrompt]:
        """Prompts to remove from this agent's server (from the latest heartbeat)."""
        return list(self.abandoned)

    def forget_abandoned(self, server: str, prompt_id: str) -> None:
        """A prompt was removed from this agent's server."""
        self.abandoned = [p for p in self.abandoned if p.prompt_id != prompt_id]
        self.api.forget_abandoned(prompt_id)

    def forget(self, job_id: str) -> None:
        """The job ended or went elsewhere."""
        with self._lock:
            self.held.pop(job_id, None)
            self._abandon.discard(job_id)

    def kept(self) -> set[str]:
        """The jobs kept here."""
        with self._lock:
            return set(self.held)

    def prompts(self) -> list[str]:
        """The prompts of the jobs this agent holds, on its server."""
        with self._lock:
            return [job.prompt_id for job in self.held.values() if job.prompt_id]

    def note(self, job: Job) -> None:
        """A job this agent holds, as the service sent it."""
        with self._lock:
            self.held[job.id] = job


class RemoteLedger(JobLedger):
    """The ledger of an agent: each change of a job goes to the service, which writes the
    record and publishes the event as it would for its own workers."""

    def __init__(self, records: RemoteRecords, uploads: AvatarUploads) -> None:
        self.remote = records
        self.records = records
        self.api = records.api
        self.sender = records.sender
        self.uploads = uploads
        self.clock = time.time
        self.on_end = []
        self._preview_sent: dict[str, float] = {}
        self._live_progress: dict[str, JobProgress] = {}

    def pack_ended(self) -> None:
        """Nothing to pack: the service keeps the events of an agent's jobs."""

    def known(self) -> set[str]:
        """The jobs something is kept for here."""
        return {
            *self.remote.kept(),
            *self._live_progress,
            *self._preview_sent,
            *self.uploads.jobs(),
        }

    def forget(self, job_id: str) -> None:
        """A job no longer followed here: nothing is kept for it any more."""
        self._live_progress.pop(job_id, None)
        self._preview_sent.pop(job_id, None)
        self.uploads.take(job_id)
        self.remote.forget(job_id)

    def requeued(self, job: Job) -> None:
        """A lost prompt is queued again here (a job given back is the service's to publish)."""
        self._live_progress.pop(job.id, None)
        if job.owner is not None:
            self.sender.send(job.id, "requeued", {})

    def queued_at(self, job: Job, position: int) -> Job:
        """The prompt's place in this server's queue changed."""
        if job.queue_position == position:
            return job
        self.sender.send(job.id, "position", {"position": position})
        return replace(job, queue_position=position)

    def running(self, job: Job) -> Job:
        """ComfyUI started the prompt."""
        if job.status == JobStatus.RUNNING:
            return job
        job = replace(
            job,
            status=JobStatus.RUNNING,
            started_at=job.started_at or self.clock(),
            queue_position=None,
        )
        self.sender.send(job.id, "running", {"timings": job.timings})
        return job

    def _announce_progress(self, job_id: str, progress: JobProgress) -> bool:
        """A node started, or a sampler made a step: sent to the service (which writes the
        record), so never due a write here."""
        self.sender.send(job_id, "progress", progress.to_dict())
        return False

    def write_progress(self, job: Job) -> Job:
        """Nothing to write here: the service keeps the record."""
        return job

    def preview(self, job: Job, frame: Preview | None = None) -> None:
        """A new preview frame: sent at most twice a second."""
        now = time.monotonic()
        if frame is None or now - self._preview_sent.get(job.id, 0.0) < PROGRESS_WRITE_INTERVAL:
            return
        self._preview_sent[job.id] = now
        self.sender.send_preview(job.id, frame)

    def finish(
        self,
        job: Job,
        status: JobStatus,
        error: ServiceError | None,
        *,
        avatars: list[Avatar] | None = None,
        held_by: str | None = None,
    ) -> Job:
        """End the job at the service, with its avatars (sent with the end, in one request)."""
        try:
            self.sender.flush()
            result: dict[str, Any] = {"status": str(status), "timings": job.timings}
            if error is not None:
                result["error"] = {"status": error.status, **error.to_dict()}
            progress = self._live_progress.get(job.id)
            if progress is not None:
                result["progress"] = progress.to_dict()
            files = self.uploads.take(job.id) if status == JobStatus.SUCCEEDED else {}
            return self.api.finish(job.id, result, files)
        finally:
            self.forget(job.id)


class RemotePhotos:
    """The photo of a job this agent holds, as the service prepares it for ComfyUI."""

    def __init__(self, api: ServiceApi) -> None:
        self.api = api

    def prepared(self, image_name: str, crop: Crop | None) -> bytes:
        """The photo, cut to the crop (those of a job this agent holds)."""
        return self.api.photo(image_name, None if crop is None else crop.to_dict())


class AvatarUploads:
    """The avatars of each job, kept in memory until the job's end sends them to the service."""

    def __init__(self) -> None:
        self._files: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    def save(self, job_id: str, index: int, data: bytes, extension: str) -> str:
        """Keep one avatar of a job; its file name."""
        name = f"{job_id}_{index}.{extension}"
        with self._lock:
            self._files.setdefault(job_id, {})[name] = data
        return name

    def jobs(self) -> set[str]:
        """The jobs whose avatars are kept here."""
        with self._lock:
            return set(self._files)

    def take(self, job_id: str) -> dict[str, bytes]:
        """A job's avatars, forgotten here."""
        with self._lock:
            return self._files.pop(job_id, {})
