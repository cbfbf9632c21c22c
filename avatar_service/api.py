"""HTTP routes: parse and validate, call one service method, serialise."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Blueprint, Response, current_app, request, send_file, stream_with_context

from .errors import BadRequest, Conflict, error_from_record
from .jobs import GenerateRequest
from .services import Services
from .store import Job
from .webhooks import is_allowed_callback

bp = Blueprint("api", __name__)

MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 2048, 8
MAX_SEED = 2**64 - 1
SSE_KEEPALIVE_SECONDS = 15.0


def services() -> Services:
    """The services built by create_app."""
    return current_app.extensions["avatar_service"]


@bp.post("/upload-image")
@bp.post("/upload_image")
def upload_image():
    """Store a photo (multipart field ``image``, or ``file``); 201 with its server-made name."""
    upload = request.files.get("image") or request.files.get("file")
    if upload is None:
        raise BadRequest(
            "send the photo as multipart/form-data in the field 'image' (or 'file')",
            code="missing_file",
            details={"receivedFields": sorted(request.files) + sorted(request.form)},
        )
    stored = services().photos.save(upload.read(services().settings.max_upload_bytes + 1))
    return stored.to_dict(), 201


@bp.post("/generate-avatar-by-image")
def generate_avatar():
    """Queue a generation; 200 with the avatars when it ends within SYNC_WAIT, else 202."""
    svc = services()
    generate, respond_async = parse_generate(_json_body(), svc)
    respond_async = respond_async or "respond-async" in request.headers.get("Prefer", "")
    job = svc.runner.submit(generate, base_url=request.host_url)
    if not respond_async:
        job = svc.wait_for_job(job.id)
    return job_response(job, svc)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """The job record: status, queue position, progress, error, avatars, timings."""
    svc = services()
    return job_body(svc.runner.get(job_id), svc)


@bp.delete("/jobs/<job_id>")
@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Cancel a queued or running job: 200 cancelled, 202 still ending, 409 already ended."""
    svc = services()
    job = svc.runner.cancel(job_id, wait=svc.settings.comfyui_read_timeout)
    return job_body(job, svc), 200 if job.ended else 202


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Server-Sent Events of the job's state changes, ending when the job ends."""
    svc = services()
    svc.runner.get(job_id)
    after = parse_last_event_id(request.headers.get("Last-Event-ID", ""), svc.events.epoch)
    stream = svc.open_stream(stream_with_context(sse_stream(svc, job_id, after)))
    return Response(
        stream,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@bp.get("/jobs/<job_id>/preview")
def job_preview(job_id: str):
    """The latest live preview frame of a running job (404 when there is none)."""
    preview = services().runner.preview(job_id)
    return Response(
        preview.data, mimetype=preview.content_type, headers={"Cache-Control": "no-store"}
    )


@bp.get("/avatars/<file_name>")
def get_avatar(file_name: str):
    """A generated avatar image."""
    return send_file(services().avatars.path_of(file_name), max_age=86400)


@bp.get("/styles")
def list_styles():
    """Every workflow style with its parameters."""
    return {"styles": services().describe_styles(), "default": services().settings.default_style}


@bp.get("/healthz")
def healthz():
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Whether a ComfyUI server is reachable and can run the workflows; 503 with the reasons."""
    report = services().readiness()
    return report, 200 if report["ready"] else 503


# -- helpers used by the routes ----------------------------------------------------------------


def parse_last_event_id(value: str, epoch: str) -> int | None:
    """The event number of a ``Last-Event-ID`` of this run (``<epoch>.<n>``, ASCII digits only).

    Anything else (another run's id, garbage, Unicode digits such as "²") is None: the client
    gets the current state first, as a new one would.
    """
    match = _EVENT_ID.fullmatch(value.strip())
    if match is None or match["epoch"] != epoch:
        return None
    return int(match["number"])


_EVENT_ID = re.compile(r"(?P<epoch>[0-9a-f]{1,16})\.(?P<number>[0-9]{1,9})", re.ASCII)


def _json_body() -> Any:
    """The request's JSON, or None when it is missing or unreadable (even absurdly nested)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def parse_generate(body: Any, svc: Services) -> tuple[GenerateRequest, bool]:
    """Validate a generate request body; one 400 naming every bad field."""
    if not isinstance(body, dict):
        raise BadRequest(
            "the body must be a JSON object (send Content-Type: application/json)",
            code="invalid_json",
        )
    problems: dict[str, str] = {}
    image_name = body.get("imageName")
    if not isinstance(image_name, str) or not image_name:
        problems["imageName"] = "required: the imageName returned by POST /upload-image"
    style_name = body.get("style", svc.settings.default_style)
    workflow = svc.workflows.get(style_name) if isinstance(style_name, str) else None
    if workflow is None:
        problems["style"] = f"unknown style; one of {sorted(svc.workflows)}"
        defaults: Mapping[str, Any] = {}
        genders: list[str] = ["female", "male", "neutral"]
    else:
        defaults = workflow.presets.defaults
        genders = sorted(workflow.presets.gender_text)
    gender = body.get("gender", defaults.get("gender", "neutral"))
    if isinstance(gender, str):
        gender = gender.strip().lower()
    if gender not in genders:
        problems["gender"] = f"must be one of {genders}"
    sizes = {}
    for name in ("width", "height"):
        value = body.get(name, defaults.get(name, 512))
        if not _is_int(value) or not MIN_SIDE <= value <= MAX_SIDE or value % SIDE_STEP:
            problems[name] = (
                f"must be an integer from {MIN_SIDE} to {MAX_SIDE} and a multiple of {SIDE_STEP}"
            )
        sizes[name] = value
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        problems["seed"] = f"must be an integer from 0 to {MAX_SEED}"
    respond_async = body.get("async", False)
    if not isinstance(respond_async, bool):
        problems["async"] = "must be true or false"
    callback_url = body.get("callbackUrl")
    if callback_url is not None and not (
        isinstance(callback_url, str)
        and is_allowed_callback(callback_url, svc.settings.webhook_allowed_urls)
    ):
        problems["callbackUrl"] = (
            "must start with one of the URLs allowed by WEBHOOK_ALLOWED_URLS"
            if svc.settings.webhook_allowed_urls
            else "not accepted: WEBHOOK_ALLOWED_URLS allows no callback URL"
        )
    if problems:
        field, message = next(iter(problems.items()))
        summary = f"{field}: {message}" if len(problems) == 1 else "several fields are invalid"
        raise BadRequest(summary, code="invalid_fields", details={"fields": problems})
    return (
        GenerateRequest(
            image_name=image_name,
            gender=gender,
            width=sizes["width"],
            height=sizes["height"],
            style=style_name,
            seed=seed,
            callback_url=callback_url,
        ),
        respond_async,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def job_body(job: Job, svc: Services) -> dict[str, Any]:
    """The JSON record of a job, with its webhook deliveries when webhooks are on."""
    body = job.to_dict()
    if svc.webhooks is not None:
        body["webhooks"] = svc.webhooks.deliveries(job.id)
    return body


def job_response(job: Job, svc: Services):
    """200 with the record when it succeeded, the job's error when it failed, else 202."""
    if job.status == "succeeded":
        return job_body(job, svc), 200
    if job.status == "failed" and job.error:
        raise error_from_record(job.error)
    if job.status == "cancelled":
        raise Conflict("the job was cancelled", code="job_cancelled", details={"jobId": job.id})
    body = job_body(job, svc)
    headers = {"Location": body["links"]["self"], "Retry-After": "2"}
    return body, 202, headers


def sse_stream(svc: Services, job_id: str, after: int | None) -> Iterator[str]:
    """Yield SSE frames: the current state first (unless resuming), then each event to the end."""
    known = svc.events.known(job_id)
    if after is None or not known or after > svc.events.last_id(job_id):
        # A new client, an id from another run of the service, or events no longer held.
        # Read the position before the record, so no event between the two is missed.
        after = svc.events.last_id(job_id)
        job = svc.runner.get(job_id)
        yield _sse_frame(svc.events.epoch, after, "state", job_body(job, svc))
        if job.ended:
            return
    while True:
        fresh, ended = svc.events.read(job_id, after, SSE_KEEPALIVE_SECONDS)
        for event in fresh:
            after = event.id
            yield _sse_frame(svc.events.epoch, event.id, event.event, event.data)
        if ended:
            return
        if not fresh:
            if svc.runner.get(job_id).ended and not svc.events.known(job_id):
                return
            yield ": keep-alive\n\n"


def _sse_frame(epoch: str, number: int, event: str, data: Mapping[str, Any]) -> str:
    # Ids are "<run>.<n>": a Last-Event-ID from an earlier run of the service is recognised.
    return (
        f"id: {epoch}.{number}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    )
