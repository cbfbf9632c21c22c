"""How the service's answers look: job records, their links, errors of ended jobs, SSE frames.

The one place that turns a ``Job`` (and the events of one) into what a client reads: the
record with its browser links signed when keys are on, deleted avatars marked, forwarding and
webhook deliveries attached; a generate's answer (200, the job's own error, or 202 with
``Location``); the event stream's frames. Every timestamp is written by ``times.iso``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import Conflict, error_from_record
from ..jobs import Job, JobStatus
from ..persistence.database import DatabaseUnavailable
from ..times import iso
from .schemas import MAX_SEED, MAX_SIDE, MIN_SIDE, SIDE_STEP

if TYPE_CHECKING:
    from ..services import Services

# An open event stream with nothing to say sends a comment this often (proxies keep it open).
SSE_KEEPALIVE_SECONDS = 15.0
_EVENT_ID = re.compile(r"(?P<epoch>[0-9a-f]{1,16})\.(?P<number>[0-9]{1,9})", re.ASCII)


def job_body(job: Job, svc: Services) -> dict[str, Any]:
    """The JSON record of a job, with its deliveries when forwarding or webhooks are on."""
    body = with_access(job.to_dict(), svc)
    try:
        if svc.forwarder is not None and job.avatars:
            uploads = svc.forwarder.outcomes(job.id)
            for avatar in body["avatars"]:
                avatar["upload"] = uploads.get(avatar["fileName"])
        if svc.webhooks is not None:
            body["webhooks"] = svc.webhooks.deliveries(job.id)
    except DatabaseUnavailable:
        pass  # the record as known; its deliveries are read again once the database answers
    return body


def service_facts(svc: Services, host_url: str, *, version: str) -> dict[str, Any]:
    """GET /service-info: whether a key is needed, the limits, the styles, the callback URLs
    allowed, and where the styles and the document are (what the document leaves to it)."""
    settings, schema = svc.settings, svc.generate_schema
    return {
        "authRequired": svc.access.enabled,
        "version": version,
        "limits": {
            "maxUploadBytes": settings.max_upload_bytes,
            "minImageSide": settings.min_image_side,
            "maxImagePixels": settings.max_image_pixels,
            "minSide": MIN_SIDE,
            "maxSide": MAX_SIDE,
            "sideStep": SIDE_STEP,
            "maxSeed": MAX_SEED,
            "syncWaitSeconds": settings.sync_wait,
            "idempotencyTtlSeconds": settings.idempotency_ttl,
            "rateLimitGenerate": settings.rate_limit_generate or None,
            "rateLimitUpload": settings.rate_limit_upload or None,
            "tokenTtlSeconds": settings.token_ttl if svc.access.enabled else None,
        },
        "styles": host_url + "styles",
        "installedStyles": sorted(schema.workflows),
        "defaultStyle": schema.default_style,
        "callbackUrls": {
            "allowed": list(schema.callback_prefixes),
            "pattern": schema.callback_pattern(),
        },
        "openapi": host_url + "openapi.json",
        "docs": host_url + "docs",
    }


def with_access(body: dict[str, Any], svc: Services) -> dict[str, Any]:
    """A job record with its browser links signed (keys on) and deleted avatars marked."""
    job_id = body.get("jobId")
    if not isinstance(job_id, str) or "links" not in body:
        return body
    body = {**body, "links": dict(body["links"])}
    deleted = svc.retention.deleted_of_job(job_id) if svc.retention.enabled else {}
    token = svc.access.token(job_id) if svc.access.enabled else None
    avatars = []
    for avatar in body.get("avatars") or []:
        avatar = dict(avatar)
        if token:
            avatar["url"] = with_token(avatar["url"], token)
        if avatar.get("fileName") in deleted:
            avatar["deletedAt"] = iso(deleted[avatar["fileName"]])
        avatars.append(avatar)
    body["avatars"] = avatars
    if token:
        for name in ("events", "preview"):
            body["links"][name] = with_token(body["links"][name], token)
    return body


def with_token(url: str, token: str) -> str:
    """``url`` with the job's signed token as a query parameter."""
    return f"{url}{'&' if urlsplit(url).query else '?'}token={token}"


def job_response(job: Job, svc: Services) -> tuple[Any, ...]:
    """200 with the record when it succeeded, the job's error when it failed, else 202."""
    if job.status == JobStatus.SUCCEEDED:
        return job_body(job, svc), 200
    if job.status == JobStatus.FAILED and job.error:
        raise error_from_record(job.error.to_dict())
    if job.status == JobStatus.CANCELLED:
        raise Conflict("the job was cancelled", code="job_cancelled", details={"jobId": job.id})
    body = job_body(job, svc)
    headers = {"Location": body["links"]["self"], "Retry-After": "2"}
    return body, 202, headers


def parse_last_event_id(value: str, epoch: str) -> int | None:
    """The event number of a ``Last-Event-ID`` of this run (``<epoch>.<n>``, ASCII digits only).

    Anything else (another run's id, garbage, Unicode digits such as "²") is None: the client
    gets the current state first, as a new one would.
    """
    match = _EVENT_ID.fullmatch(value.strip())
    if match is None or match["epoch"] != epoch:
        return None
    return int(match["number"])


def sse_stream(svc: Services, job_id: str, after: int | None) -> Iterator[str]:
    """Yield SSE frames: the current state first (unless resuming), then each event to the end."""
    events, engine = svc.events, svc.engine
    if after is None or not events.known(job_id) or after > events.last_id(job_id):
        # A new client, an id from another run of the service, or events no longer held.
        # Read the position before the record, so no event between the two is missed.
        after = events.last_id(job_id)
        job = engine.get(job_id)
        yield sse_frame(events.epoch, after, "state", job_body(job, svc))
        if job.ended:
            return
    while True:
        fresh, ended = events.read(job_id, after, SSE_KEEPALIVE_SECONDS)
        for event in fresh:
            after = event.id
            data = with_access(event.data, svc)
            if event.event == "preview" and svc.access.enabled:
                data = {**data, "url": with_token(data["url"], svc.access.token(job_id))}
            yield sse_frame(events.epoch, event.id, event.event, data)
        if ended:
            return
        if not fresh:
            job = engine.get(job_id)
            if job.ended:  # the record is the source of truth (an event may have been missed)
                if events.known(job_id):
                    yield sse_frame(events.epoch, after, job.status, job_body(job, svc))
                return
            yield ": keep-alive\n\n"


def sse_frame(epoch: str, number: int, event: str, data: Mapping[str, Any]) -> str:
    """One SSE frame; its id is ``<run>.<n>`` (an id from an earlier run is recognised)."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {epoch}.{number}\nevent: {event}\ndata: {payload}\n\n"
