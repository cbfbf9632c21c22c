"""What the routes ask of the service: one method per request, over the one registry.

``Avatars`` holds no state of its own. It combines the parts a request needs in the order the
request needs them (a generate: idempotency, framing, the engine, ownership, the wait), so that
a route parses, calls one method here, and serialises what it gets back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..comfyui import Preview
from ..errors import Conflict, Gone, ServiceUnavailable, UnprocessableContent
from ..jobs import GenerateRequest, Job
from ..persistence.database import DatabaseUnavailable
from ..photos.store import image_not_found
from ..storage.base import Download
from ..times import iso
from .access import Caller
from .idempotency import request_fingerprint

if TYPE_CHECKING:
    from ..services import Services

# How long a request with an Idempotency-Key waits for a concurrent one with the same key.
IDEMPOTENCY_WAIT_SECONDS = 5.0
# A request waiting for a concurrent one reads the key again at least this often (the other
# may run in another process, which cannot notify this one).
IDEMPOTENCY_RECHECK_SECONDS = 0.25


@dataclass(frozen=True)
class Submitted:
    """A generate request's job, and whether this request made it (False: a replay)."""

    job: Job
    new: bool


class Avatars:
    """The service's use cases, as the HTTP routes (and the page) call them."""

    def __init__(self, services: Services) -> None:
        self.services = services

    # -- photos ------------------------------------------------------------------------------

    def upload(self, stream: BinaryIO, *, caller: Caller | None) -> dict[str, Any]:
        """Store a photo: validated, normalised, its faces found; its name and size. With keys
        on, it is the caller's key's own."""
        stored = self.services.framing.save_photo(stream)
        if caller is not None:
            self.services.access.claim_photo(stored["imageName"], caller)
        return stored

    def framing(
        self, image_name: str, *, width: int, height: int, caller: Caller | None
    ) -> dict[str, Any]:
        """A stored photo's faces and the crop generate would use for this size."""
        self.check_photo(image_name, caller)
        return self.services.framing.describe(image_name, width=width, height=height)

    def check_photo(self, image_name: object, caller: Caller | None) -> None:
        """404 image_not_found for a photo another key uploaded (as for one never stored)."""
        if not self.may_use_photo(image_name, caller):
            raise image_not_found(image_name)

    def may_use_photo(self, image_name: object, caller: Caller | None) -> bool:
        """Whether the caller may use this photo (keys off, an admin, or its key)."""
        return self.services.access.may_use_photo(image_name, caller)

    # -- jobs --------------------------------------------------------------------------------

    def generate(
        self,
        request: GenerateRequest,
        *,
        wait: bool,
        base_url: str,
        caller: Caller | None,
        idempotency_key: str | None,
        asked_async: bool,
    ) -> Submitted:
        """Start a job (or find the one its Idempotency-Key started); with ``wait``, wait up to
        SYNC_WAIT for it to end. ``asked_async``: the body's ``async``, part of the request."""
        submitted = self.submit(
            request,
            base_url=base_url,
            caller=caller,
            idempotency_key=idempotency_key,
            asked_async=asked_async,
        )
        if not wait:
            return submitted
        try:
            return Submitted(self.wait_for_job(submitted.job), submitted.new)
        except DatabaseUnavailable:
            # The job exists: its caller gets its id (202 + Location) to poll, never an error
            # that would make it pay for a second avatar.
            return submitted

    def submit(
        self,
        request: GenerateRequest,
        *,
        base_url: str,
        caller: Caller | None,
        idempotency_key: str | None,
        asked_async: bool,
    ) -> Submitted:
        """Start a job, or find the one an Idempotency-Key already started."""
        if idempotency_key is None:
            return Submitted(self._start(request, base_url, caller), new=True)
        keys = self.services.idempotency
        scope = _scope(caller)
        fingerprint = request_fingerprint(request, asked_async)
        deadline = time.monotonic() + IDEMPOTENCY_WAIT_SECONDS
        while True:
            seen = keys.version
            found = keys.reserve(scope, idempotency_key, fingerprint)
            if not found.same_body:
                raise UnprocessableContent(
                    "this Idempotency-Key was already used with a different body; "
                    "use a new key for a new request",
                    code="idempotency_key_reused",
                    details={"idempotencyKey": idempotency_key, "jobId": found.job_id},
                )
            if found.new:
                break
            if found.job_id is not None:
                return Submitted(self.services.engine.get(found.job_id), new=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Conflict(
                    "a request with this Idempotency-Key is still being made; retry shortly",
                    code="idempotency_key_in_use",
                    details={"idempotencyKey": idempotency_key},
                )
            keys.wait_for_change(seen, min(remaining, IDEMPOTENCY_RECHECK_SECONDS))
        try:
            job = self._start(request, base_url, caller)
        except BaseException:
            keys.release(scope, idempotency_key)
            raise
        keys.bind(scope, idempotency_key, job.id)
        return Submitted(job, new=True)

    def names_a_job(self, caller: Caller | None, idempotency_key: str) -> bool:
        """Whether the caller's Idempotency-Key already names a job (a request with it is a
        replay, answered with that job)."""
        return self.services.idempotency.job_of(_scope(caller), idempotency_key) is not None

    def _start(self, request: GenerateRequest, base_url: str, caller: Caller | None) -> Job:
        services = self.services
        self.check_photo(request.image_name, caller)
        job = services.engine.submit(services.framing.frame(request), base_url=base_url)
        if caller is not None:
            services.access.claim(job.id, caller)
        return job

    def job(self, job_id: str) -> Job:
        """The job's record (404 job_not_found)."""
        return self.services.engine.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job, waiting a moment for it to end (409 when it had ended otherwise)."""
        services = self.services
        return services.engine.cancel(job_id, wait=services.settings.comfyui_read_timeout)

    def wait_for_job(self, job: Job) -> Job:
        """Wait up to SYNC_WAIT for a job just submitted (``job``: its record then), if a
        long-request slot is free; else answer now."""
        services = self.services
        if not services.long_requests.acquire(blocking=False):
            return services.engine.get(job.id)
        try:
            return services.engine.wait(job.id, services.settings.sync_wait, latest=job)
        finally:
            services.long_requests.release()

    def open_stream(self, job_id: str, stream: Callable[[], Iterator[str]]) -> Iterable[str]:
        """A job's event stream, holding a long-request slot until it is closed (503 when none
        is free)."""
        services = self.services
        services.engine.get(job_id)
        if not services.long_requests.acquire(blocking=False):
            raise ServiceUnavailable(
                "too many open event streams and waiting requests; poll GET /jobs/<jobId> "
                "or try again shortly",
                code="service_busy",
                retry_after=5,
            )
        return _Releasing(stream(), services.long_requests.release)

    def preview(self, job_id: str) -> Preview:
        """The latest live preview of a running job (404 preview_not_found)."""
        return self.services.engine.preview(job_id)

    # -- avatars and styles ------------------------------------------------------------------

    def avatar_file(self, file_name: str) -> Download:
        """A generated avatar to send (404 unknown; 410 once retention deleted it): its file,
        its stream, or with STORAGE_PUBLIC_READS a short-lived link to its object."""
        services = self.services
        deleted_at = services.retention.deleted_at(file_name)
        if deleted_at is not None and not services.avatar_files.exists(file_name):
            raise Gone(
                "this avatar was deleted: avatars are kept for RETENTION_HOURS "
                f"({services.settings.retention_hours:g} h)",
                code="avatar_expired",
                details={"fileName": file_name, "deletedAt": iso(deleted_at)},
            )
        settings = services.settings
        link_for = settings.storage_link_ttl if settings.storage_public_reads else None
        return services.avatar_files.open(file_name, link_for=link_for)

    def styles(self) -> dict[str, Any]:
        """Every style with its parameters, and the default one."""
        return {
            "styles": self.services.describe_styles(),
            "default": self.services.settings.default_style,
        }


def _scope(caller: Caller | None) -> str:
    """Whose idempotency keys a request uses: its API key's, or everyone's without keys."""
    return caller.key_id if caller else "anonymous"


class _Releasing:
    """A WSGI body that calls ``release`` once when the server closes it (even unstarted)."""

    def __init__(self, stream: Iterator[str], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[str]:
        return self._stream

    def close(self) -> None:
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
