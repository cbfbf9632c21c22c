"""Every error a request meets, ours or Werkzeug's, answered in the one JSON shape."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed, SecurityError

from ..errors import BadRequest, PayloadTooLarge, ServiceError, ServiceUnavailable, TooManyRequests
from ..persistence.database import DatabaseUnavailable

logger = logging.getLogger(__name__)
# Retry-After of a 503 database_unavailable (the pool is back within a couple of seconds of
# the database).
DATABASE_RETRY_AFTER = 2


def error_response(error: ServiceError) -> Response:
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
        job_id = error.details.get("jobId")
        if isinstance(job_id, str):
            g.job_id = job_id  # for the request's log line
        return error_response(error)

    @app.errorhandler(DatabaseUnavailable)
    def _database_unavailable(error: DatabaseUnavailable):
        logger.warning("answered 503: %s", error)
        return error_response(
            ServiceUnavailable(
                "the service's database does not answer; try again shortly",
                code="database_unavailable",
                retry_after=DATABASE_RETRY_AFTER,
            )
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        response = error_response(_from_werkzeug(app, error))
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        logger.exception("unhandled error")
        return error_response(ServiceError("internal error; see the service log"))


def _from_werkzeug(app: Flask, error: HTTPException) -> ServiceError:
    """The ServiceError answering one of Werkzeug's HTTP errors."""
    if isinstance(error, SecurityError):
        return BadRequest(
            "the request's Host header is not a host this service answers to (TRUSTED_HOSTS)",
            code="untrusted_host",
        )
    if error.code == 413:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return PayloadTooLarge(
            "the request body is larger than the service accepts",
            details={"maxBytes": limit} if limit else None,
        )
    if error.code == 429:
        limit = getattr(error, "limit", None)
        return TooManyRequests(
            f"too many requests (limit: {limit.limit})" if limit else "too many requests",
            details={"limit": str(limit.limit)} if limit else None,
        )
    code = error.name.lower().replace(" ", "_")  # "Method Not Allowed" -> method_not_allowed
    mapped = ServiceError(error.description or error.name, code=code)
    mapped.status = error.code or 500
    return mapped
