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
    └── GatewayTimeout (504)          the job deadline passed

Job failures are stored as the same ``{"code", "message", "details"}`` dict, and
``error_from_record`` turns a stored one back into the matching ServiceError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, SecurityError

logger = logging.getLogger(__name__)


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


def error_response(error: ServiceError):
    """The Flask response for an error: JSON body, honest status, extra headers."""
    response = jsonify({"error": error.to_dict()})
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, ours or Werkzeug's, with the one JSON shape."""

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if isinstance(error, SecurityError):
            mapped: ServiceError = BadRequest(
                "the request's Host header is not a host this service answers to (TRUSTED_HOSTS)",
                code="untrusted_host",
            )
        elif error.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            mapped = PayloadTooLarge(
                "the request body is larger than the service accepts",
                details={"maxBytes": limit} if limit else None,
            )
        elif error.code == 429:
            limit = getattr(error, "limit", None)
            mapped = TooManyRequests(
                f"too many requests (limit: {limit.limit})" if limit else "too many requests",
                details={"limit": str(limit.limit)} if limit else None,
            )
        else:
            mapped = ServiceError(
                error.description or error.name,
                code=error.name.lower().replace(" ", "_"),
            )
            mapped.status = error.code or 500
        response = error_response(mapped)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        logger.exception("unhandled error")
        return error_response(ServiceError("internal error; see the service log"))
