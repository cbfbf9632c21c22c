"""The parts of the OpenAPI document that routes share: component schemas and answer shapes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ErrorCode
from ..jobs import JobStatus

_NULLABLE_STRING = {"type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}
_JOB_ERROR = {
    "type": ["object", "null"],
    "required": ["code", "message"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}
_AVATAR = {
    "type": "object",
    "required": ["fileName", "width", "height", "url"],
    "properties": {
        "fileName": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "url": {"type": "string", "description": "with ?token= when API keys are on"},
        "upload": {
            "type": ["object", "null"],
            "description": "the forwarding to UPLOAD_URL, if on: state (pending, delivered, "
            "failed), ok, attempts, status, error, the receiver's response",
        },
        "deletedAt": {"type": "string", "description": "when retention deleted the file"},
    },
}
_BOX = {
    "x": {"type": "integer"},
    "y": {"type": "integer"},
    "width": {"type": "integer"},
    "height": {"type": "integer"},
}
_FACE = {
    "type": "object",
    "required": ["x", "y", "width", "height", "confidence"],
    "properties": {**_BOX, "confidence": {"type": ["number", "null"]}},
    "description": "a face's box in the stored photo's pixels, and how sure the detector is",
}
_CROP = {
    "type": ["object", "null"],
    "required": ["x", "y", "width", "height", "source"],
    "properties": {**_BOX, "source": {"enum": ["face", "request", "center"]}},
    "description": "the part of the stored photo the avatar is made from: around the largest "
    "face, the request's own crop, or ComfyUI's centre crop",
}
_JOB = {
    "type": "object",
    "required": [
        "jobId",
        "status",
        "style",
        "imageName",
        "gender",
        "width",
        "height",
        "seed",
        "createdAt",
        "avatars",
        "links",
    ],
    "properties": {
        "jobId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "status": {"enum": [status.value for status in JobStatus]},
        "style": {"type": "string"},
        "imageName": {"type": "string"},
        "gender": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "seed": {"type": "integer"},
        "createdAt": {"type": "string"},
        "startedAt": _NULLABLE_STRING,
        "finishedAt": _NULLABLE_STRING,
        "queuePosition": {"type": ["integer", "null"]},
        "estimatedStartAt": _NULLABLE_STRING,
        "progress": {"type": ["object", "null"]},
        "error": _JOB_ERROR,
        "avatars": {"type": "array", "items": {"$ref": "#/components/schemas/Avatar"}},
        "timings": {"type": "object", "additionalProperties": {"type": "integer"}},
        "crop": _CROP,
        "links": {
            "type": "object",
            "required": ["self", "events", "preview"],
            "properties": {
                "self": {"type": "string"},
                "events": {"type": "string", "description": "with ?token= when keys are on"},
                "preview": {"type": "string", "description": "with ?token= when keys are on"},
            },
        },
        "webhooks": {"type": "array", "items": {"type": "object"}},
    },
}
_UPLOADED = {
    "type": "object",
    "required": ["imageName", "width", "height"],
    "properties": {
        "imageName": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "faces": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Face"},
            "description": "the faces found, largest first (absent with FACE_POLICY=off)",
        },
    },
}
_FRAMING = {
    "type": "object",
    "required": ["imageName", "width", "height", "faces", "crop", "avatar", "policy"],
    "properties": {
        "imageName": {"type": "string"},
        "width": {"type": "integer", "description": "the stored photo's width"},
        "height": {"type": "integer", "description": "the stored photo's height"},
        "faces": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Face"},
            "description": "the faces found, largest first (empty with FACE_POLICY=off)",
        },
        "crop": {
            **_CROP,
            "type": "object",
            "properties": {**_BOX, "source": {"enum": ["face", "center"]}},
        },
        "avatar": {
            "type": "object",
            "required": ["width", "height"],
            "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
            "description": "the avatar size the crop is for",
        },
        "policy": {
            "enum": ["off", "prefer", "require"],
            "description": "FACE_POLICY (with `off` no face is looked for)",
        },
    },
}
_SERVICE_INFO = {
    "type": "object",
    "required": ["authRequired", "version", "limits", "styles"],
    "properties": {
        "authRequired": {"type": "boolean"},
        "version": {"type": "string"},
        "limits": {"type": "object"},
        "styles": {"type": "string"},
        "openapi": {"type": "string"},
        "docs": {"type": "string"},
    },
}
SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Job": _JOB,
    "Avatar": _AVATAR,
    "Uploaded": _UPLOADED,
    "Face": _FACE,
    "Framing": _FRAMING,
    "ServiceInfo": _SERVICE_INFO,
}
SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from API_KEYS (only when keys are configured)",
    },
    "jobToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "a job's signed token, from the links of its record",
    },
}

RETRY_HEADERS = {"Retry-After": {"schema": {"type": "integer"}}}
RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"schema": {"type": "integer"}},
}
# Headers an error answer carries, by status: Unauthorized sends WWW-Authenticate,
# ServiceUnavailable a Retry-After, and a rate limit its Retry-After and counts.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {**RETRY_HEADERS, **RATE_HEADERS},
    503: RETRY_HEADERS,
}


def error_answer(errors: Iterable[ErrorCode]) -> dict[str, Any]:
    """The answer of one error status: its codes, each with what it means, and its headers."""
    errors = list(errors)
    statuses = {error.status for error in errors}
    if len(statuses) != 1:
        raise ValueError(f"one answer is one status, not {sorted(statuses)}")
    answer: dict[str, Any] = {
        "description": "; ".join(f"`{error.code}`: {error.description}" for error in errors),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    headers = ERROR_HEADERS.get(statuses.pop())
    if headers:
        answer["headers"] = headers
    return answer


def json_answer(
    description: str, ref: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON answer whose body is the component schema ``ref``."""
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def any_json(description: str) -> dict[str, Any]:
    """A JSON answer of no fixed schema."""
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def image(description: str) -> dict[str, Any]:
    """An image answer (PNG, JPEG or WebP)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "description": description,
        "content": {"image/png": binary, "image/jpeg": binary, "image/webp": binary},
    }


def text(description: str, media_type: str) -> dict[str, Any]:
    """A text answer (an HTML page, the metrics, an event stream) of this media type."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def any_file(description: str) -> dict[str, Any]:
    """A file of any type."""
    return {"description": description, "content": {"*/*": {"schema": {}}}}
