"""The answers of the OpenAPI document: JSON bodies, images, text, files, errors and headers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ErrorCode

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
# The image types the service answers: avatars and previews are PNG, JPEG or WebP.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


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


def object_answer(
    description: str, properties: dict[str, Any], *, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object answer with these properties (and maybe more, with no fixed schema)."""
    schema = {"type": "object", "properties": properties, "additionalProperties": True}
    if required:
        schema["required"] = list(required)
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def image(description: str) -> dict[str, Any]:
    """An image answer (PNG, JPEG or WebP): binary, so generated clients read it as a file."""
    return {
        "description": description,
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in IMAGE_TYPES
        },
    }


def text(description: str, media_type: str) -> dict[str, Any]:
    """A text answer (an HTML page, the metrics) of this media type."""
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def any_file(description: str) -> dict[str, Any]:
    """A file of any type."""
    return {
        "description": description,
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }
