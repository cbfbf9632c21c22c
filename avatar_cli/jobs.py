"""Generate avatars for several photos at once: upload, queue, follow, save, cancel on demand."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .client import TERMINAL, ApiError, AvatarClient, ClientError
from .retry import Outage, passing

POLL_SECONDS = 1.0
# How long a job is followed through a service that cannot be reached (--timeout).
RETRY_FOR_SECONDS = 120.0
T = TypeVar("T")


class Reporter(Protocol):
    """Receives what happens to each photo's job (a progress display)."""

    def update(self, photo: Path, record: dict[str, Any] | None = None, **change: Any) -> None:
        """A change: ``status`` (a word), ``queuePosition``, ``progress``, ``note``."""

    def framed(self, photo: Path, framing: dict[str, Any]) -> None:
        """The face found in the photo and the crop the job will use (before it is queued)."""

    def finished(self, result: JobResult) -> None:
        """The job of this photo has ended (or could not start)."""


def client_error(error: ClientError) -> dict[str, Any]:
    """An error of the client itself (service unreachable, bad answer) in the service's shape."""
    return {"code": "client_error", "message": error.message, "details": {}}


@dataclass
class JobResult:
    """What became of one photo."""

    photo: Path
    status: str = "pending"
    job_id: str | None = None
    seed: int | None = None
    style: str | None = None
    files: list[Path] = field(default_factory=list)
    error: ClientError | None = None
    face: dict[str, Any] | None = None
    crop: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """The avatar was made and saved."""
        return self.status == "succeeded" and self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The result for --json."""
        error = None
        if isinstance(self.error, ApiError):
            error = self.error.to_dict()
        elif self.error is not None:
            error = client_error(self.error)
        return {
            "photo": str(self.photo),
            "jobId": self.job_id,
            "status": self.status,
            "style": self.style,
            "seed": self.seed,
            "files": [str(path) for path in self.files],
            "face": self.face,
            "crop": self.crop,
            "error": error,
        }


class Batch:
    """The jobs of one ``avatar generate``: each photo in its own thread, cancellable together."""

    def __init__(
        self,
        client: AvatarClient,
        reporter: Reporter,
        *,
        request: dict[str, Any],
        out_dir: Path,
        parallel: int,
        retry_for: float = RETRY_FOR_SECONDS,
    ) -> None:
        self.client = client
        self.reporter = reporter
        self.request = request
        self.out_dir = out_dir
        self.retry_for = retry_for
        self._slots = threading.BoundedSemaphore(max(1, parallel))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._results: dict[Path, JobResult] = {}
        self._threads: list[threading.Thread] = []
        self._taken_names: set[Path] = set()

    def start(self, photos: list[Path]) -> None:
        """Start one thread per photo (at most ``parallel`` run at once)."""
        for photo in photos:
            result = JobResult(photo=photo)
            self._results[photo] = result
            thread = threading.Thread(
                target=self._run, args=(result,), name=f"avatar-{photo.name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every job to end; True when all have (short waits keep Ctrl-C responsive)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive():
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return False
                thread.join(left)
        return True

    def cancel(self) -> list[str]:
        """Stop starting jobs and cancel those started; the ids of the jobs asked to cancel."""
        self._stopping.set()
        cancelled = []
        with self._lock:
            started = [
                r.job_id for r in self._results.values() if r.job_id and r.status not in TERMINAL
            ]
        for job_id in started:
            try:
                self.client.cancel(job_id)
                cancelled.append(job_id)
            except ApiError as exc:
                if exc.code != "job_already_ended":
                    cancelled.append(job_id)
            except ClientError:
                pass
        return cancelled

    @property
    def results(self) -> list[JobResult]:
        """The results, in the order of the photos."""
        return list(self._results.values())

    # -- one photo ------------------------------------------------------------------------------

    def _run(self, result: JobResult) -> None:
        with self._slots:
            try:
                if self._stopping.is_set():
                    result.status = "cancelled"
                    return
                self._generate(result)
            except ClientError as exc:
                result.error = exc
                if result.status in {"pending", "uploading", "queued", "running"}:
                    result.status = "failed"
            finally:
                self.reporter.finished(result)

    def _generate(self, result: JobResult) -> None:
        photo = result.photo
        result.status = "uploading"
        self.reporter.update(photo, status="uploading")
        stored = self.client.upload(photo)
        if self._stopping.is_set():
            result.status = "cancelled"
            return
        framing = self.client.framing(
            stored["imageName"],
            width=self.request.get("width"),
            height=self.request.get("height"),
            style=self.request.get("style"),
        )
        result.face = next(iter(framing.get("faces") or []), None)
        result.crop = framing.get("crop")
        self.reporter.framed(photo, framing)
        record = self.client.generate({**self.request, "imageName": stored["imageName"]})
        with self._lock:
            result.job_id = record["jobId"]
        if self._stopping.is_set():  # Ctrl-C came while this job was being created
            with contextlib.suppress(ApiError):
                self.client.cancel(record["jobId"])
        record = self._follow(result, record)
        result.status = record["status"]
        result.seed = record.get("seed")
        result.style = record.get("style")
        if record["status"] == "failed":
            result.error = ApiError.from_record(record.get("error") or {})
        elif record["status"] == "succeeded":
            self.reporter.update(photo, record, status="saving")
            result.files = self._save(result, record)

    def _follow(self, result: JobResult, record: dict[str, Any]) -> dict[str, Any]:
        """Follow the job over its event stream (polling when the stream is refused or breaks)."""
        photo = result.photo
        self.reporter.update(photo, record, status=record["status"])
        if record["status"] in TERMINAL:
            return record
        url = (record.get("links") or {}).get("events")
        if url:
            try:
                for event in self.client.events(url):
                    if event.event in {"state", "queued", "running", *TERMINAL}:
                        record = event.data
                        self.reporter.update(photo, record, status=record.get("status"))
                        if record.get("status") in TERMINAL:
                            return record
                    elif event.event == "position":
                        self.reporter.update(photo, None, **event.data)
                    elif event.event == "progress":
                        self.reporter.update(photo, None, status="running", progress=event.data)
            except ClientError as exc:
                self.reporter.update(
                    photo, note=f"event stream unavailable ({exc.message}); polling"
                )
        job_id = record["jobId"]
        while True:
            record = self._retrying(photo, lambda: self.client.job(job_id))
            self.reporter.update(photo, record, status=record["status"])
            if record["status"] in TERMINAL:
                return record
            time.sleep(POLL_SECONDS)

    def _retrying(self, photo: Path, call: Callable[[], T]) -> T:
        """``call()``, sent again with growing waits while the service cannot be reached (a
        restart), until --timeout seconds have passed since the first failure."""
        outage = Outage(self.retry_for)
        while True:
            try:
                return call()
            except ClientError as exc:
                if not passing(exc) or self._stopping.is_set():
                    raise
                wait = outage.next_wait(exc)
            self.reporter.update(photo, note=f"service unreachable, retrying in {wait:g} s...")
            if self._stopping.wait(wait):  # Ctrl-C: stop retrying
                raise ClientError("interrupted while the service could not be reached")

    def _save(self, result: JobResult, record: dict[str, Any]) -> list[Path]:
        """Download each avatar as <photo>-<style>-<seed>[-n].<ext>, never over an existing file."""
        saved = []
        avatars = record.get("avatars") or []
        for index, avatar in enumerate(avatars):
            suffix = Path(str(avatar.get("fileName", ""))).suffix or ".png"
            stem = f"{result.photo.stem}-{record.get('style')}-{record.get('seed')}"
            if len(avatars) > 1:
                stem += f"-{index + 1}"
            target = self._free_name(stem, suffix)
            self._retrying(result.photo, partial(self.client.download, avatar["url"], target))
            saved.append(target)
        return saved

    def _free_name(self, stem: str, suffix: str) -> Path:
        with self._lock:
            target = self.out_dir / f"{stem}{suffix}"
            number = 2
            while target in self._taken_names or target.exists():
                target = self.out_dir / f"{stem}-{number}{suffix}"
                number += 1
            self._taken_names.add(target)
            return target
