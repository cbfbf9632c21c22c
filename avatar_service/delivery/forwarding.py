"""Optional forwarding of each generated avatar to UPLOAD_URL as a multipart POST.

The service forwards avatars through the outbox (``AvatarForwarder``, kind ``avatar`` in
delivery.py): durable, retried, bounded by its own deadline, and after the job has already
succeeded for its caller. ``Publisher.publish`` is the same POST made in place, with its own
retries, for callers that want the outcome at once. Delivery failures never raise: they are
recorded (``UploadOutcome``, or the delivery's attempts), so a failed upload never turns a good
generation into an error and never touches the local file. Only wrong arguments raise::

    ValueError        bad url, max_attempts, backoff or backoff_max
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from .outbox import Due, Outbox, Sent
from .retry import (
    backoff_delay,
    describe_transport_error,
    is_retryable_status,
    parse_retry_after,
    redact_url,
)

logger = logging.getLogger(__name__)

# How much of a non-JSON answer is kept in the outcome, and the most read of any answer.
RESPONSE_TEXT_LIMIT = 500
RESPONSE_READ_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class UploadOutcome:
    """What happened to one upload; ``url`` has no user info or query (they may hold secrets)."""

    ok: bool
    url: str
    attempts: int
    status: int | None
    error: str | None
    response: object | None

    def to_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict."""
        return asdict(self)


