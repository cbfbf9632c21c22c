"""The service's errors and their one JSON shape.

Every error a client can see is a ServiceError, answered as
``{"error": {"code": "snake_case", "message": "...", "details": {...}}}``::

    ServiceError (500 internal_error)
    ├── BadRequest (400)              invalid JSON, fields, images
    ├── Unauthorized (401)            missing or unknown API key or token (WWW-Authenticate)
    ├── Forbidden (403)               a valid key that does not own the job
    ├── NotFound (404)                unknown imageName, job, avatar, style
    ├── Conflict (409)                cancelling a job that has ended
    ├── Gone (410)                    an avatar deleted by retention
    ├── PayloadTooLarge (413)         photo over MAX_UPLOAD_MB
    ├── UnsupportedMediaType (415)    not a JPEG, PNG or WebP photo
    ├── UnprocessableContent (422)    an Idempotency-Key reused with another body
    │   └── UnprocessablePhoto        a photo FACE_POLICY rules out (no face, several faces)
    ├── TooManyRequests (429)         a rate limit (sends Retry-After)
    ├── BadGateway (502)              ComfyUI rejected the graph or failed while running it
    ├── ServiceUnavailable (503)      ComfyUI unreachable (sends Retry-After)
    │   └── StorageUnavailable        the photo and avatar storage (STORAGE_URL) fails
    └── GatewayTimeout (504)          the job deadline passed

``ERROR_CODES`` is the one table of every code a client can receive: its status, what it
means, and the class that carries it (the OpenAPI document is built from it). A raise site
names its code as a string (``NotFound(..., code="job_not_found")``); a test keeps every code
written in the service in the table.

Job failures are stored as the same ``{"code", "message", "details"}`` dict, and
``error_from_record`` turns a stored one back into the matching ServiceError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ServiceError(Exception):
    """An error with an HTTP status, a stable code, a message and optional details."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = {name: _echoable(value) for name, value in (details or {}).items()}
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The body of the JSON error (without the outer ``error`` key)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


# A client's value echoed in an error's details is cut to this many characters: an 11 MB
# imageName must not come back as an 11 MB error.
ECHO_LIMIT = 1024


def _echoable(value: Any) -> Any:
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        return f"{value[:ECHO_LIMIT]}... ({len(value)} characters)"
    return value


class BadRequest(ServiceError):
    """The request is malformed or breaks a rule."""

    status = 400
    code = "invalid_request"


class Unauthorized(ServiceError):
    """No API key, an unknown one, or a bad or expired token."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(ServiceError):
    """A valid key that may not touch this resource."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    """The named thing does not exist."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request conflicts with the state of the resource."""

    status = 409
    code = "conflict"


class Gone(ServiceError):
    """The resource existed and was deleted on purpose."""

    status = 410
    code = "gone"


