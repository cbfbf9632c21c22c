"""A job and its typed parts: status, avatars, error and progress (the crop is a photo's).

Each part knows its JSON form (``to_dict``), which is at once what the database's JSON column
holds and what the job's record shows (events, webhooks and the API send the record); ``from_dict``
reads a column back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import ServiceError
from ..photos.geometry import Crop
from ..times import iso


class JobStatus(StrEnum):
    """Where a job is: waiting or held (queued), running on ComfyUI, or ended (three ways)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Avatar:
    """One image a job made, saved under ``file_name`` in the avatar folder."""

    file_name: str
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        """``{"fileName", "width", "height"}``, as stored."""
        return {"fileName": self.file_name, "width": self.width, "height": self.height}

    def public(self, base_url: str) -> dict[str, Any]:
        """The record's form: the stored one and the avatar's ``url``."""
        return {**self.to_dict(), "url": f"{base_url}/avatars/{self.file_name}"}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Avatar:
        """An avatar read back from its stored form."""
        return cls(value["fileName"], value["width"], value["height"])


@dataclass(frozen=True)
class JobError:
    """Why a job failed: the HTTP status, code, message and details of its ServiceError."""

    status: int
    code: str
    message: str
    details: Mapping[str, Any]

    @classmethod
    def of(cls, error: ServiceError, *, job_id: str) -> JobError:
        """The error of a job ``error`` ended; its details name the job."""
        return cls(error.status, error.code, error.message, {**error.details, "jobId": job_id})

    def to_dict(self) -> dict[str, Any]:
        """``{"status", "code", "message", "details"}``: what ``errors.error_from_record``
        turns back into the ServiceError."""
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> JobError:
        """An error read back from its stored form."""
        return cls(
            int(value.get("status", 500)),
            value["code"],
            value["message"],
            dict(value.get("details") or {}),
        )


@dataclass(frozen=True)
class JobProgress:
    """The node ComfyUI runs now and, for a sampler, its step (``value`` of ``maximum``)."""

    node: str
    node_type: str | None = None
    # ComfyUI's own numbers, kept as sent (an int stays an int in the record).
    value: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"node", "nodeType", "value", "max"}``."""
        return {
            "node": self.node,
            "nodeType": self.node_type,
            "value": self.value,
            "max": self.maximum,
        }

    def repeats(self, latest: JobProgress | None) -> bool:
        """Whether this is the start of the node the latest progress is already about (ComfyUI
        says ``executing`` again for it): nothing new to record or send."""
        return self.value is None and latest is not None and latest.node == self.node

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> JobProgress:
        """The progress read back from its stored form."""
        return cls(value["node"], value.get("nodeType"), value.get("value"), value.get("max"))


@dataclass(frozen=True)
class Job:
    """One generation request and everything known about it."""

    id: str
    status: JobStatus
    style: str
    image_name: str
    gender: str
    width: int
    height: int
    seed: int
    base_url: str
    deadline: float
    created_at: float = field(default_factory=time.time)
    callback_url: str | None = None
    server: str | None = None
    prompt_id: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = None
    progress: JobProgress | None = None
    error: JobError | None = None
    avatars: list[Avatar] = field(default_factory=list)
    # Durations in whole milliseconds, by name (prepareMs, waitMs, queuedMs, executionMs...).
    timings: dict[str, int] = field(default_factory=dict)
    cancel_requested: bool = False
    crop: Crop | None = None
    queue_order: float | None = None
    owner: str | None = None
    lease_expires: float | None = None
    dispatched_at: float | None = None
    estimated_start_at: float | None = None
    # How many servers this job's prompt stalled on (it then runs on another).
    stalls: int = 0

    @property
    def ended(self) -> bool:
        """Whether the job is in a terminal state."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        """Whether the job ended with its avatars."""
        return self.status == JobStatus.SUCCEEDED

    @property
    def waiting(self) -> bool:
        """Whether the job waits in the service's own queue (not yet given to a server)."""
        return self.status == JobStatus.QUEUED and self.server is None

    def to_dict(self) -> dict[str, Any]:
        """The public JSON record of the job."""
        queued = self.status == JobStatus.QUEUED
        return {
            "jobId": self.id,
            "status": str(self.status),
            "style": self.style,
            "imageName": self.image_name,
            "gender": self.gender,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "createdAt": iso(self.created_at),
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "queuePosition": self.queue_position,
            "estimatedStartAt": iso(self.estimated_start_at) if queued else None,
            "progress": None if self.progress is None else self.progress.to_dict(),
            "error": None if self.error is None else self.error.to_dict(),
            "avatars": [avatar.public(self.base_url) for avatar in self.avatars],
            "timings": self.timings,
            "crop": None if self.crop is None else self.crop.to_dict(),
            "links": {
                "self": f"{self.base_url}/jobs/{self.id}",
                "events": f"{self.base_url}/jobs/{self.id}/events",
                "preview": f"{self.base_url}/jobs/{self.id}/preview",
            },
        }
