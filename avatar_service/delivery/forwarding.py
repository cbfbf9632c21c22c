"""Optional forwarding of each generated avatar to UPLOAD_URL as a multipart POST.

The service forwards avatars through the outbox (``AvatarForwarder``, kind ``avatar`` in
outbox.py): durable, retried, bounded by its own deadline, and after the job has already
succeeded for its caller. The avatar is read when it is sent, from the storage (a local folder
or a bucket, through ``AvatarStore``), so any process may send it. Delivery failures never
raise: they are recorded (the delivery's attempts; a storage outage is retried like a 5xx), so
a failed upload never turns a good generation into an error and never touches the stored
avatar. Only wrong arguments raise::

    ValueError        bad url, max_attempts, backoff or backoff_max
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from ..errors import StorageUnavailable
from ..storage.avatars import AvatarStore
from ..storage.base import content_type_of
from .outbox import Due, Outbox, Sent

__all__ = ["AvatarForwarder", "content_type_of"]
from .retry import is_retryable_status, parse_retry_after

# How much of a non-JSON answer is kept in the outcome, and the most read of any answer.
RESPONSE_TEXT_LIMIT = 500
RESPONSE_READ_LIMIT = 1024 * 1024


def _post_file(
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

    def __init__(
        self,
        *,
        url: str,
        field_name: str = "file",
        avatars: AvatarStore | None = None,
        **options: Any,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upload url must start with http:// or https://, got {url!r}")
        super().__init__(**options)
        self.url = url
        self.field_name = field_name
        self.avatars = avatars

    def enqueue(
        self,
        *,
        job_id: str,
        filename: str,
        content_type: str,
        fields: Mapping[str, str],
        path: Path | None = None,
    ) -> str:
        """Store the forwarding of one avatar; its delivery id. The avatar is read from the
        avatar store by ``filename`` when it is sent, or from a local ``path`` when given."""
        upload: dict[str, Any] = {
            "filename": filename,
            "contentType": content_type,
            "fields": dict(fields),
        }
        if path is not None:
            upload["path"] = str(path)
        body = json.dumps(upload).encode()
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
            content = self._content(upload)
        except StorageUnavailable as exc:
            return Sent(status=None, error=f"storage: {exc.message}", retryable=True)
        except OSError as exc:
            return Sent(
                status=None,
                error=f"cannot read {upload['filename']}: {exc.strerror or 'not stored'}",
                retryable=False,
            )
        return _post_file(
            client,
            item.url,
            field_name=self.field_name,
            form=upload["fields"],
            filename=upload["filename"],
            content=content,
            content_type=upload["contentType"],
        )

    def _content(self, upload: Mapping[str, Any]) -> bytes:
        """The avatar's bytes: a local file (deliveries stored by earlier releases, or given
        a path), else the stored avatar of that name."""
        if "path" in upload:
            return Path(upload["path"]).read_bytes()
        if self.avatars is None:
            raise FileNotFoundError(upload["filename"])
        return self.avatars.read(upload["filename"])


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