class PayloadTooLarge(ServiceError):
    """The upload is larger than allowed."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """The upload is not a supported image type."""

    status = 415
    code = "unsupported_media_type"


class UnprocessableContent(ServiceError):
    """The request is well-formed but cannot be processed as sent."""

    status = 422
    code = "unprocessable_content"


class UnprocessablePhoto(UnprocessableContent):
    """The photo is a valid image but cannot make an avatar under the face policy."""

    code = "unprocessable_photo"


class TooManyRequests(ServiceError):
    """A rate limit was reached."""

    status = 429
    code = "rate_limited"


class BadGateway(ServiceError):
    """ComfyUI answered, but not with a usable result."""

    status = 502
    code = "comfyui_error"


class ServiceUnavailable(ServiceError):
    """ComfyUI cannot be reached now; try again later."""

    status = 503
    code = "comfyui_unavailable"

    def __init__(self, message: str, *, retry_after: int = 10, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after))


class StorageUnavailable(ServiceUnavailable):
    """The object storage of photos and avatars does not answer, or fails; try again later."""

    code = "storage_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kwargs)


class GatewayTimeout(ServiceError):
    """The job did not finish before its deadline."""

    status = 504
    code = "job_timeout"


_CLASS_BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        UnprocessableContent,
        TooManyRequests,
        BadGateway,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


def error_from_record(record: Mapping[str, Any]) -> ServiceError:
    """Rebuild the ServiceError of a stored job error (``status``, ``code``, ``message``...)."""
    cls = _CLASS_BY_STATUS.get(int(record.get("status", 500)), ServiceError)
    return cls(record["message"], code=record["code"], details=record.get("details"))


@dataclass(frozen=True)
class ErrorCode:
    """One code a client can receive: its HTTP status, what it means, the class carrying it."""

    code: str
    status: int
    description: str
    cls: type[ServiceError]


# (class, code, one-line description): the status is the class's. Grouped by status.
_RAISED: tuple[tuple[type[ServiceError], str, str], ...] = (
    (ServiceError, "internal_error", "an unexpected failure in the service (see its log)"),
    (ServiceError, "avatar_save_failed", "the avatar could not be written to OUTPUT_DIR"),
    (BadRequest, "invalid_request", "the request breaks a rule"),
    (BadRequest, "invalid_json", "the body is not a JSON object"),
    (BadRequest, "invalid_fields", "a field or parameter is invalid (details.fields says which)"),
    (BadRequest, "invalid_idempotency_key", "the Idempotency-Key header is malformed"),
    (BadRequest, "untrusted_host", "the Host header is missing or not in TRUSTED_HOSTS"),
    (BadRequest, "missing_file", "no photo in the multipart field 'image' (or 'file')"),
    (BadRequest, "empty_file", "the uploaded photo is empty"),
    (BadRequest, "invalid_image", "the photo could not be decoded"),
    (BadRequest, "image_too_small", "a side of the photo is under MIN_IMAGE_SIDE"),
    (BadRequest, "image_too_many_pixels", "the photo has more than MAX_IMAGE_PIXELS pixels"),
    (BadRequest, "image_aspect_ratio", "the photo is too narrow or too wide"),
    (BadRequest, "invalid_agent", "a worker agent's request breaks the agents' protocol"),
    (Unauthorized, "unauthorized", "missing or unknown API key or token"),
    (Forbidden, "forbidden", "the job was created with another API key"),
    (NotFound, "not_found", "no such route or file"),
    (NotFound, "image_not_found", "the photo is unknown (upload it first)"),
    (NotFound, "job_not_found", "the job is unknown"),
    (NotFound, "preview_not_found", "no preview frame (none sent yet, or the job is not running)"),
    (NotFound, "avatar_not_found", "no such avatar"),
    (NotFound, "style_not_found", "the job's style is no longer configured"),
    (NotFound, "agent_not_found", "no such worker agent (register again)"),
    (Conflict, "conflict", "the request conflicts with the state of the resource"),
    (Conflict, "job_cancelled", "the job was cancelled"),
    (Conflict, "job_already_ended", "the job has already ended"),
    (Conflict, "lease_lost", "the worker agent no longer holds the job"),
    (Conflict, "idempotency_key_in_use", "a request with this Idempotency-Key is still running"),
    (Gone, "gone", "the resource was deleted on purpose"),
    (Gone, "avatar_expired", "the avatar was deleted by retention (RETENTION_HOURS)"),
    (PayloadTooLarge, "payload_too_large", "the request body is too large"),
    (PayloadTooLarge, "photo_too_large", "the photo is over MAX_UPLOAD_MB"),
    (UnsupportedMediaType, "unsupported_media_type", "the upload is not a supported type"),
    (UnsupportedMediaType, "unsupported_image_type", "the photo is not a JPEG, PNG or WebP"),
    (UnprocessableContent, "unprocessable_content", "the request cannot be processed as sent"),
    (UnprocessableContent, "idempotency_key_reused", "the Idempotency-Key came with another body"),
    (UnprocessablePhoto, "unprocessable_photo", "the photo cannot make an avatar"),
    (UnprocessablePhoto, "no_face_found", "no face in the photo (FACE_POLICY=require)"),
    (UnprocessablePhoto, "several_faces", "several faces in the photo (FACE_MULTIPLE=refuse)"),
    (TooManyRequests, "rate_limited", "a rate limit was reached"),
    (BadGateway, "comfyui_error", "ComfyUI failed the job"),
    (BadGateway, "comfyui_rejected_prompt", "ComfyUI rejected the workflow"),
    (BadGateway, "comfyui_execution_error", "a node failed while ComfyUI ran the workflow"),
    (BadGateway, "comfyui_interrupted", "the prompt was interrupted on ComfyUI (not by us)"),
    (BadGateway, "comfyui_lost_prompt", "ComfyUI lost the prompt twice (server restarts)"),
    (BadGateway, "comfyui_no_output", "ComfyUI finished without an image"),
    (BadGateway, "comfyui_no_history", "ComfyUI ended the prompt without a success entry"),
    (BadGateway, "comfyui_bad_response", "ComfyUI answered unexpectedly"),
    (BadGateway, "comfyui_server_removed", "the job's ComfyUI server is no longer configured"),
    (BadGateway, "avatar_fetch_failed", "the generated image could not be fetched from ComfyUI"),
    (
        BadGateway,
        "comfyui_stalled",
        "ComfyUI made no progress on the prompt for COMFYUI_STALL_TIMEOUT and no other server "
        "could run it",
    ),
    (ServiceUnavailable, "comfyui_unavailable", "ComfyUI is unreachable"),
    (ServiceUnavailable, "service_busy", "at a limit (jobs, streams, decodes) or stopping"),
    (GatewayTimeout, "job_timeout", "the job's deadline passed"),
    (
        StorageUnavailable,
        "storage_unavailable",
        "the photo and avatar storage (STORAGE_URL) does not answer or fails (sends Retry-After)",
    ),
    (
        ServiceUnavailable,
        "database_unavailable",
        "the service's database does not answer (sends Retry-After)",
    ),
)
# (status, code, description): answered by the HTTP layer (Werkzeug, waitress) for requests
# no view handles, as a plain ServiceError with that status.
_PROTOCOL: tuple[tuple[int, str, str], ...] = (
    (400, "bad_request", "a malformed HTTP request"),
    (405, "method_not_allowed", "the route does not take this method (see Allow)"),
    (431, "request_headers_too_large", "the request's headers are too large"),
    (501, "not_implemented", "a transfer coding the server does not know"),
)

ERROR_CODES: Mapping[str, ErrorCode] = {
    **{code: ErrorCode(code, cls.status, text, cls) for cls, code, text in _RAISED},
    **{code: ErrorCode(code, status, text, ServiceError) for status, code, text in _PROTOCOL},
}

# The codes a job's record can end with (see jobs/outcomes.py): a route that waits for a job
# answers them.
JOB_FAILURES: tuple[str, ...] = (
    "internal_error",
    "avatar_save_failed",
    "style_not_found",
    "comfyui_rejected_prompt",
    "comfyui_execution_error",
    "comfyui_interrupted",
    "comfyui_lost_prompt",
    "comfyui_no_output",
    "comfyui_no_history",
    "comfyui_bad_response",
    "comfyui_server_removed",
    "comfyui_error",
    "avatar_fetch_failed",
    "comfyui_stalled",
    "comfyui_unavailable",
    "storage_unavailable",
    "job_timeout",
)
