"""The event stream of a job in the OpenAPI document: one schema per event type.

OpenAPI 3.1 has a ``text/event-stream`` answer's ``schema`` describe each event (3.2 names it
``itemSchema``): an event is ``{"event", "id", "data"}`` and its ``data`` is JSON, described by
``contentSchema``. The frames are written by ``presentation.sse_frame``.
"""

from __future__ import annotations

from typing import Any

from ..jobs import JobStatus

_JOB = "#/components/schemas/Job"
# Each event type and the schema of its data, in the order a job sends them.
EVENT_DATA: dict[str, str] = {
    "state": _JOB,
    JobStatus.QUEUED.value: _JOB,
    "position": "#/components/schemas/QueuePosition",
    JobStatus.RUNNING.value: _JOB,
    "progress": "#/components/schemas/JobProgress",
    "preview": "#/components/schemas/PreviewReady",
    JobStatus.SUCCEEDED.value: _JOB,
    JobStatus.FAILED.value: _JOB,
    JobStatus.CANCELLED.value: _JOB,
}
_WHAT = {
    "state": "the job's record when the stream opens (not sent when resuming)",
    "position": "the job's place in the queue changed",
    "progress": "the node ComfyUI runs now and its step",
    "preview": "a new live preview frame is at the url",
}


def _event(name: str, ref: str) -> dict[str, Any]:
    """The schema of one event type: its name, its id, and its data as JSON."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "description": "send as Last-Event-ID to resume"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": ref},
            },
        },
        "description": _WHAT.get(name, f"the job is {name}: its record"),
    }


JOB_EVENT: dict[str, Any] = {
    "oneOf": [_event(name, ref) for name, ref in EVENT_DATA.items()],
    "description": "one Server-Sent Event of a job's stream; the stream ends after "
    "succeeded, failed or cancelled (comment lines keep it open meanwhile)",
}
QUEUE_POSITION: dict[str, Any] = {
    "type": "object",
    "required": ["queuePosition"],
    "properties": {
        "queuePosition": {"type": "integer"},
        "estimatedStartAt": {"type": "string", "format": "date-time"},
    },
}
PREVIEW_READY: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "description": "GET it for the frame (?token= with keys on)"}
    },
}


def event_stream(description: str) -> dict[str, Any]:
    """The answer of an event stream: each event described by the JobEvent schema."""
    return {
        "description": description,
        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/JobEvent"}}},
    }
