"""HTTP routes: parse and validate, call one service method, serialise.

Every route but the public ones (health, readiness, service info, the document and its docs,
metrics with its own key) needs ``Authorization: Bearer <key>`` when API keys are configured;
the one hook ``authorize`` checks it, and that a job belongs to the key that made it.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    request,
    send_from_directory,
    stream_with_context,
)

from .. import __version__
from ..errors import (
    JOB_FAILURES,
    BadRequest,
    Forbidden,
    NotFound,
    Unauthorized,
)
from ..services import Services
from ..storage.avatars import AVATAR_NAME_PATTERN
from .access import Caller
from .downloads import download_response
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .openapi import DOCS_ASSETS, DOCS_PAGE, build_document, error_codes
from .presentation import job_body, job_response, parse_last_event_id, service_facts, sse_stream

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("avatar_service.requests")

bp = Blueprint("api", __name__)

# Routes anyone may call, keys or not.
PUBLIC_ENDPOINTS = frozenset(
    {
        "api.healthz",
        "api.readyz",
        "api.service_info",
        "api.openapi_document",
        "api.docs",
        "api.docs_asset",
        "api.metrics",
    }
)
# GET routes that accept a job's signed token (?token=) instead of the Authorization header.
TOKEN_ENDPOINTS = frozenset({"api.job_events", "api.job_preview", "api.get_avatar"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# Error codes several routes answer (each route declares its own with @error_codes): a job's
# routes (no key, another key's job, no such job); a photo FACE_POLICY / FACE_MULTIPLE refuses.
JOB = ("unauthorized", "forbidden", "job_not_found", "database_unavailable")
REFUSED = ("no_face_found", "several_faces")


def services() -> Services:
    """The one registry, built by create_app."""
    return current_app.extensions["avatar_service"]


@bp.post("/upload-image")
@bp.post("/upload_image")
@error_codes("unauthorized", "missing_file", "empty_file", "invalid_image", "image_too_small")
@error_codes("image_too_many_pixels", "image_aspect_ratio", "unsupported_image_type", *REFUSED)
@error_codes("photo_too_large", "payload_too_large", "rate_limited", "service_busy")
@error_codes("database_unavailable", "storage_unavailable")
def upload_image():
    """Store a photo (multipart field ``image``, or ``file``); 201 with its server-made name."""
    upload = request.files.get("image") or request.files.get("file")
    if upload is None:
        raise BadRequest(
            "send the photo as multipart/form-data in the field 'image' (or 'file')",
            code="missing_file",
            details={"receivedFields": sorted(request.files) + sorted(request.form)},
        )
    return services().avatars.upload(upload.stream, caller=g.get("caller")), 201


@bp.get("/photos/<image_name>/framing")
@error_codes("unauthorized", "invalid_fields", "image_not_found", *REFUSED)
@error_codes("database_unavailable", "storage_unavailable")
def photo_framing(image_name: str):
    """A stored photo's faces and the crop generate would use for ?width=&height= (or style's)."""
    svc = services()
    width, height = svc.generate_schema.parse_framing(request.args)
    return svc.avatars.framing(image_name, width=width, height=height, caller=g.get("caller"))


@bp.post("/generate-avatar-by-image")
@error_codes("unauthorized", "invalid_json", "invalid_fields", "invalid_idempotency_key")
@error_codes("image_not_found", *REFUSED, "job_cancelled", "idempotency_key_in_use")
@error_codes("idempotency_key_reused", "payload_too_large", "rate_limited", "service_busy")
@error_codes("database_unavailable")
@error_codes(*JOB_FAILURES)
def generate_avatar():
    """Queue a generation; 200 with the avatars when it ends within SYNC_WAIT, else 202."""
    svc = services()
    caller = g.get("caller")
    generate, asked_async = svc.generate_schema.parse(
        _json_body(), may_use_photo=lambda name: svc.avatars.may_use_photo(name, caller)
    )
    respond_async = asked_async or "respond-async" in request.headers.get("Prefer", "")
    submitted = svc.avatars.generate(
        generate,
        wait=not respond_async,
        base_url=_base_url(svc),
        caller=caller,
        idempotency_key=_idempotency_key(),
        asked_async=asked_async,
    )
    g.job_id = submitted.job.id
    response = make_response(job_response(submitted.job, svc))
    if not submitted.new:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/jobs/<job_id>")
@error_codes(*JOB)
def get_job(job_id: str):
    """The job record: status, queue position, progress, error, avatars, timings."""
    svc = services()
    return job_body(svc.avatars.job(job_id), svc)


@bp.delete("/jobs/<job_id>")
@bp.post("/jobs/<job_id>/cancel")
@error_codes(*JOB, "job_already_ended")
def cancel_job(job_id: str):
    """Cancel a queued or running job: 200 cancelled, 202 still ending, 409 already ended."""
    svc = services()
    job = svc.avatars.cancel(job_id)
    return job_body(job, svc), 200 if job.ended else 202


@bp.get("/jobs/<job_id>/events")
@error_codes(*JOB, "service_busy")
def job_events(job_id: str):
    """Server-Sent Events of the job's state changes, ending when the job ends."""
    svc = services()
    after = parse_last_event_id(request.headers.get("Last-Event-ID", ""), svc.events.epoch)
    stream = svc.avatars.open_stream(
        job_id, lambda: stream_with_context(sse_stream(svc, job_id, after))
    )
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.get("/jobs/<job_id>/preview")
@error_codes(*JOB, "preview_not_found")
def job_preview(job_id: str):
    """The latest live preview frame of a running job (404 when there is none)."""
    preview = services().avatars.preview(job_id)
    return Response(
        preview.data, mimetype=preview.content_type, headers={"Cache-Control": "no-store"}
    )


@bp.get("/avatars/<file_name>")
@error_codes("unauthorized", "forbidden", "avatar_not_found", "avatar_expired")
@error_codes("database_unavailable", "storage_unavailable")
def get_avatar(file_name: str):
    """A generated avatar image (or a 307 to its object, STORAGE_PUBLIC_READS); 410 once
    retention has deleted it."""
    svc = services()
    response = download_response(svc.avatars.avatar_file(file_name), max_age=86400)
    if svc.access.enabled:
        # Behind a key, a shared cache must not hand the avatar to whoever asks for the path.
        response.cache_control.public = False
        response.cache_control.private = True
    return response


@bp.get("/styles")
@error_codes("unauthorized")
def list_styles():
    """Every workflow style with its parameters."""
    return services().avatars.styles()


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Whether a ComfyUI server is reachable and can run the workflows; 503 with the reasons."""
    report = services().readiness.report()
    return report, 200 if report["ready"] else 503


@bp.get("/service-info")
def service_info():
    """What a client needs to know first: whether a key is needed, limits, where things are."""
    return service_facts(services(), request.host_url, version=__version__)


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3.1 document of this service, built from the schemas that validate requests."""
    return build_document(current_app, services().generate_schema, version=__version__)


@bp.get("/docs", strict_slashes=False)
def docs():
    """Interactive documentation (Swagger UI, served from this service)."""
    if request.path.endswith("/"):
        # The page's links are relative (the service may sit under a path prefix): from
        # /docs/ they would point into /docs/docs/. Back to /docs, relatively for that reason.
        return redirect("../docs", code=308)
    return Response(DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/<asset>")
@error_codes("not_found")
def docs_asset(asset: str):
    """The files of the interactive documentation."""
    from swagger_ui_bundle import swagger_ui_path

    if asset not in DOCS_ASSETS:
        raise NotFound("no such file", code="not_found", details={"file": asset})
    return send_from_directory(str(swagger_ui_path), asset, max_age=86400)


@bp.get("/metrics")
@error_codes("unauthorized")
def metrics():
    """Prometheus metrics (Authorization: Bearer METRICS_KEY when that is set)."""
    svc = services()
    if svc.settings.metrics_key and not _bearer_matches(svc.settings.metrics_key):
        raise Unauthorized("send METRICS_KEY as Authorization: Bearer <key>")
    # The whole Content-Type as Prometheus names it (``mimetype`` would add a second charset).
    return Response(svc.metrics.render(), content_type=METRICS_CONTENT_TYPE)


# -- hooks: keys and ownership, request ids, the request log, metrics ---------------------------


@bp.before_request
def authorize() -> None:
    """With keys on: a known key (or, on token routes, the job's token); a job its key's own."""
    access = services().access
    public = request.endpoint in PUBLIC_ENDPOINTS or request.path == "/"  # "/": the web page
    if not access.enabled or request.method == "OPTIONS" or public:
        return
    job_id = _job_of_request()
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if not scheme:
        token = request.args.get("token")
        if token is None or request.endpoint not in TOKEN_ENDPOINTS or job_id is None:
            raise Unauthorized("this service needs an API key: send Authorization: Bearer <key>")
        if not access.check_token(token, job_id):
            raise Unauthorized(
                "the token is not valid for this job or has expired; "
                "read the job record again for fresh links"
            )
        return
    caller = access.authenticate(presented.strip()) if scheme.lower() == "bearer" else None
    if caller is None:
        raise Unauthorized("unknown API key (send Authorization: Bearer <key>)")
    g.caller = caller
    if job_id is not None and not caller.admin:
        owner = access.owner(job_id)
        if owner != caller.key_id and (owner is not None or services().records.get(job_id)):
            raise Forbidden("this job was created with another API key", details={"jobId": job_id})


# Methods counted by name; any other (clients may send any token) is "other", so no client can
# add label values to the metrics without end.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.before_app_request
def begin_request() -> None:
    """Take the client's X-Request-ID (or make one) and start the clock."""
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.monotonic()


@bp.after_app_request
def finish_request(response: Response) -> Response:
    """Echo the request id, count the request, and log one line about it."""
    response.headers["X-Request-ID"] = g.get("request_id", "")
    elapsed = time.monotonic() - g.get("started", time.monotonic())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    api = current_app.extensions.get("avatar_service")
    if api is not None:
        method = request.method if request.method in _KNOWN_METHODS else "other"
        api.metrics.requests.labels(route, method, str(response.status_code)).inc()
        api.metrics.request_seconds.labels(route).observe(elapsed)
        if response.status_code == 429:
            api.metrics.rate_limited.labels(route).inc()
        if request.endpoint == "api.upload_image":
            api.metrics.uploads.labels(_outcome(response)).inc()
    # The job of the request: its route's, or the one its view or error named (g.job_id).
    job_id = (request.view_args or {}).get("job_id") or g.get("job_id")
    caller: Caller | None = g.get("caller")
    request_logger.info(
        "%s %s %d %.1fms request_id=%s job_id=%s key=%s",
        request.method,
        request.path,
        response.status_code,
        elapsed * 1000,
        g.get("request_id"),
        job_id or "-",
        caller.key_id if caller else "-",
        extra={
            "request_id": g.get("request_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed * 1000, 1),
            "job_id": job_id,
            "key_id": caller.key_id if caller else None,
            "remote_addr": request.remote_addr,
        },
    )
    return response


def rate_limit_key() -> str:
    """Whom a rate limit counts: the API key (by its id), else the client's address."""
    caller: Caller | None = g.get("caller")
    return caller.key_id if caller else f"addr:{request.remote_addr}"


def generate_cost() -> int:
    """What a generate costs of its rate limit: nothing for a replay (its Idempotency-Key
    already names a job, which it is answered with), else one."""
    if "generate_cost" not in g:
        key = request.headers.get("Idempotency-Key")
        replay = (
            key is not None
            and _IDEMPOTENCY_KEY.fullmatch(key) is not None
            and services().avatars.names_a_job(g.get("caller"), key)
        )
        g.generate_cost = 0 if replay else 1
    return g.generate_cost


# -- helpers used by the routes ----------------------------------------------------------------


def _job_of_request() -> str | None:
    """The job a request is about: from the URL, or the job id at the head of an avatar name."""
    args = request.view_args or {}
    if "job_id" in args:
        return args["job_id"]
    file_name = args.get("file_name")
    if isinstance(file_name, str) and AVATAR_NAME_PATTERN.fullmatch(file_name):
        return file_name.split("_", 1)[0]
    return None


def _bearer_matches(secret: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), secret.encode()
    )


def _idempotency_key() -> str | None:
    """The Idempotency-Key header (1 to 255 visible ASCII characters), if sent."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


def _outcome(response: Response) -> str:
    if response.status_code < 400:
        return "stored"
    body = response.get_json(silent=True) if response.is_json else None
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else str(response.status_code)


def _base_url(svc: Services) -> str:
    """Where this job's URLs point: PUBLIC_BASE_URL, else the URL the request was sent to."""
    if not svc.settings.public_base_url and not request.host:
        # Werkzeug reads a Host header with characters no host name has as empty.
        raise BadRequest(
            "the request's Host header is missing or not a host name; the job's URLs are built "
            "from it (or set PUBLIC_BASE_URL)",
            code="untrusted_host",
        )
    return request.host_url


def _json_body() -> Any:
    """The request's JSON (None when it is not sent as JSON); 400 ``invalid_json`` saying where
    a body sent as JSON stops being JSON as RFC 8259 defines it.

    Python's parser also takes ``NaN`` and ``Infinity``, which no JSON sender may write; they
    are refused here like any other unreadable body (even an absurdly nested one).
    """
    if not request.is_json:
        return None
    try:
        return json.loads(request.get_data(), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        where = {"line": exc.lineno, "column": exc.colno}
        message = f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise BadRequest(message, code="invalid_json", details=where) from None
    except ValueError as exc:  # NaN, Infinity, or bytes that are not UTF-8
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        message = "the body is not valid JSON: nested too deeply"
        raise BadRequest(message, code="invalid_json") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
