"""A small HTTP client of the avatar service: uploads, jobs, their event streams and files.

Exceptions::

    ClientError               the service could not be reached, or answered something unreadable
    ├── Unreachable           no answer at all: refused, reset, timed out (a restart may end it)
    └── ApiError              the service answered an error: status, code, message, details
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Event streams send a keep-alive at least every 15 s; four missed ones mean the stream is gone.
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# What a 401 does not say: how this command sends a key.
KEY_HINT = "(use --key KEY or set AVATAR_KEY)"


class ClientError(Exception):
    """The service could not be reached or answered something unreadable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unreachable(ClientError):
    """No answer came: the connection was refused, broke, or timed out."""


class ApiError(ClientError):
    """An error answered by the service, in its one JSON shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = dict(details or {})
        self.retry_after = retry_after

    @classmethod
    def from_record(cls, error: Mapping[str, Any], status: int = 0) -> ApiError:
        """The error stored on a failed job record."""
        return cls(
            status,
            str(error.get("code", "failed")),
            str(error.get("message", "the job failed")),
            error.get("details") or {},
        )

    def describe(self) -> str:
        """One readable line: the message, each bad field, and the code."""
        text = self.message
        fields = self.details.get("fields")
        if self.code == "invalid_fields" and isinstance(fields, Mapping):
            text = "; ".join(f"{name}: {problem}" for name, problem in fields.items())
        if self.retry_after:
            text += f" (retry after {self.retry_after} s)"
        if self.status == 401:
            text += f" {KEY_HINT}"
        return f"{text} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        """The error in the service's shape (for --json)."""
        return {"code": self.code, "message": self.message, "details": self.details}


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)


class AvatarClient:
    """The service's routes as methods; every call has a timeout, every error is an ApiError."""

    def __init__(self, server: str, *, key: str | None = None) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": "avatar-cli", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def styles(self) -> dict[str, Any]:
        """GET /styles."""
        return self._json("GET", "/styles")

    def service_info(self) -> dict[str, Any]:
        """GET /service-info: whether a key is needed, and the service's limits."""
        return self._json("GET", "/service-info")

    def upload(self, photo: Path) -> dict[str, Any]:
        """POST /upload-image: the stored photo's imageName, width and height."""
        with photo.open("rb") as handle:
            return self._json("POST", "/upload-image", files={"image": (photo.name, handle)})

    def framing(self, image_name: str, **params: Any) -> dict[str, Any]:
        """GET /photos/<imageName>/framing: its faces and the crop generate would use.

        ``params`` are ``width``, ``height`` and ``style`` (each optional, as for generate).
        """
        query = {name: value for name, value in params.items() if value is not None}
        return self._json("GET", f"/photos/{quote(image_name, safe='')}/framing", params=query)

    def generate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /generate-avatar-by-image, answered at once (202) with the job record."""
        return self._json("POST", "/generate-avatar-by-image", json={**body, "async": True})

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/<id>."""
        return self._json("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """POST /jobs/<id>/cancel: the record, cancelled or still ending."""
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def events(self, url: str) -> Iterator[Event]:
        """The job's event stream (``links.events`` of its record) until the service ends it."""
        try:
            with self._http.stream(
                "GET", url, headers={"Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT
            ) as answer:
                if answer.status_code != 200:
                    answer.read()
                    raise _error_of(answer)
                yield from _parse_sse(answer.iter_lines())
        except httpx.HTTPError as exc:
            raise _failure(exc, f"the event stream of {url} broke: {exc}") from exc

    def download(self, url: str, target: Path) -> None:
        """Fetch a file and write it atomically to ``target``."""
        try:
            answer = self._http.get(url, headers={"Accept": "*/*"})
        except httpx.HTTPError as exc:
            raise _failure(exc, f"cannot fetch {url}: {exc}") from exc
        if answer.status_code != 200:
            raise _error_of(answer)
        write_atomic(target, answer.content)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            message = f"cannot reach the avatar service at {self.server}: {exc}"
            raise _failure(exc, message) from exc
        if answer.status_code >= 400:
            raise _error_of(answer)
        try:
            body = answer.json()
        except ValueError:
            raise ClientError(
                f"{method} {path} answered {answer.status_code} with a body that is not JSON"
            ) from None
        if not isinstance(body, dict):
            raise ClientError(f"{method} {path} answered JSON that is not an object")
        return body


def _failure(exc: httpx.HTTPError, message: str) -> ClientError:
    """Unreachable when no answer came (the request may be sent again), else a ClientError."""
    return Unreachable(message) if isinstance(exc, httpx.TransportError) else ClientError(message)


def _error_of(answer: httpx.Response) -> ApiError:
    """The service's error from an error answer (or a plain description when it has none)."""
    try:
        error = answer.json().get("error")
    except (ValueError, AttributeError):
        error = None
    retry_after = answer.headers.get("Retry-After")
    if not isinstance(error, dict):
        return ApiError(
            answer.status_code,
            f"http_{answer.status_code}",
            f"{answer.request.method} {answer.request.url.path} answered {answer.status_code}",
            retry_after=retry_after,
        )
    return ApiError(
        answer.status_code,
        str(error.get("code", f"http_{answer.status_code}")),
        str(error.get("message", "")),
        error.get("details") or {},
        retry_after=retry_after,
    )


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events from text/event-stream lines (comments and ids are skipped)."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = {}
                yield Event(name, payload if isinstance(payload, dict) else {})
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)


def read_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and put it back: done once, at import, before the
    # command's threads create files (the umask is the whole process's).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Saved avatars get the mode any new file of the user gets (mkstemp's are 0600 whatever the umask).
FILE_MODE = 0o666 & ~read_umask()


def write_atomic(target: Path, content: bytes) -> None:
    """Write a file so that it is either whole or absent, with the mode the umask gives."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
            os.fchmod(out.fileno(), FILE_MODE)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