class Publisher:
    """Posts files to one upload URL with retries; safe to share between threads."""

    def __init__(
        self,
        *,
        url: str,
        field_name: str = "file",
        timeout: httpx.Timeout,
        max_attempts: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upload url must start with http:// or https://, got {url!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be 1 or more, got {max_attempts}")
        if backoff < 0 or backoff_max < 0:
            raise ValueError("backoff and backoff_max must be 0 or more")
        self.url = url
        self.field_name = field_name
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._public_url = redact_url(url)
        self._closed = threading.Event()
        self._client = httpx.Client(timeout=timeout, headers=dict(headers or {}))

    def close(self) -> None:
        """Close the HTTP client; uploads waiting to retry give up at once."""
        self._closed.set()
        self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def publish(
        self,
        path: Path,
        *,
        filename: str,
        content_type: str = "image/png",
        fields: Mapping[str, str] | None = None,
    ) -> UploadOutcome:
        """Upload one file with form ``fields``, retrying transient failures; never raises."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            logger.error("upload of %s not attempted: cannot read it: %s", path, exc)
            return self._outcome(attempts=0, error=f"cannot read {path.name}: {exc.strerror}")
        form = {name: str(value) for name, value in (fields or {}).items()}
        attempt = 0
        while True:
            attempt += 1
            if self._closed.is_set():
                return self._outcome(attempts=attempt - 1, error="publisher closed")
            status, body, error, retry_after, retryable = self._attempt(
                form, filename, content, content_type
            )
            if error is None:
                return self._outcome(ok=True, attempts=attempt, status=status, response=body)
            logger.warning(
                "upload of %s to %s failed (attempt %d of %d): %s",
                filename,
                self._public_url,
                attempt,
                self.max_attempts,
                error,
            )
            if not retryable or attempt >= self.max_attempts:
                logger.error(
                    "upload of %s to %s gave up after %d attempts: %s",
                    filename,
                    self._public_url,
                    attempt,
                    error,
                )
                return self._outcome(attempts=attempt, status=status, error=error, response=body)
            delay = backoff_delay(
                attempt, self.backoff, self.backoff_max, retry_after, jitter=random.random()
            )
            # Waiting on the event rather than sleeping lets close() end the wait at once.
            self._closed.wait(delay)

    def _attempt(
        self, form: dict[str, str], filename: str, content: bytes, content_type: str
    ) -> tuple[int | None, object | None, str | None, float | None, bool]:
        """One POST: (status, parsed answer, error or None, Retry-After seconds, retryable)."""
        try:
            sent = post_file(
                self._client,
                self.url,
                field_name=self.field_name,
                form=form,
                filename=filename,
                content=content,
                content_type=content_type,
            )
        except httpx.RequestError as exc:
            return None, None, describe_transport_error(exc), None, True
        except RuntimeError:
            # httpx raises RuntimeError when close() ran in another thread; anything else is a bug.
            if not self._closed.is_set():
                raise
            return None, None, "publisher closed", None, False
        return sent.status, sent.response, sent.error, sent.retry_after, sent.retryable

    def _outcome(
        self,
        *,
        attempts: int,
        ok: bool = False,
        status: int | None = None,
        error: str | None = None,
        response: object | None = None,
    ) -> UploadOutcome:
        return UploadOutcome(
            ok=ok,
            url=self._public_url,
            attempts=attempts,
            status=status,
            error=error,
            response=response,
        )


def post_file(
    client: httpx.Client,
    url: str,
    *,
    field_name: str,
    form: Mapping[str, str],
    filename: str,
    content: bytes,
    content_type: str,
) -> Sent:
    """One multipart POST of a file; the receiver's answer is kept (JSON or cut text)."""
    files = {field_name: (filename, content, content_type)}
    with client.stream("POST", url, data=dict(form), files=files) as response:
        body = _read_answer(response)
    status = response.status_code
    if response.is_success:
        return Sent(status=status, error=None, response=body)
    return Sent(
        status=status,
        error=f"HTTP {status}",
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        retryable=is_retryable_status(status),
        response=body,
    )


class AvatarForwarder(Outbox):
    """Forwards saved avatars to UPLOAD_URL through the outbox (kind ``avatar``)."""

    kind = "avatar"

    def __init__(self, *, url: str, field_name: str = "file", **options: Any) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upload url must start with http:// or https://, got {url!r}")
        super().__init__(**options)
        self.url = url
        self.field_name = field_name

    def enqueue(
        self,
        *,
        job_id: str,
        path: Path,
        filename: str,
        content_type: str,
        fields: Mapping[str, str],
    ) -> str:
        """Store the forwarding of one avatar file; its delivery id."""
        body = json.dumps(
            {
                "path": str(path),
                "filename": filename,
                "contentType": content_type,
                "fields": dict(fields),
            }
        ).encode()
        return self._store(
            msg_id=f"upl_{uuid.uuid4().hex}",
            job_id=job_id,
            url=self.url,
            label=filename,
            body=body,
        )

    def outcomes(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Per avatar file name: the forwarding's state, attempts and last answer."""
        result = {}
        for delivery in self.deliveries(job_id):
            attempts = delivery["attempts"]
            last = attempts[-1] if attempts else {}
            result[delivery["eventType"]] = {
                "state": delivery["state"],
                "ok": delivery["state"] == "delivered",
                "url": delivery["url"],
                "attempts": len(attempts),
                "status": last.get("status"),
                "error": last.get("error"),
                "response": last.get("response"),
                "nextAttemptAt": delivery["nextAttemptAt"],
            }
        return result

    def _send(self, client: httpx.Client, item: Due) -> Sent:
        """One POST of the avatar file; 5xx, 408, 429 and network errors may be retried."""
        upload = json.loads(item.body)
        try:
            content = Path(upload["path"]).read_bytes()
        except OSError as exc:
            return Sent(
                status=None,
                error=f"cannot read {upload['filename']}: {exc.strerror}",
                retryable=False,
            )
        return post_file(
            client,
            item.url,
            field_name=self.field_name,
            form=upload["fields"],
            filename=upload["filename"],
            content=content,
            content_type=upload["contentType"],
        )


def content_type_of(file_name: str) -> str:
    """The content type of an avatar file, from the extension the service gave it."""
    extension = file_name.rsplit(".", 1)[-1]
    return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}.get(
        extension, "image/png"
    )


def _read_answer(response: httpx.Response) -> object | None:
    """The receiver's answer: parsed JSON when it says JSON, else text cut to 500 chars."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > RESPONSE_READ_LIMIT:
            break
    raw = b"".join(chunks)[:RESPONSE_READ_LIMIT]
    if not raw:
        return None
    content_type = response.headers.get("content-type", "")
    if "json" in content_type.lower() and size <= RESPONSE_READ_LIMIT:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    try:
        text = raw.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return text[:RESPONSE_TEXT_LIMIT]
