"""What a worker agent reports, read and checked: the fields it changes, its timings, progress,
end, error and avatars. Anything else is refused (400 ``invalid_agent``), nothing written."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import BadRequest, ServiceError, error_from_record
from .job import Job, JobProgress, JobStatus
from .records import from_row, to_row

# The record's fields an agent may change while it holds a job (the rest are the service's).
AGENT_FIELDS = frozenset(
    {"prompt_id", "attempts", "status", "queue_position", "progress", "timings", "stalls"}
)
_AGENT_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
_END_STATUSES = {
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELLED,
}
_AVATAR_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp"})


def refused(message: str, **details: Any) -> BadRequest:
    """The error of a report the service does not take."""
    return BadRequest(message, code="invalid_agent", details=details or None)


def changes(current: Job, asked: Mapping[str, Any]) -> dict[str, Any]:
    """The record's changes an agent asks for (columns, as ``records.to_row`` writes them), as
    the job's fields; only ``AGENT_FIELDS``, and never an end."""
    unknown = sorted(set(asked) - AGENT_FIELDS)
    if unknown:
        raise refused(f"an agent may not change {', '.join(unknown)}", fields=unknown)
    try:
        merged = from_row({**to_row(current), **asked})
    except (KeyError, TypeError, ValueError) as exc:
        raise refused(f"changes: {exc}") from None
    if merged.status not in _AGENT_STATUSES:
        raise refused("status: an agent ends a job with finish")
    return {name: getattr(merged, name) for name in asked}


def timings(value: object) -> dict[str, int]:
    """Durations in whole milliseconds, by name (anything else is left out)."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(name): int(ms)
        for name, ms in value.items()
        if isinstance(ms, int | float) and not isinstance(ms, bool)
    }


def progress(data: Mapping[str, Any]) -> JobProgress:
    """``{node, nodeType, value, max}``."""
    try:
        return JobProgress.from_dict(data)
    except (KeyError, TypeError):
        raise refused("progress: {node, nodeType, value, max}") from None


def end_status(value: object) -> JobStatus:
    """succeeded, failed or cancelled."""
    status = _END_STATUSES.get(str(value))
    if status is None:
        raise refused("status: succeeded, failed or cancelled")
    return status


def error(recorded: object) -> ServiceError:
    """The error a failed job ends with: ``{status, code, message, details}``."""
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("code"), str):
        raise refused("error: {status, code, message, details}")
    status = recorded.get("status")
    details = recorded.get("details")
    return error_from_record(
        {
            "status": status if isinstance(status, int) and not isinstance(status, bool) else 502,
            "code": recorded["code"],
            "message": str(recorded.get("message", "")),
            "details": dict(details) if isinstance(details, Mapping) else {},
        }
    )


def avatar_files(job: Job, files: Mapping[str, bytes]) -> list[tuple[str, bytes, int, int]]:
    """A succeeded job's avatars, each checked: ``(extension, data, width, height)`` by index.

    They are named ``<jobId>_<index>.<ext>`` from 0, and each is an image."""
    if not files:
        raise refused("a succeeded job needs its avatars")
    checked = []
    for index, (name, data) in enumerate(sorted(files.items())):
        extension = name.rsplit(".", 1)[-1].lower()
        if name != f"{job.id}_{index}.{extension}" or extension not in _AVATAR_EXTENSIONS:
            raise refused(
                f"avatar files are named {job.id}_<index>.<png|jpg|webp> from 0", fileName=name
            )
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError):
            raise refused("an avatar is not an image", fileName=name) from None
        checked.append((extension, data, width, height))
    return checked
